"""`mri-score`: score a folder of MRI slices with an exported model; metric tables when labels are known."""

from __future__ import annotations

import collections
import os
import shutil
import sys
import tempfile
from pathlib import Path

import typer

from mri44.discover import OUTPUT_MARKER

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


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


@app.command(
    help="Predict tumour type and contrast for every image under INPUT_DIR (recursively).\n\n"
    "Writes one row per file found (status 'error' with the reason for files that cannot be decoded). When "
    "images sit in folders named like the model's classes (e.g. 'Glioblastoma T1C+/x.jpg'), it also writes "
    "metric tables: summary, per_class, per_contrast, per_tumor_type and confusion (CSV + Parquet + PNG).\n\n"
    "Example: mri-score examples/ --out preds.parquet"
)
def score(
    input_dir: Path = typer.Argument(
        ..., help="Folder of images (searched recursively; hidden files skipped)."
    ),
    out: Path = typer.Option(..., help="Predictions file: .parquet, or .csv for CSV."),
    model: Path | None = typer.Option(
        None,
        help="ONNX model from `onnx-export`, or a shipped one by name: 'default' (fp16) or 'int8' (about 3x "
        "faster on a CPU, slightly less accurate; see models/README.md). Default: 'default'.",
    ),
    device: str = typer.Option("auto", help="auto (TensorRT -> CUDA -> CPU), cpu, cuda or tensorrt."),
    batch_size: int = typer.Option(32, min=1, help="Images per inference batch."),
    workers: int = typer.Option(max(1, min(8, os.cpu_count() or 1)), min=1, help="Decoding threads."),
    top_k: int = typer.Option(3, min=1, help="How many top classes to list per image."),
    metrics_dir: Path | None = typer.Option(
        None, help="Where metric tables go (default: OUT's name + '_metrics')."
    ),
    overwrite: bool = typer.Option(False, help="Replace existing outputs."),
    max_pixels: int = typer.Option(
        50_000_000, min=1, help="Files whose header claims more pixels become error rows (memory bound)."
    ),
) -> None:
    from mri44.atomic import atomic_path
    from mri44.discover import find_images
    from mri44.metrics import metric_tables, write_tables
    from mri44.onnx_meta import ModelMetadataError
    from mri44.runtime import ProviderError, make_session
    from score.pipeline import load_metadata, score_paths

    if out.suffix.lower() not in (".parquet", ".csv"):
        raise _fail(f"--out must end in .parquet or .csv, got {out.name}")
    if out.exists() and not overwrite:
        raise _fail(f"{out} exists; pass --overwrite to replace it")
    target = metrics_dir or out.with_name(f"{out.stem}_metrics")
    if target.is_dir() and any(target.iterdir()):
        if not overwrite:
            raise _fail(f"metrics folder {target} is not empty; pass --overwrite or another --metrics-dir")
        if not (target / OUTPUT_MARKER).exists():
            raise _fail(f"{target} holds files mri-score did not write; choose another --metrics-dir")
    if not input_dir.is_dir():
        raise _fail(f"input folder {input_dir} does not exist or is not a folder")
    for place, what in ((out.parent, "--out"), (target, "--metrics-dir")):
        problem = unwritable(place)
        if problem:  # found now, not after every image was scored
            raise _fail(f"{what}: cannot write into {place}: {problem}")
    if model is None or str(model) in ("default", "int8"):
        from models import shipped_model_path

        model = shipped_model_path(str(model or "default"))
        if not model.is_file():
            raise _fail(f"no shipped model at {model}; pass --model FILE.onnx (see README: onnx-export)")
    if not model.is_file():
        raise _fail(f"model {model} does not exist")
    skipped: list[tuple[str, str]] = []
    paths = find_images(input_dir, skipped)
    if not paths:
        raise _fail(f"no image files under {input_dir} (looked for .jpg .jpeg .png .webp .bmp .tif ...)")
    try:
        session = make_session(model, device)
        meta = load_metadata(session, str(model))
    except (ProviderError, ModelMetadataError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    except Exception as exc:  # onnxruntime raises its own types for files that are not ONNX models
        raise _fail(f"cannot load {model} as an ONNX model: {exc}") from exc
    typer.echo(
        f"model {model.name}: {len(meta.classes)} classes, {meta.preprocess.size}px; "
        f"provider {session.get_providers()[0]}; {len(paths)} files",
        err=True,
    )

    run = score_paths(
        session,
        meta,
        input_dir,
        paths,
        batch_size=batch_size,
        workers=workers,
        top_k=top_k,
        progress=sys.stderr.isatty(),
        max_pixels=max_pixels,
    )
    import polars as pl

    labelled = run.predictions.filter(status="ok").drop_nulls("true_class")
    tables = metric_tables(labelled["true_class"], labelled["pred_class"]) if labelled.height else None
    staged = None
    if tables is not None:
        # The summary says how many files could not be scored, beside what was.
        tables["summary"] = tables["summary"].with_columns(
            files=pl.lit(len(paths)), errors=pl.lit(run.failed), skipped=pl.lit(len(skipped))
        )
        # Tables are written aside first, so a failure here leaves every old output alone.
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        write_tables(tables, staged, meta.classes)
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
        raise _fail(str(exc)) from exc
    finally:
        if staged is not None and staged.exists():
            shutil.rmtree(staged, ignore_errors=True)
    typer.echo(
        f"scored {run.scored} image(s), {run.failed} error(s) in {run.seconds:.1f}s "
        f"({len(paths) / max(run.seconds, 1e-9):.1f} img/s) -> {out}",
        err=True,
    )
    if skipped:
        reasons = collections.Counter(reason for _, reason in skipped)
        typer.echo(
            f"skipped {len(skipped)} file(s) or folder(s): "
            + ", ".join(f"{n} {reason}" for reason, n in reasons.most_common(5))
            + f" (e.g. {skipped[0][0]})",
            err=True,
        )
    if run.failed:
        bad = run.predictions.filter(status="error").select("path", "error").head(5)
        for path, error in bad.iter_rows():
            typer.echo(f"  error: {path}: {error}", err=True)
    if tables is not None:
        with pl.Config(tbl_hide_dataframe_shape=True, float_precision=3, tbl_cols=12, tbl_width_chars=120):
            typer.echo(tables["summary"])
            typer.echo(tables["per_contrast"])
        typer.echo(f"metric tables ({labelled.height} labelled images) -> {target}", err=True)
    if run.scored == 0:
        raise _fail("no image could be scored (see the error rows)", code=1)


def main() -> None:
    app()
