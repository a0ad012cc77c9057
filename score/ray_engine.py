"""Batch scoring on a Ray cluster (`mri-score INPUT --out OUT_DIR --engine ray`), for inputs that outgrow one
machine or live in object storage.

Ray Data lists the files (a local folder with the local scorer's own discovery, or any URL pyarrow's file systems
read: s3://, gs://, hdfs://), reads and decodes them in tasks, and scores them in a pool of actors that each load
the model once. The driver streams the results and writes them as Parquet part files into OUT_DIR while later
blocks are still being scored, so its memory stays flat in the number of images. Each part is written to a
temporary name and renamed when complete, so a run that dies leaves only finished parts, and `--resume` skips
every file already in one. The metric tables are then computed from the parts with a Polars lazy scan.

Rows are the local scorer's (same columns, same error rows, labels from the nearest class-named folder): the
actors call the same backend and the same prediction_frame.
"""

from __future__ import annotations

import logging
import posixpath
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from mri44.atomic import atomic_path
from mri44.discover import find_images
from mri44.imageio import ImageDecodeError, decode_bytes, is_image_path
from mri44.preprocess import PreprocessSpec, normalize, to_model_pixels

if TYPE_CHECKING:
    from .run import ScoreOptions, ScoreResult

log = logging.getLogger(__name__)
# Our parts' own name: "part-*.parquet" is pyarrow's and Spark's default, and a folder may hold theirs too;
# only files named like ours are ever read, resumed or removed.
PART_PREFIX = "mri44-part-"
PART_GLOB = f"{PART_PREFIX}*.parquet"


def list_inputs(source: str) -> tuple[str, list[str]]:
    """(root as pyarrow reads it, image paths relative to it, sorted). Local folders use find_images."""
    if "://" not in source:
        root = Path(source)
        if not root.is_dir():
            raise FileNotFoundError(f"input folder {source} does not exist or is not a folder")
        return str(root.resolve()), [p.relative_to(root).as_posix() for p in find_images(root)]
    from pyarrow import fs

    filesystem, base = fs.FileSystem.from_uri(source)
    infos = filesystem.get_file_info(fs.FileSelector(base, recursive=True))
    rel = sorted(
        posixpath.relpath(i.path, base)
        for i in infos
        if i.type == fs.FileType.File
        and is_image_path(i.path)
        and "/." not in "/" + posixpath.relpath(i.path, base)
    )
    return source.rstrip("/"), rel


def finished_paths(out_dir: Path) -> set[str]:
    """Files already scored by an earlier run into out_dir (only renamed, complete parts count)."""
    parts = sorted(out_dir.glob(PART_GLOB))
    if not parts:
        return set()
    return set(pl.scan_parquet(parts).select("path").collect()["path"].to_list())


def _read(root: str, rel: str) -> bytes:
    if "://" not in root:
        return (Path(root) / rel).read_bytes()
    from pyarrow import fs

    filesystem, base = fs.FileSystem.from_uri(root)
    with filesystem.open_input_stream(posixpath.join(base, rel)) as handle:
        return handle.read()


def decode_batch(
    batch: dict[str, np.ndarray], root: str, spec: dict, max_pixels: int
) -> dict[str, np.ndarray]:
    """A Ray task: read and preprocess files; a file that fails keeps its row with the reason in `error`."""
    preprocess = PreprocessSpec.from_dict(spec)
    shape = (preprocess.size, preprocess.size, preprocess.cache_channels)
    pixels, errors = [], []
    for rel in batch["path"]:
        try:
            pixels.append(to_model_pixels(decode_bytes(_read(root, str(rel)), rel, max_pixels), preprocess))
            errors.append("")
        except ImageDecodeError as exc:
            pixels.append(np.zeros(shape, np.uint8))
            errors.append(exc.reason)
        except Exception as exc:  # anything else about one file stays about that file
            pixels.append(np.zeros(shape, np.uint8))
            errors.append(f"{exc.__class__.__name__}: {exc}")
    return {"path": batch["path"], "pixels": np.stack(pixels), "error": np.asarray(errors, dtype=object)}


class ScoreActor:
    """One model session per actor, loaded once; turns decoded batches into prediction rows."""

    def __init__(
        self, model: str, device: str, top_k: int, ood: bool = True, ood_threshold: float | None = None
    ) -> None:
        from .backends import open_backend
        from .pipeline import flag_threshold, ood_check

        self.backend = open_backend(Path(model), device)
        self.top_k = top_k
        self.ood = ood_check(self.backend, ood)
        self.threshold = flag_threshold(self.backend, ood_threshold)

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:  # a pyarrow.Table: nulls stay nulls
        from mri44.predictions import prediction_frame

        from .pipeline import score_batch

        meta = self.backend.meta
        errors: list[str | None] = [e or None for e in batch["error"]]
        ok = np.array([e is None for e in errors])
        probs = np.zeros((len(errors), len(meta.classes)), np.float32)
        decoded = np.flatnonzero(ok)
        scores = np.full(len(errors), np.nan, np.float32) if self.ood else None
        if decoded.size:
            x = normalize(batch["pixels"][decoded], meta.preprocess)
            score_batch(self.backend, x, decoded, probs, ok, errors, scores)
        paths = [str(p) for p in batch["path"]]
        frame = prediction_frame(paths, probs, ok, errors, meta.classes, self.top_k, scores, self.threshold)
        return frame.to_arrow()


def score_with_ray(
    source: str,
    out_dir: Path,
    model: Path,
    *,
    address: str | None = None,
    actors: int = 1,
    gpus_per_actor: float = 0.0,
    batch_size: int = 64,
    top_k: int = 3,
    max_pixels: int,
    device: str = "auto",
    resume: bool = False,
    ood: bool = True,
    ood_threshold: float | None = None,
) -> tuple[int, int, list[str]]:
    """Score every image under source into part files in out_dir; returns (rows written now, rows kept from an
    earlier run, the model's classes)."""
    import ray

    from mri44.onnx_meta import read_metadata

    meta = read_metadata(model)  # checks the model before any work, without a session on any device
    root, paths = list_inputs(source)
    done = finished_paths(out_dir) if resume else set()
    todo = [p for p in paths if p not in done]
    log.info("%d files under %s; %d already scored; %d to score", len(paths), source, len(done), len(todo))
    if not todo:
        return 0, len(done), meta.classes
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False, include_dashboard=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    ds: Any = ray.data.from_items(
        [{"path": p} for p in todo], override_num_blocks=max(1, min(len(todo) // batch_size, 10_000))
    )
    ds = ds.map_batches(
        decode_batch,
        fn_kwargs={"root": root, "spec": meta.preprocess.to_dict(), "max_pixels": max_pixels},
        batch_size=batch_size,
    )
    ds = ds.map_batches(
        ScoreActor,
        fn_constructor_kwargs={
            "model": str(model.resolve()),
            "device": device,
            "top_k": top_k,
            "ood": ood,
            "ood_threshold": ood_threshold,
        },
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=gpus_per_actor or None,
    )
    written = 0
    run_id = uuid.uuid4().hex[:8]
    out_dir.mkdir(parents=True, exist_ok=True)
    for k, batch in enumerate(ds.iter_batches(batch_size=max(batch_size, 1024), batch_format="pyarrow")):
        part = pl.DataFrame(pl.from_arrow(batch))
        with atomic_path(out_dir / f"{PART_PREFIX}{run_id}-{k:06d}.parquet", replace=False) as tmp:
            part.write_parquet(tmp)
        written += part.height
    return written, len(done), meta.classes


def labelled_pairs(out_dir: Path) -> pl.DataFrame:
    """true_class, pred_class and ood of the scored, labelled rows of every part: what the metric tables need,
    read lazily so only those columns of those rows are ever in memory."""
    parts = sorted(out_dir.glob(PART_GLOB))
    if not parts:
        return pl.DataFrame(schema={"true_class": pl.String, "pred_class": pl.String, "ood": pl.Boolean})
    return (
        pl.scan_parquet(parts)
        .filter((pl.col("status") == "ok") & pl.col("true_class").is_not_null())
        .select("true_class", "pred_class", "ood")
        .collect()
    )


def counts(out_dir: Path) -> tuple[int, int]:
    """(rows, error rows) over every part."""
    parts = sorted(out_dir.glob(PART_GLOB))
    if not parts:
        return 0, 0
    row = pl.scan_parquet(parts).select(pl.len(), (pl.col("status") == "error").sum()).collect().row(0)
    return int(row[0]), int(row[1])


def run_ray(source: str, out: Path, model: Path, options: ScoreOptions) -> ScoreResult:
    """The Ray engine behind `score()` (options: score.run.ScoreOptions): part files in the folder `out`, then
    metric tables in out/metrics from a lazy scan of them. --overwrite removes only our own parts and marked
    metrics folder; --resume keeps the parts and scores the other files."""
    from mri44.errors import SettingError
    from mri44.metrics import write_tables

    from .outputs import OutputError, remove_output_folder
    from .run import ScoreResult, tables_with_counts

    if out.exists() and not out.is_dir():
        raise OutputError(f"--engine ray writes a folder of parts: {out} is a file")
    if options.overwrite and options.resume:
        raise SettingError("--overwrite starts over and --resume continues: choose one")
    parts = sorted(out.glob(PART_GLOB)) if out.is_dir() else []
    if parts and not options.resume:
        if not options.overwrite:
            raise OutputError(
                f"{out} already holds parts: pass --resume to continue that run, --overwrite to start over"
            )
        for part in parts:  # only our own outputs: parts and the marked metrics folder
            part.unlink()
        remove_output_folder(out / "metrics")
    written, kept, classes = score_with_ray(
        source,
        out,
        model,
        address=options.address,
        actors=options.actors,
        gpus_per_actor=options.gpus_per_actor,
        batch_size=options.batch_size,
        top_k=options.top_k,
        max_pixels=options.max_pixels,
        device=options.device,
        resume=options.resume,
        ood=options.ood == "on",
        ood_threshold=options.ood_threshold,
    )
    rows, errors = counts(out)
    log.info(
        "scored %d file(s) now, %d kept from before; %d rows, %d error(s) -> %s",
        written,
        kept,
        rows,
        errors,
        out,
    )
    pairs = labelled_pairs(out)
    tables = tables_with_counts(pairs, rows, errors, 0)
    target = out / "metrics"
    if tables is not None:
        remove_output_folder(target)
        write_tables(tables, target, classes)
        log.info("metric tables (%d labelled images) -> %s", pairs.height, target)
    return ScoreResult(
        predictions=None,
        tables=tables,
        scored=rows - errors,
        failed=errors,
        model=model,
        out=out,
        metrics_dir=target if tables is not None else None,
    )
