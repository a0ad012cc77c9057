"""`onnx-export`: checkpoint -> self-describing ONNX model, checked against PyTorch before it is written."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command(
    help="Export an mri44 checkpoint (a best.pt or its run folder) to ONNX with a dynamic batch axis.\n\n"
    "The model's metadata carries the class names, the preprocessing spec, the architecture, the checkpoint's "
    "SHA-256 and the export settings, so the .onnx file alone is enough for `mri-score`. Unless --no-check, "
    "the export is compared with PyTorch on random batches (sizes 1, 3, 8) and, with --images, on real images; "
    "the file is written only when parity holds, and the command exits 1 when it does not.\n\n"
    "Example: onnx-export runs/r18-256 --out models/mri44-resnet18.onnx --images ../shared/data/brain-mri-44c"
)
def export(
    checkpoint: Path = typer.Argument(
        ..., help="best.pt (or any checkpoint from `python -m train`), or a run folder."
    ),
    out: Path = typer.Option(..., help="Output .onnx file (written atomically)."),
    fp16: bool = typer.Option(
        False, "--fp16", help="Half-precision weights and compute; inputs and outputs stay float32."
    ),
    opset: int = typer.Option(
        17, min=13, max=21, help="ONNX opset (17 runs on current ONNX Runtime and TensorRT 8.6+)."
    ),
    int8: bool = typer.Option(
        False, "--int8", help="Static INT8 quantisation for CPU scoring, calibrated on --calibration images."
    ),
    calibration: Path | None = typer.Option(
        None, help="Image folder for --int8 calibration (only the run's train split is used when known)."
    ),
    calibration_images: int = typer.Option(256, help="How many calibration images for --int8."),
    tensorrt: bool = typer.Option(
        False, "--tensorrt", help="Also build a TensorRT engine (OUT with .engine suffix)."
    ),
    check: bool = typer.Option(
        True, "--check/--no-check", help="Parity check against PyTorch before writing."
    ),
    images: Path | None = typer.Option(
        None,
        help="Folder of real images for the parity check (default: --calibration, else the checkpoint's "
        "training data folder when it still exists).",
    ),
    max_images: int = typer.Option(64, help="At most this many real images in the parity check."),
    overwrite: bool = typer.Option(False, help="Replace OUT if it exists."),
) -> None:
    from export.onnx_export import export_onnx
    from export.parity import check_parity, format_table, random_batches, real_batch, training_data
    from mri44.atomic import atomic_path
    from mri44.model import CheckpointError
    from mri44.onnx_meta import INPUT_NAME
    from mri44.runtime import make_session

    if int8 and (fp16 or calibration is None):
        raise typer.BadParameter("--int8 needs --calibration DIR and excludes --fp16")
    if out.suffix.lower() != ".onnx":
        raise typer.BadParameter(f"--out must end in .onnx, got {out.name}")
    if out.exists() and not overwrite:
        typer.secho(f"error: {out} exists; pass --overwrite to replace it", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    try:
        files = None
        if int8:
            from export.int8 import calibration_files
            from mri44.model import checkpoint_path

            files = calibration_files(calibration, checkpoint_path(checkpoint), calibration_images)
        proto, model, meta = export_onnx(checkpoint, opset=opset, fp16=fp16, int8_calibration=files)
    except (CheckpointError, FileNotFoundError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc
    data = proto.SerializeToString()
    precision = meta.export["precision"]
    spec = meta.preprocess
    failed = False
    if check:
        batches = random_batches(spec)
        # The gate always includes real images: --images, else the calibration or training images.
        real = images or calibration or training_data(checkpoint)
        if real is None:
            typer.secho(
                "error: no real images for the parity gate: pass --images DIR (or --no-check)",
                fg=typer.colors.RED,
                err=True,
            )
            raise typer.Exit(2)
        try:
            batch, _ = real_batch(real, spec, max_images)
        except FileNotFoundError as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from exc
        batches[f"real x{len(batch)}"] = batch
        session = make_session(data, "cpu")
        rows = check_parity(model, lambda x: session.run(None, {INPUT_NAME: x})[0], batches, precision)
        typer.echo(format_table(rows, f"parity {precision} ONNX Runtime (CPU) vs PyTorch"))
        failed = not all(r.passed for r in rows)
    engine = None
    if tensorrt and not failed:
        from export.tensorrt_engine import build_engine, engine_runner

        try:
            engine = build_engine(data, spec.size, fp16)
        except RuntimeError as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from exc
        if check:
            rows = check_parity(model.float(), engine_runner(engine), batches, precision)
            typer.echo(format_table(rows, f"parity {precision} TensorRT vs PyTorch"))
            failed = not all(r.passed for r in rows)
    if failed:
        typer.secho("parity check failed: nothing written", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    try:
        with atomic_path(out, replace=overwrite) as tmp:
            tmp.write_bytes(data)
    except FileExistsError as exc:  # appeared while we were exporting
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc
    typer.echo(
        f"wrote {out} ({len(data) / 1e6:.1f} MB, {precision}, opset {opset}, {len(meta.classes)} classes, "
        f"input {INPUT_NAME} (N,3,{spec.size},{spec.size}))"
    )
    if engine is not None:
        from export.tensorrt_engine import write_engine

        engine_path = out.with_suffix(".engine")
        write_engine(engine_path, engine)
        typer.echo(f"wrote {engine_path} ({len(engine) / 1e6:.1f} MB)")


def main() -> None:
    app()
