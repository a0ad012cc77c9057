"""`onnx-export`: checkpoint -> self-describing ONNX model, checked against PyTorch before it is written."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from mri44.atomic import refuse_existing
from mri44.console import fail, user_errors
from mri44.run_folder import RunFolder

log = logging.getLogger(__name__)

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


CheckpointOpt = Annotated[
    Path, typer.Argument(help="best.pt (or any checkpoint from `python -m train`), or a run folder.")
]
OutOpt = Annotated[Path, typer.Option(help="Output .onnx file (written atomically).")]
Fp16Opt = Annotated[
    bool,
    typer.Option("--fp16", help="Half-precision weights and compute; inputs and outputs stay float32."),
]
OpsetOpt = Annotated[
    int,
    typer.Option(min=13, max=21, help="ONNX opset (17 runs on current ONNX Runtime and TensorRT 8.6+)."),
]
Int8Opt = Annotated[
    bool,
    typer.Option(
        "--int8", help="Static INT8 quantisation for CPU scoring, calibrated on --calibration images."
    ),
]
CalibrationOpt = Annotated[
    Path | None,
    typer.Option(help="Image folder for --int8 calibration (only the run's train split is used when known)."),
]
CalibrationImagesOpt = Annotated[int, typer.Option(min=1, help="How many calibration images for --int8.")]
TensorrtOpt = Annotated[
    bool, typer.Option("--tensorrt", help="Also build a TensorRT engine (OUT with .engine suffix).")
]
CheckOpt = Annotated[
    bool, typer.Option("--check/--no-check", help="Parity check against PyTorch before writing.")
]
ImagesOpt = Annotated[
    Path | None,
    typer.Option(
        help="Folder of real images for the parity check (default: --calibration, else the checkpoint's "
        "training data folder when it still exists)."
    ),
]
MaxImagesOpt = Annotated[int, typer.Option(min=1, help="At most this many real images in the parity check.")]
OverwriteOpt = Annotated[bool, typer.Option(help="Replace OUT if it exists.")]
AllowUnfinishedOpt = Annotated[
    bool,
    typer.Option(
        help="Export a run that has not finished training (intermediate weights, no fitted temperature)."
    ),
]


@app.command(
    help="Export an mri44 checkpoint (a best.pt or its run folder) to ONNX with a dynamic batch axis.\n\n"
    "The model's metadata carries the class names, the preprocessing spec, the architecture, the checkpoint's "
    "SHA-256 and the export settings, so the .onnx file alone is enough for `mri-score`. Unless --no-check, "
    "the export is compared with PyTorch on random batches (sizes 1, 3, 8) and, with --images, on real images; "
    "the file is written only when parity holds, and the command exits 1 when it does not.\n\n"
    "Example: onnx-export runs/r18-256 --out my-model.onnx --fp16 --images ../shared/data/brain-mri-44c"
)
@user_errors
def export(
    checkpoint: CheckpointOpt,
    out: OutOpt,
    fp16: Fp16Opt = False,
    opset: OpsetOpt = 17,
    int8: Int8Opt = False,
    calibration: CalibrationOpt = None,
    calibration_images: CalibrationImagesOpt = 256,
    tensorrt: TensorrtOpt = False,
    check: CheckOpt = True,
    images: ImagesOpt = None,
    max_images: MaxImagesOpt = 64,
    overwrite: OverwriteOpt = False,
    allow_unfinished: AllowUnfinishedOpt = False,
) -> None:
    from mri44.files import checkpoint_path
    from mri44.onnx_meta import INPUT_NAME

    from .checked import ExportRequest, export_checked, write_exported
    from .parity import format_table

    if int8 and (fp16 or calibration is None):
        raise typer.BadParameter("--int8 needs --calibration DIR and excludes --fp16")
    if out.suffix.lower() != ".onnx":
        raise typer.BadParameter(f"--out must end in .onnx, got {out.name}")
    for path in (out, out.with_suffix(".engine") if tensorrt else None):
        if path is not None:
            refuse_existing(path, overwrite)
        if path is not None and path.exists() and path.resolve() == checkpoint_path(checkpoint).resolve():
            raise fail(f"--out {path} is the checkpoint being exported; write to another file")
    unfinished = unfinished_run(checkpoint)
    if unfinished and not allow_unfinished:
        raise fail(f"{unfinished}; pass --allow-unfinished to export its current weights anyway")
    request = ExportRequest(
        checkpoint=checkpoint,
        opset=opset,
        fp16=fp16,
        int8_calibration=calibration if int8 else None,
        calibration_images=calibration_images,
        tensorrt=tensorrt,
        check=check,
        images=images or calibration,
        max_images=max_images,
    )
    result = export_checked(request)
    for title, rows in result.checks:
        typer.echo(format_table(rows, title))
    if not result.passed:
        raise fail("parity check failed: nothing written", code=1)
    size = result.meta.preprocess.size
    for path in write_exported(result, out, overwrite):
        data = result.onnx_bytes if path == out else result.engine or b""
        log.info(
            "wrote %s (%.1f MB, %s, opset %d, %d classes, input %s (N,3,%d,%d))",
            path,
            len(data) / 1e6,
            result.meta.export["precision"],
            opset,
            len(result.meta.classes),
            INPUT_NAME,
            size,
            size,
        )


def unfinished_run(checkpoint: Path) -> str | None:
    """Why checkpoint belongs to a training run that has not finished, or None. A run writes result.json last,
    after the final evaluation re-saved best.pt with its fitted temperature; a run folder with last.pt and no
    result.json at least as new as best.pt is still training (or died before the end)."""
    from mri44.files import checkpoint_path

    best = checkpoint_path(checkpoint)
    folder = best.parent
    if not RunFolder(folder).last.is_file():
        return None  # a checkpoint file outside a run folder: nothing says how it was made
    result = RunFolder(folder).result
    if not result.is_file() or result.stat().st_mtime < best.stat().st_mtime:
        return f"{folder} has not finished training (no result.json newer than {best.name})"
    return None


def main() -> None:
    app()
