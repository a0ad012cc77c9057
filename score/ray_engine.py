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

import json
import logging
import os
import posixpath
import uuid
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from mri44.atomic import atomic_path, held, write_text_atomic
from mri44.dicom import dicom_tags, is_dicom_bytes
from mri44.discover import OUTPUT_MARKER, find_images, require_folder
from mri44.errors import SettingError
from mri44.fingerprint import fingerprint_tags, training_flags
from mri44.imageio import ImageDecodeError, decode_bytes, file_error, is_image_path, read_file
from mri44.limits import Limits, byte_limit
from mri44.predictions import printable_path, series_table
from mri44.preprocess import PreprocessSpec, load_item, normalize, to_model_pixels
from mri44.readers import Item, list_items, member_columns, reader_for

from .options import ScoreResult

# RUN_FILE records what the run was: a --resume that differs is refused, so one table never mixes runs.
from .provenance import RUN_FILE

if TYPE_CHECKING:
    from .options import ScoreOptions

log = logging.getLogger(__name__)
# Our parts' own name: "part-*.parquet" is pyarrow's and Spark's default, and a folder may hold theirs too;
# only files named like ours are ever read, resumed or removed.
PART_PREFIX = "mri44-part-"
PART_GLOB = f"{PART_PREFIX}*.parquet"
# Held while a run writes into its folder (created atomically): a second run into the same folder is refused.
DECODE_TASK_RETRIES = 2


Listed = tuple[
    str, list[tuple[str, int | None, str, str | None]]
]  # (root, (path, member, format, note) each)


def list_inputs(source: str, limits: Limits = Limits()) -> Listed:
    """(root as pyarrow reads it, the images under it: relative path, member and format, sorted). Local folders
    are listed as the local scorer lists them: find_images, then an item per DICOM frame and NIfTI slice
    (mri44.readers.list_items). A file read from a URL is one image (a multi-image file is its error row)."""
    if "://" not in source:
        root = require_folder(Path(source), "input folder")
        items = list_items(find_images(root), limits)
        return str(root.resolve()), [
            (i.path.relative_to(root).as_posix(), i.member, i.format, i.note) for i in items
        ]
    from pyarrow import fs

    filesystem, base = fs.FileSystem.from_uri(source)
    infos = filesystem.get_file_info(fs.FileSelector(base, recursive=True))
    files = [posixpath.relpath(i.path, base) for i in infos if i.type == fs.FileType.File]
    # Our own output folders (metric tables, a report's images) are never inputs, as in find_images.
    marked = tuple(
        posixpath.dirname(f) + "/" for f in files if posixpath.basename(f) == OUTPUT_MARKER and "/" in f
    )
    rel = sorted(
        f for f in files if is_image_path(f) and "/." not in "/" + f and not f.startswith(marked or ("\0",))
    )
    return source.rstrip("/"), [(f, None, reader_for(f).format, None) for f in rel]


RowKey = tuple[str, int | None]  # (printable path, frame or slice): one image's identity across runs


def row_key(path: str, member: int | None) -> RowKey:
    return printable_path(path), member


def prepare_resume(out_dir: Path) -> set[RowKey]:
    """The files an earlier run into out_dir scored (rows with status ok), ready to be skipped. Its error rows are
    removed from their parts so that --resume tries those files again, and a part that cannot be read (cut off by
    a full disk, say) is set aside as NAME.unreadable, never deleted; its files are scored again."""
    done: set[RowKey] = set()
    for part in sorted(out_dir.glob(PART_GLOB)):
        try:
            status = pl.read_parquet(part, columns=["path", "frame", "slice", "status"])
        except (pl.exceptions.PolarsError, OSError) as exc:
            aside = part.with_name(part.name + ".unreadable")
            part.rename(aside)
            log.warning(
                "%s cannot be read (%s): set aside as %s; its files are scored again", part, exc, aside
            )
            continue
        failed = status["status"] == "error"
        if failed.any():
            kept = pl.read_parquet(part).filter(pl.col("status") != "error")
            if kept.height:
                with atomic_path(part) as tmp:
                    kept.write_parquet(tmp)
            else:
                part.unlink()
            log.info("%d error row(s) of %s are tried again", int(failed.sum()), part.name)
        kept = status.filter(~failed).select("path", member=pl.coalesce("frame", "slice"))
        done.update((path, member) for path, member in kept.iter_rows())
    return done


def run_identity(root: str, model_sha256: str, options: ScoreOptions) -> dict[str, Any]:
    """What must be equal for rows of two runs to share a table: the model's bytes (their SHA-256), the input,
    the options that change rows. (Device and actor count do not: a resume may run on another cluster.)"""
    return {
        "model_sha256": model_sha256,
        "input": root,
        "top_k": options.top_k,
        "max_pixels": options.max_pixels,
        "max_frames": options.max_frames,
        "ood": options.ood,
        "ood_threshold": options.ood_threshold,
    }


def check_identity(out: Path, identity: dict[str, Any]) -> None:
    """Refuse a --resume into a folder written by a different run, naming each difference."""
    from .outputs import OutputError

    path = out / RUN_FILE
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OutputError(
            f"{out} holds parts but no readable run record ({RUN_FILE}: {exc.__class__.__name__}), so a resume "
            "cannot be checked to be the same run: pass --overwrite to start over"
        ) from None
    if not isinstance(saved, dict):
        raise OutputError(
            f"{out} holds parts but its run record ({RUN_FILE}) is a {type(saved).__name__}, not a record, so a "
            "resume cannot be checked to be the same run: pass --overwrite to start over"
        )
    differences = [
        f"{key} {saved.get(key)!r} then, {value!r} now"
        for key, value in identity.items()
        if saved.get(key) != value
    ]
    if differences:
        raise OutputError(
            f"--resume of a different run in {out}: {'; '.join(differences)}. Resume with the same model, input "
            "and options, or pass --overwrite to start over"
        )


def _read(root: str, name: str, max_pixels: int) -> np.ndarray:
    """A file's bytes, no more than an image within max_pixels can take (imageio.read_file: regular files only,
    size checked before reading); an object-store file is cut off at the same limit."""
    if "://" not in root:
        return read_file(Path(root) / name, max_pixels)
    from pyarrow import fs

    filesystem, base = fs.FileSystem.from_uri(root)
    limit = byte_limit(max_pixels)
    with filesystem.open_input_stream(posixpath.join(base, name)) as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ImageDecodeError(name, "file is larger than an image within --max-pixels can be: not read")
    return np.frombuffer(data, np.uint8)


def decode_batch(
    batch: dict[str, np.ndarray], root: str, spec: dict, max_pixels: int, max_members: int
) -> dict[str, np.ndarray]:
    """A Ray task: read and preprocess images; an image that fails keeps its row with the reason in `error`."""
    preprocess = PreprocessSpec.from_dict(spec)
    limits = Limits(max_pixels=max_pixels, max_members=max_members)
    shape = (preprocess.size, preprocess.size, preprocess.cache_channels)
    pixels, errors, tags = [], [], []
    for rel, raw, member, fmt in zip(
        batch["path"], batch["name"], batch["member"], batch["format"], strict=True
    ):
        found = ""  # the series tags as JSON (mri44.readers.read_item), "" for plain images
        try:  # the file's own name (bytes: a name that is not UTF-8 travels through Arrow intact)
            if "://" not in root:  # read as the local scorer reads it: the same item, tags from the same read
                item = Item(Path(root) / os.fsdecode(raw), int(member) or None, str(fmt))
                image, read_tags = load_item(item, preprocess, limits)
                found = json.dumps(read_tags or "")
            else:
                data = _read(root, bytes(raw).decode(), max_pixels)
                decoded = decode_bytes(data, rel, max_pixels)
                series = (dicom_tags(data.tobytes()) or {}) if is_dicom_bytes(data) else {}
                found = json.dumps({**series, **fingerprint_tags(decoded, data.tobytes())})
                image = to_model_pixels(decoded, preprocess)
            pixels.append(image)
            errors.append("")
        except Exception as exc:  # about this one file: its error row
            pixels.append(np.zeros(shape, np.uint8))
            errors.append(file_error(exc))
        tags.append(found)
    return {
        "path": batch["path"],
        "member": batch["member"],
        "format": batch["format"],
        "note": batch["note"],
        "pixels": np.stack(pixels),
        "error": np.asarray(errors, dtype=object),
        "tags": np.asarray(tags, dtype=object),
    }


class ScoreActor:
    """One model session per actor, loaded once; turns decoded batches into prediction rows."""

    def __init__(
        self, model: str, device: str, top_k: int, ood: bool = True, ood_threshold: float | None = None
    ) -> None:
        from .backends import open_backend

        self.backend = open_backend(Path(model), device)
        self.top_k = top_k
        self.ood, self.ood_threshold = ood, ood_threshold

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:  # a pyarrow.Table: nulls stay nulls
        from mri44.predictions import prediction_frame

        from .pipeline import ood_rows, score_batch

        meta = self.backend.meta
        errors: list[str | None] = [e or None for e in batch["error"]]
        ok = np.array([e is None for e in errors])
        probs = np.zeros((len(errors), len(meta.classes)), np.float32)
        decoded = np.flatnonzero(ok)
        scores = ood_rows(self.backend, len(errors), self.ood, self.ood_threshold)
        if decoded.size:
            x = normalize(batch["pixels"][decoded], meta.preprocess)
            score_batch(self.backend, x, decoded, probs, ok, errors, scores)
        paths = [str(p) for p in batch["path"]]
        tags = [(json.loads(t) or None) if t else None for t in batch["tags"]]
        items = [
            Item(Path(p), int(m) or None, str(f), str(n) or None)
            for p, m, f, n in zip(paths, batch["member"], batch["format"], batch["note"], strict=True)
        ]
        frame = prediction_frame(
            paths,
            probs,
            ok,
            errors,
            meta.classes,
            self.top_k,
            scores,
            tags,
            member_columns(items),
            training_flags(meta.training, [t if good else None for t, good in zip(tags, ok, strict=True)]),
        )
        return frame.to_arrow()


def input_records(root: str, todo: list[tuple[str, int | None, str, str | None]]) -> list[dict[str, Any]]:
    """The rows Ray's tasks receive: the printable path, the file's own name (bytes: a name that is not UTF-8
    travels through Arrow intact), the member (0: the file is one image), the format and the note ("": none)."""
    local = "://" not in root
    return [
        {
            "path": printable_path(p),
            "name": os.fsencode(p) if local else p.encode(),
            "member": m or 0,
            "format": f,
            "note": note or "",
        }
        for p, m, f, note in todo
    ]


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
    limits: Limits,
    device: str = "auto",
    done: set[RowKey] | None = None,
    ood: bool = True,
    ood_threshold: float | None = None,
    listed: Listed | None = None,
) -> tuple[int, int, list[str]]:
    """Score every image under source (or the `listed` images of list_inputs) into part files in out_dir, but
    those in `done` (row keys: printable path and member); returns (rows written now, rows kept from an earlier run, the
    model's classes)."""
    import ray

    from mri44.onnx_meta import read_metadata

    meta = read_metadata(model)  # checks the model before any work, without a session on any device
    root, paths = listed or list_inputs(source, limits)
    if not paths:
        raise SettingError(f"no image files under {source} (looked for .jpg .jpeg .png .webp .bmp .tif ...)")
    done = done or set()
    todo = [entry for entry in paths if row_key(entry[0], entry[1]) not in done]
    log.info(
        "%d files under %s; %d already scored; %d to score",
        len(paths),
        source,
        len(paths) - len(todo),
        len(todo),
    )
    if not todo:
        return 0, len(paths) - len(todo), meta.classes
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False, include_dashboard=False, configure_logging=False)
    check_gpus(ray.cluster_resources(), gpus_per_actor, actors)
    ray.data.DataContext.get_current().enable_progress_bars = False
    ds: Any = ray.data.from_items(
        input_records(root, todo), override_num_blocks=max(1, min(len(todo) // batch_size, 10_000))
    )
    with warnings.catch_warnings():
        # Task retries have no named parameter in Ray 2.5x: the keyword form, deprecated for Ray 2.64, is the way.
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        ds = ds.map_batches(
            decode_batch,
            fn_kwargs={
                "root": root,
                "spec": meta.preprocess.to_dict(),
                "max_pixels": limits.max_pixels,
                "max_members": limits.max_members,
            },
            batch_size=batch_size,
            # Ray Data retries a task whose worker died without end (max_retries -1): a file that killed it would hang
            # the run. Codecs run isolated (mri44.isolation), so a task dies only of what kills any process (memory);
            # after two retries the run stops with its finished parts kept for --resume.
            max_retries=DECODE_TASK_RETRIES,
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
    written = write_parts(ds, out_dir, batch_size)
    return written, len(paths) - len(todo), meta.classes


def write_parts(ds: Any, out_dir: Path, batch_size: int) -> int:
    """Stream the scored dataset into part files (each written under a temporary name, renamed when whole);
    returns the rows written. A full disk stops the run with the finished parts kept for --resume."""
    from .outputs import OutputError, no_space

    written = 0
    run_id = uuid.uuid4().hex[:8]
    out_dir.mkdir(parents=True, exist_ok=True)
    for k, batch in enumerate(ds.iter_batches(batch_size=max(batch_size, 1024), batch_format="pyarrow")):
        part = pl.DataFrame(pl.from_arrow(batch))
        try:
            with atomic_path(out_dir / f"{PART_PREFIX}{run_id}-{k:06d}.parquet", replace=False) as tmp:
                part.write_parquet(tmp)
        except (OSError, pl.exceptions.PolarsError) as exc:
            if not no_space(exc):
                raise
            raise OutputError(
                f"no space left on the device that holds {out_dir}: the {written} rows of this run's finished "
                "parts are kept; free some space and pass --resume to score the rest"
            ) from None
        written += part.height
    return written


def check_gpus(resources: dict[str, float], gpus_per_actor: float, actors: int) -> None:
    """Refuse GPU actors the cluster cannot place: Ray would only warn and wait for them forever."""
    have = float(resources.get("GPU", 0.0))
    if gpus_per_actor > 0 and have < gpus_per_actor * actors:
        listed = ", ".join(
            f"{k} {v:g}" for k, v in sorted(resources.items()) if k in ("CPU", "GPU", "memory")
        )
        raise SettingError(
            f"--gpus-per-actor {gpus_per_actor:g} x --actors {actors} needs {gpus_per_actor * actors:g} GPU(s); "
            f"the Ray cluster has {have:g} ({listed}): pass --gpus-per-actor 0, fewer actors, or add GPU nodes"
        )


def scan_parts(out_dir: Path) -> pl.LazyFrame | None:
    """Every finished part of out_dir as one lazy table (None without any): readers take only the columns and
    rows they need."""
    parts = sorted(out_dir.glob(PART_GLOB))
    return pl.scan_parquet(parts) if parts else None


def labelled_pairs(out_dir: Path) -> pl.DataFrame:
    """true_class, pred_class, ood and near_training of the scored, labelled rows of every part: what the metric
    tables need."""
    scan = scan_parts(out_dir)
    if scan is None:
        return pl.DataFrame(
            schema={
                "true_class": pl.String,
                "pred_class": pl.String,
                "ood": pl.Boolean,
                "near_training": pl.Boolean,
            }
        )
    labelled = scan.filter((pl.col("status") == "ok") & pl.col("true_class").is_not_null())
    return labelled.select("true_class", "pred_class", "ood", "near_training").collect()


def series_rows(out_dir: Path) -> pl.DataFrame:
    """The rows of every part that belong to a series (DICOM or NIfTI): only these are ever in memory."""
    scan = scan_parts(out_dir)
    return pl.DataFrame() if scan is None else scan.filter(pl.col("series_uid").is_not_null()).collect()


def counts(out_dir: Path) -> tuple[int, int, int | None]:
    """(rows, error rows, rows flagged out of distribution: None when the check spoke for none) over every part."""
    scan = scan_parts(out_dir)
    if scan is None:
        return 0, 0, None
    row = (
        scan.select(
            pl.len().alias("rows"),
            (pl.col("status") == "error").sum().alias("errors"),
            pl.col("ood").sum().alias("flagged"),
            pl.col("ood").is_not_null().sum().alias("checked"),
        )
        .collect()
        .row(0)
    )
    return int(row[0]), int(row[1]), (int(row[2]) if row[3] else None)


def run_ray(source: str, out: Path, model: Path, options: ScoreOptions) -> ScoreResult:
    """The Ray engine behind `score()` (options: score.run.ScoreOptions): part files in the folder `out`, then
    metric tables in out/metrics from a lazy scan of them. The folder is held by one run at a time; --overwrite
    removes only our own files (parts, run record, the marked metrics folder); --resume checks that it continues
    the same run, then scores the files without an ok row."""
    from mri44.metrics import tables_with_counts, write_tables
    from mri44.onnx_meta import read_metadata

    from .outputs import OutputError, remove_output_folder
    from .provenance import provenance

    if out.exists() and not out.is_dir():
        raise OutputError(f"--engine ray writes a folder of parts: {out} is a file")
    if options.overwrite and options.resume:
        raise SettingError("--overwrite starts over and --resume continues: choose one")
    meta = read_metadata(model)  # a bad model is refused before the output folder is touched
    limits = options.limits()
    listed = list_inputs(source, limits)
    recorded = provenance(model, meta, listed[0], options, {})  # what mri-report shows; hashes the model once
    identity = run_identity(listed[0], recorded["model"]["sha256"], options)
    record = {**recorded, **identity}  # the identity keys are what a resume must match
    with held(out):
        parts = sorted(out.glob(PART_GLOB))
        done: set[RowKey] = set()
        if parts and options.resume:
            check_identity(out, identity)
            done = prepare_resume(out)
        elif parts and not options.overwrite:
            raise OutputError(
                f"{out} already holds parts: pass --resume to continue that run, --overwrite to start over"
            )
        elif parts:
            for part in parts:  # only our own outputs: parts, the run record and the marked metrics folder
                part.unlink()
            remove_output_folder(out / "metrics")
        write_text_atomic(out / RUN_FILE, json.dumps(record, indent=1))
        written, kept, classes = score_with_ray(
            source,
            out,
            model,
            address=options.address,
            actors=options.actors,
            gpus_per_actor=options.gpus_per_actor,
            batch_size=options.batch_size,
            top_k=options.top_k,
            limits=limits,
            device=options.device,
            done=done,
            ood=options.ood == "on",
            ood_threshold=options.ood_threshold,
            listed=listed,
        )
        rows, errors, flagged = counts(out)
        log.info(
            "scored %d file(s) now, %d kept from before; %d rows, %d error(s) -> %s",
            written,
            kept,
            rows,
            errors,
            out,
        )
        pairs = labelled_pairs(out)
        tables = tables_with_counts(pairs, rows, errors, 0, flagged)
        series = series_table(series_rows(out), classes)  # exact: the parts hold every probability
        if series is not None:
            tables = {**(tables or {}), "series": series}
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
