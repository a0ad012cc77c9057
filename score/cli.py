"""`mri-score`: score a folder of MRI slices with an exported model; metric tables when labels are known.

A thin layer: the options become one score.run.ScoreOptions and score.run.score() does the work (the Python API,
mri44.score(), calls the same function); this module prints the summary.
"""

from __future__ import annotations

import collections
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mri44.console import fail, library_warnings_counted, user_errors
from mri44.models import shipped_names

from .options import ScoreOptions, ScoreResult
from .run import score as run_score

if TYPE_CHECKING:
    import polars as pl

log = logging.getLogger(__name__)

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


InputDirOpt = Annotated[
    str,
    typer.Argument(
        help="Folder of images (searched recursively; hidden files skipped), or one image file (labelled by its "
        "folder's name when that is a class); with --engine ray a folder or a URL that pyarrow reads "
        "(s3://bucket/prefix, gs://...)."
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
        f"shipped model by name: {shipped_names()}; models/README.md. Default: 'default'."
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
    typer.Option(min=1, help="Images whose header claims more pixels become error rows (memory bound)."),
]
MaxFramesOpt = Annotated[
    int,
    typer.Option(
        min=1,
        help="At most this many frames of one DICOM file (or slices of one NIfTI volume) become rows; the rest "
        "are left out and counted in the summary.",
    ),
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
        help="local: this process. ray: a Ray cluster (pip install -e '.\\[ray]'; docs/scale-out.md)."
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
OodOpt = Annotated[
    str,
    typer.Option(
        help="on: every row gets ood_score (how unlike the training images it is) and ood (above the model's "
        "threshold: the model has no business answering; README). off: skip it."
    ),
]
OodThresholdOpt = Annotated[
    float | None,
    typer.Option(help="Flag rows whose ood_score is above this instead of the model's threshold."),
]
REPORT_EXPLAIN = 3  # class activation maps per gallery when --report is given without --explain
ExplainOpt = Annotated[
    int | None,
    typer.Option(
        min=0,
        help="Class activation map (Grad-CAM) overlays for N images per gallery of the report, beside each "
        f"slice (default {REPORT_EXPLAIN} with --report; 0: none).",
    ),
]
CompileOpt = Annotated[
    bool, typer.Option(help="For a checkpoint: torch.compile the network (pays off on GPUs).")
]


def summarise(result: ScoreResult, files: int) -> None:
    """Counts and errors to the log; the summary and per-contrast tables to stdout."""

    if result.predictions is not None:
        log.info(
            "scored %d image(s), %d error(s) in %.1fs (%.1f img/s) -> %s",
            result.scored,
            result.failed,
            result.seconds,
            files / max(result.seconds, 1e-9),
            result.out,
        )
        errors = result.predictions.filter(status="error").select("path", "error").head(5)
        for path, error in errors.iter_rows():
            log.info("  error: %s: %s", path, error)
    if result.skipped:
        reasons = collections.Counter(reason for _, reason in result.skipped)
        common = ", ".join(f"{n} {reason}" for reason, n in reasons.most_common(5))
        log.info(
            "skipped %d file(s) or folder(s): %s (e.g. %s)", len(result.skipped), common, result.skipped[0][0]
        )
    tables = result.tables or {}
    if "summary" in tables:
        typer.echo(tables_text(tables, result.metrics_dir))
        log.info("metric tables (%d labelled images) -> %s", tables["summary"]["n"][0], result.metrics_dir)
        from mri44.metrics import training_overlap

        overlap = training_overlap(tables["summary"])
        if overlap:
            log.warning(overlap)
    if "series" in tables:
        log.info(
            "%d series (DICOM series, NIfTI volumes), one row each -> %s",
            tables["series"].height,
            result.metrics_dir,
        )


WEAKEST_CLASSES = 8  # per-class rows printed (lowest F1 first); the whole table is in the metrics folder


def tables_text(tables: dict[str, pl.DataFrame], metrics_dir: Path | None) -> str:
    """The metric tables for a terminal, nothing cut: the summary one figure per line (figures that do not apply
    left out), per contrast and per tumour type whole, the weakest classes by F1 and how many more there are."""
    import polars as pl

    lines = [
        f"  {name:<26}{value:.3f}" if isinstance(value, float) else f"  {name:<26}{value}"
        for name, value in tables["summary"].row(0, named=True).items()
        if value is not None
    ]
    parts = ["summary", *lines]
    with pl.Config(tbl_hide_dataframe_shape=True, float_precision=3, tbl_rows=-1, tbl_cols=-1):
        for name in ("per_contrast", "per_tumor_type"):
            if name in tables:
                parts += [name.replace("_", " "), str(tables[name])]
        if "per_class" in tables:
            per_class = tables["per_class"]
            rest = per_class.height - WEAKEST_CLASSES
            parts += ["per class, lowest F1 first", str(per_class.head(WEAKEST_CLASSES))]
            if rest > 0:
                where = metrics_dir / "per_class.csv" if metrics_dir else "the metric tables"
                parts.append(f"... and {rest} more classes in {where}")
    return "\n".join(parts)


@app.command(
    help="Predict tumour type and contrast for every image under INPUT_DIR (recursively), or for one file.\n\n"
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
    workers: WorkersOpt = ScoreOptions.workers,
    top_k: TopKOpt = 3,
    metrics_dir: MetricsDirOpt = None,
    overwrite: OverwriteOpt = False,
    max_pixels: MaxPixelsOpt = ScoreOptions.max_pixels,
    max_frames: MaxFramesOpt = ScoreOptions.max_frames,
    precision: PrecisionOpt = "auto",
    compile: CompileOpt = False,
    decode: DecodeOpt = "cpu",
    engine: EngineOpt = "local",
    address: AddressOpt = None,
    actors: ActorsOpt = 1,
    gpus_per_actor: GpusPerActorOpt = 0.0,
    resume: ResumeOpt = False,
    report: ReportOpt = None,
    explain: ExplainOpt = None,
    ood: OodOpt = "on",
    ood_threshold: OodThresholdOpt = None,
) -> None:
    options = ScoreOptions(
        model=model,
        device=device,
        batch_size=batch_size,
        workers=workers,
        top_k=top_k,
        metrics_dir=metrics_dir,
        overwrite=overwrite,
        max_pixels=max_pixels,
        max_frames=max_frames,
        precision=precision,
        compile=compile,
        decode=decode,
        engine=engine,
        address=address,
        actors=actors,
        gpus_per_actor=gpus_per_actor,
        resume=resume,
        report=report,
        explain=(REPORT_EXPLAIN if report and engine == "local" else 0) if explain is None else explain,
        progress=sys.stderr.isatty(),
        ood=ood,
        ood_threshold=ood_threshold,
    )
    with library_warnings_counted(log):
        result = run_score(input_dir, out, options)
    summarise(result, result.scored + result.failed)
    if result.scored == 0:
        raise fail("no image could be scored (see the error rows)", code=1)


def main() -> None:
    app()
