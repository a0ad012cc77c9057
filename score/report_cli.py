"""`mri-report`: the HTML review report from an existing predictions file (mri-score's --out)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mri44.atomic import refuse_existing
from mri44.console import fail, user_errors

from .outputs import refuse_clashes
from .provenance import read_provenance

if TYPE_CHECKING:
    import polars as pl

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

PredictionsArg = Annotated[
    Path,
    typer.Argument(
        help="Predictions written by mri-score (.parquet or .csv), or its --engine ray parts folder."
    ),
]
OutOpt = Annotated[Path | None, typer.Option(help="The report (default: PREDICTIONS with .html).")]
ImagesOpt = Annotated[
    Path | None,
    typer.Option(help="The folder that was scored, for thumbnails (its paths are relative to it)."),
]
ExplainOpt = Annotated[
    int,
    typer.Option(
        min=0,
        help="Class activation map (Grad-CAM) overlays for N images per gallery of the report; any model: "
        "mri-report --model, or mri-score's own --model.",
    ),
]
ModelOpt = Annotated[
    Path | None,
    typer.Option(
        "--model",
        "--checkpoint",
        help="The model behind the predictions (ONNX file, checkpoint or run folder), for --explain.",
    ),
]
OverwriteOpt = Annotated[bool, typer.Option(help="Replace the report if it exists.")]


def build_report(
    predictions: Path | None,
    frame: pl.DataFrame,
    out: Path,
    images: Path | None,
    provenance: dict | None,
    explain: int,
    model_path: Path | None,
    overwrite: bool,
) -> None:
    """Render and write the report (shared by mri-report and mri-score --report)."""
    from .report import render_report, write_report

    overlays: dict[str, str] = {}
    if explain:
        if model_path is None or images is None:
            raise fail(
                "--explain needs --model (the model behind the predictions) and the scored images' folder"
            )
        from .explain import gallery_overlays

        overlays = gallery_overlays(frame, images, model_path, explain)
    title = predictions.name if predictions is not None else str(images)
    write_report(render_report(frame, images, provenance, title, overlays), out, overwrite)


@app.command(
    help="Build the HTML review report of a predictions file: tables, confusion, reliability, galleries."
)
@user_errors
def report(
    predictions: PredictionsArg,
    out: OutOpt = None,
    images: ImagesOpt = None,
    explain: ExplainOpt = 0,
    model: ModelOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    import polars as pl

    from .ray_engine import PART_GLOB

    parts = sorted(predictions.glob(PART_GLOB)) if predictions.is_dir() else []
    target = out or (predictions / "report.html" if parts else predictions.with_suffix(".html"))
    refuse_existing(target, overwrite)
    recorded = read_provenance(predictions)
    images, model = _from_provenance(recorded, images, model, explain)
    from mri44.files import checkpoint_path

    refuse_clashes(
        {"--out": target},
        {
            "predictions file": predictions,
            "--model": checkpoint_path(model) if model else None,
        },
        images,
    )
    if not predictions.is_file() and not parts:
        raise fail(f"no predictions file (or folder of {PART_GLOB} parts) at {predictions}")
    try:
        if parts:
            frame = pl.read_parquet(parts).sort("path")
        elif predictions.suffix.lower() == ".parquet":
            frame = pl.read_parquet(predictions)
        else:
            frame = pl.read_csv(predictions)
    except (pl.exceptions.PolarsError, OSError) as exc:
        bad = next((part for part in parts if not _readable(part)), None)
        if bad is not None:
            raise fail(
                f"part {bad} cannot be read (cut off?): mri-score --engine ray --resume sets it aside and scores "
                "its files again"
            ) from exc
        raise fail(f"cannot read {predictions} as a predictions table: {exc}") from exc
    missing = {"path", "status", "error", "pred_class", "confidence", "true_class"} - set(frame.columns)
    if missing:
        raise fail(f"{predictions} is not mri-score output (missing {', '.join(sorted(missing))})")
    wrong = [
        f"{name} is {frame[name].dtype}, expected {kind}"
        for name, kind in (
            ("path", "text"),
            ("status", "text"),
            ("pred_class", "text"),
            ("true_class", "text"),
        )
        if frame[name].dtype not in (pl.String, pl.Null)
    ] + (
        []
        if frame["confidence"].dtype.is_float()
        else [f"confidence is {frame['confidence'].dtype}, expected numbers"]
    )
    if wrong:
        raise fail(f"{predictions} is not mri-score output: {'; '.join(wrong)}")
    build_report(
        predictions,
        frame,
        target,
        images,
        recorded,
        explain,
        model,
        overwrite,
    )


def _from_provenance(
    recorded: dict | None, images: Path | None, model: Path | None, explain: int
) -> tuple[Path | None, Path | None]:
    """The scored folder and (for --explain) the model, from what mri-score recorded with the predictions, when
    not given: the model only if its file is still there with the recorded SHA-256."""
    log = logging.getLogger(__name__)
    recorded = recorded or {}
    source = recorded.get("input")
    if images is None and isinstance(source, str) and "://" not in source and Path(source).is_dir():
        images = Path(source)
        log.info("images: %s (recorded with the predictions)", images)
    known = recorded.get("model") or {}
    if model is None and explain and isinstance(known, dict) and Path(str(known.get("path"))).exists():
        from mri44.files import checkpoint_path, file_sha256

        candidate = Path(known["path"])
        if file_sha256(checkpoint_path(candidate)) == known.get("sha256"):
            model = candidate
            log.info("model: %s (recorded with the predictions)", model)
    return images, model


def main() -> None:
    app()


def _readable(part: Path) -> bool:
    import polars as pl

    try:
        pl.read_parquet_schema(part)
        pl.read_parquet(part, columns=["path"])
    except (pl.exceptions.PolarsError, OSError):
        return False
    return True
