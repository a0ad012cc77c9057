"""`mri-score`: score a folder of MRI slices with an exported model; metric tables when labels are known."""

from __future__ import annotations

import collections
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mri44.console import fail, user_errors
from mri44.discover import OUTPUT_MARKER
from score.report_cli import ExplainOpt

if TYPE_CHECKING:
    from score.pipeline import ScoreRun

log = logging.getLogger(__name__)

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def unwritable(folder: Path) -> str | None:
    """Why files could not be created in folder, or None when they could; creates nothing."""
    existing = folder
    while not existing.exists():
        if existing.is_symlink():
            return f"{existing} is a dangling link"
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"no permission to write in {existing}"
    return None


def remove_output_folder(folder: Path) -> None:
    """Remove a metrics folder we wrote (it holds OUTPUT_MARKER) or an empty one; never anything else."""
    if folder.is_dir() and ((folder / OUTPUT_MARKER).exists() or not any(folder.iterdir())):
        shutil.rmtree(folder)


InputDirOpt = Annotated[
    str,
    typer.Argument(
        help="Folder of images (searched recursively; hidden files skipped); with --engine ray also a URL that "
        "pyarrow reads (s3://bucket/prefix, gs://...)."
    ),
]
OutOpt = Annotated[
    Path,
    typer.Option(help="Predictions file: .parquet, or .csv for CSV. With --engine ray: a folder of parts."),
]
ModelOpt = Annotated[
    Path | None,
    typer.Option(
        help="ONNX model from `onnx-export` (ONNX Runtime), a training checkpoint or run folder (PyTorch), or a "
        "shipped model by name: 'default' (fp16) or 'int8' (about 3x faster on a CPU, slightly less accurate; "
        "see models/README.md). Default: 'default'."
    ),
]
DeviceOpt = Annotated[str, typer.Option(help="auto (TensorRT -> CUDA -> CPU), cpu, cuda or tensorrt.")]
BatchSizeOpt = Annotated[int, typer.Option(min=1, help="Images per inference batch.")]
WorkersOpt = Annotated[int, typer.Option(min=1, help="Decoding threads.")]
TopKOpt = Annotated[int, typer.Option(min=1, help="How many top classes to list per image.")]
MetricsDirOpt = Annotated[
    Path | None, typer.Option(help="Where metric tables go (default: OUT's name + '_metrics').")
]
OverwriteOpt = Annotated[bool, typer.Option(help="Replace existing outputs.")]
MaxPixelsOpt = Annotated[
    int,
    typer.Option(min=1, help="Files whose header claims more pixels become error rows (memory bound)."),
]


PrecisionOpt = Annotated[
    str,
    typer.Option(
        help="For a checkpoint (PyTorch): auto (bf16 on CUDA, fp32 on CPU), fp32, bf16 or fp16. ONNX models keep "
        "their exported precision."
    ),
]
DecodeOpt = Annotated[
    str,
    typer.Option(
        help="cpu: every file decoded by OpenCV in --workers threads. device: JPEGs decoded where the model runs "
        "(batched nvJPEG on CUDA, then resized and normalised there); other formats still on the CPU."
    ),
]
EngineOpt = Annotated[
    str,
    typer.Option(
        help="local: this process. ray: a Ray cluster (pip install -e '.[ray]'; docs/scale-out.md)."
    ),
]
AddressOpt = Annotated[
    str | None,
    typer.Option(help="With --engine ray: auto, ray://host:port, or none for a local Ray instance."),
]
ActorsOpt = Annotated[int, typer.Option(min=1, help="With --engine ray: scoring actors (one model each).")]
GpusPerActorOpt = Annotated[float, typer.Option(min=0.0, help="With --engine ray: GPUs per scoring actor.")]
ResumeOpt = Annotated[
    bool,
    typer.Option(help="With --engine ray: keep the parts already in OUT and score only the other files."),
]
ReportOpt = Annotated[
    Path | None,
    typer.Option(help="Also write the HTML review report here (needs the report extra: matplotlib)."),
]
CompileOpt = Annotated[
    bool, typer.Option(help="For a checkpoint: torch.compile the network (pays off on GPUs).")
]


def check_outputs(input_dir: Path, out: Path, metrics_dir: Path | None, overwrite: bool) -> Path:
    """Refuse, before any scoring, every output that could not or should not be written; returns the metrics folder."""
    if out.suffix.lower() not in (".parquet", ".csv"):
        raise fail(f"--out must end in .parquet or .csv, got {out.name}")
    if out.exists() and not overwrite:
        raise fail(f"{out} exists; pass --overwrite to replace it")
    target = metrics_dir or out.with_name(f"{out.stem}_metrics")
    if target.is_dir() and any(target.iterdir()):
        if not overwrite:
            raise fail(f"metrics folder {target} is not empty; pass --overwrite or another --metrics-dir")
        if not (target / OUTPUT_MARKER).exists():
            raise fail(f"{target} holds files mri-score did not write; choose another --metrics-dir")
    if not input_dir.is_dir():
        raise fail(f"input folder {input_dir} does not exist or is not a folder")
    for place, what in ((out.parent, "--out"), (target, "--metrics-dir")):
        problem = unwritable(place)
        if problem:  # found now, not after every image was scored
            raise fail(f"{what}: cannot write into {place}: {problem}")
    return target


def labelled_tables(run: ScoreRun, files: int, skipped: int) -> dict | None:
    """Metric tables of the labelled, scored rows (None without labels); the summary counts what was not scored."""
    import polars as pl

    from mri44.metrics import metric_tables

    labelled = run.predictions.filter(status="ok").drop_nulls("true_class")
    if not labelled.height:
        return None
    tables = metric_tables(labelled["true_class"], labelled["pred_class"])
    tables["summary"] = tables["summary"].with_columns(
        files=pl.lit(files), errors=pl.lit(run.failed), skipped=pl.lit(skipped)
    )
    return tables


def refuse_local_only(
    decode: bool, precision: bool, compile: bool, report: Path | None, explain: int, metrics_dir: Path | None
) -> None:
    """--engine ray: options that only the local engine honours are refused, never silently ignored."""
    given = {
        "--decode": decode,
        "--precision": precision,
        "--compile": compile,
        "--report": report is not None,
        "--explain": bool(explain),
        "--metrics-dir": metrics_dir is not None,
    }
    if any(given.values()):
        raise fail(f"{', '.join(k for k, v in given.items() if v)} apply to the local engine only")


def check_report(report: Path | None, explain: int, model: Path, overwrite: bool) -> None:
    """--report and --explain problems, found before any scoring."""
    from score.backends import is_checkpoint

    if explain and (report is None or not is_checkpoint(model)):
        raise fail(
            "--explain needs --report and a checkpoint or run folder as --model (Grad-CAM runs in PyTorch)"
        )
    if report is None:
        return
    if report.exists() and not overwrite:
        raise fail(f"{report} exists; pass --overwrite to replace it")
    problem = unwritable(report.parent)
    if problem:
        raise fail(f"--report: cannot write into {report.parent}: {problem}")
    try:
        import jinja2  # noqa: F401
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise fail(f"--report needs the report extra: pip install -e '.[report]' ({exc})") from exc


def resolve_model(model: Path | None) -> Path:
    """A shipped model by name ('default', 'int8'), or the given ONNX file, checkpoint or run folder."""
    if model is None or str(model) in ("default", "int8"):
        from models import shipped_model_path

        model = shipped_model_path(str(model or "default"))
        if not model.is_file():
            raise fail(f"no shipped model at {model}; pass --model FILE.onnx (see README: onnx-export)")
    if not model.exists():
        raise fail(f"model {model} does not exist")
    return model


def write_outputs(
    run: ScoreRun, tables: dict | None, out: Path, target: Path, overwrite: bool, classes: list[str]
) -> None:
    """Predictions and tables, both or neither replaced: tables are staged beside their folder first."""
    from mri44.atomic import atomic_path
    from mri44.metrics import write_tables

    staged = None
    if tables is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        write_tables(tables, staged, classes)
    if overwrite:  # an earlier run's tables must not survive beside new predictions
        remove_output_folder(target)
    try:
        with atomic_path(out, replace=overwrite) as tmp:
            run.predictions.write_csv(tmp) if out.suffix.lower() == ".csv" else run.predictions.write_parquet(
                tmp
            )
        if staged is not None:
            remove_output_folder(target)  # empty (checked at start) or removed above
            staged.rename(target)
    except FileExistsError as exc:  # another run wrote it while we were scoring
        raise fail(str(exc)) from exc
    finally:
        if staged is not None and staged.exists():
            shutil.rmtree(staged, ignore_errors=True)


def summarise(
    run: ScoreRun,
    paths: list[Path],
    skipped: list[tuple[str, str]],
    tables: dict | None,
    out: Path,
    target: Path,
) -> None:
    """Counts and errors to the log; the summary and per-contrast tables to stdout."""
    import polars as pl

    log.info(
        "scored %d image(s), %d error(s) in %.1fs (%.1f img/s) -> %s",
        run.scored,
        run.failed,
        run.seconds,
        len(paths) / max(run.seconds, 1e-9),
        out,
    )
    if skipped:
        reasons = collections.Counter(reason for _, reason in skipped)
        common = ", ".join(f"{n} {reason}" for reason, n in reasons.most_common(5))
        log.info("skipped %d file(s) or folder(s): %s (e.g. %s)", len(skipped), common, skipped[0][0])
    for path, error in run.predictions.filter(status="error").select("path", "error").head(5).iter_rows():
        log.info("  error: %s: %s", path, error)
    if tables is not None:
        with pl.Config(tbl_hide_dataframe_shape=True, float_precision=3, tbl_cols=12, tbl_width_chars=120):
            typer.echo(tables["summary"])
            typer.echo(tables["per_contrast"])
        log.info("metric tables (%d labelled images) -> %s", tables["summary"]["n"][0], target)


def score_on_ray(
    source: str,
    out: Path,
    model: Path,
    device: str,
    batch_size: int,
    top_k: int,
    max_pixels: int,
    options: dict,
) -> None:
    """--engine ray: part files in the folder OUT, then metric tables in OUT/metrics from a lazy scan of them."""
    try:
        from score.ray_engine import counts, labelled_pairs, score_with_ray
    except ImportError as exc:
        raise fail(f"--engine ray needs Ray: pip install -e '.[ray]' ({exc})") from exc
    from mri44.metrics import metric_tables, write_tables

    if out.exists() and not out.is_dir():
        raise fail(f"--engine ray writes a folder of parts: {out} is a file")
    overwrite = options.pop("overwrite")
    if overwrite and options["resume"]:
        raise fail("--overwrite starts over and --resume continues: choose one")
    parts = sorted(out.glob("part-*.parquet")) if out.is_dir() else []
    if parts and not options["resume"]:
        if not overwrite:
            raise fail(
                f"{out} already holds parts: pass --resume to continue that run, --overwrite to start over"
            )
        for part in parts:  # only our own outputs: parts and the marked metrics folder
            part.unlink()
        remove_output_folder(out / "metrics")
    written, kept, classes = score_with_ray(
        source,
        out,
        model,
        batch_size=batch_size,
        top_k=top_k,
        max_pixels=max_pixels,
        device=device,
        **options,
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
    if pairs.height:
        tables = metric_tables(pairs["true_class"], pairs["pred_class"])
        target = out / "metrics"
        remove_output_folder(target)
        write_tables(tables, target, classes)
        typer.echo(tables["summary"])
        log.info("metric tables (%d labelled images) -> %s", pairs.height, target)
    if rows == errors:
        raise fail("no image could be scored (see the error rows)", code=1)


@app.command(
    help="Predict tumour type and contrast for every image under INPUT_DIR (recursively).\n\n"
    "Writes one row per file found (status 'error' with the reason for files that cannot be decoded). When "
    "images sit in folders named like the model's classes (e.g. 'Glioblastoma T1C+/x.jpg'), it also writes "
    "metric tables: summary, per_class, per_contrast, per_tumor_type and confusion (CSV + Parquet + PNG).\n\n"
    "--model takes an exported ONNX model (ONNX Runtime) or a training checkpoint or run folder (PyTorch, on "
    "CPU or CUDA); both give the same columns.\n\n"
    "Example: mri-score examples/ --out preds.parquet"
)
@user_errors
def score(
    input_dir: InputDirOpt,
    out: OutOpt,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    batch_size: BatchSizeOpt = 32,
    workers: WorkersOpt = max(1, min(8, os.cpu_count() or 1)),
    top_k: TopKOpt = 3,
    metrics_dir: MetricsDirOpt = None,
    overwrite: OverwriteOpt = False,
    max_pixels: MaxPixelsOpt = 50_000_000,
    precision: PrecisionOpt = "auto",
    compile: CompileOpt = False,
    decode: DecodeOpt = "cpu",
    engine: EngineOpt = "local",
    address: AddressOpt = None,
    actors: ActorsOpt = 1,
    gpus_per_actor: GpusPerActorOpt = 0.0,
    resume: ResumeOpt = False,
    report: ReportOpt = None,
    explain: ExplainOpt = 0,
) -> None:
    from mri44.dicom import expand_frames
    from mri44.discover import find_images
    from score.backends import open_backend
    from score.pipeline import score_paths

    if engine == "ray":
        refuse_local_only(decode != "cpu", precision != "auto", compile, report, explain, metrics_dir)
        source = resolve_model(model)
        ray_options = {
            "address": address,
            "actors": actors,
            "gpus_per_actor": gpus_per_actor,
            "resume": resume,
            "overwrite": overwrite,
        }
        return score_on_ray(input_dir, out, source, device, batch_size, top_k, max_pixels, ray_options)
    if engine != "local":
        raise fail(f"unknown --engine {engine!r}: choose local or ray")
    if resume:
        raise fail("--resume is for --engine ray (the local scorer writes one file, all at once)")
    folder = Path(input_dir)
    target = check_outputs(folder, out, metrics_dir, overwrite)
    source = resolve_model(model)
    check_report(report, explain, source, overwrite)
    skipped: list[tuple[str, str]] = []
    paths = expand_frames(find_images(folder, skipped))  # a multi-frame DICOM file is one row per frame
    if not paths:
        raise fail(f"no image files under {folder} (looked for .jpg .jpeg .png .webp .bmp .tif ...)")
    backend = open_backend(source, device, precision, compile)
    log.info(
        "model %s: %d classes, %dpx; %s; %d files",
        source.name,
        len(backend.meta.classes),
        backend.meta.preprocess.size,
        backend.provider,
        len(paths),
    )
    progress = sys.stderr.isatty()
    run = score_paths(backend, folder, paths, batch_size, workers, top_k, None, progress, max_pixels, decode)
    tables = labelled_tables(run, len(paths), len(skipped))
    meta = backend.meta
    write_outputs(run, tables, out, target, overwrite, meta.classes)
    summarise(run, paths, skipped, tables, out, target)
    if report is not None:
        from score.backends import is_checkpoint
        from score.report_cli import build_report

        checkpoint = source if is_checkpoint(source) else None
        build_report(None, run.predictions, report, folder, source.name, explain, checkpoint, overwrite)
        log.info("report -> %s", report)
    if run.scored == 0:
        raise fail("no image could be scored (see the error rows)", code=1)


def main() -> None:
    app()
