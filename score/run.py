"""Scoring as a library: one typed options object, one `score()` that runs the local or the Ray engine.

`mri-score` and `mri44.score()` are thin layers over this module; both engines write the same predictions rows
and the same summary columns (files, errors, skipped beside the metrics).
"""

from __future__ import annotations

import logging
from pathlib import Path

from mri44.discover import require_folder
from mri44.errors import SettingError, import_extra
from mri44.metrics import tables_with_counts

from .options import ScoreOptions, ScoreResult
from .outputs import check_outputs, check_report_path, refuse_clashes, write_outputs
from .provenance import provenance, sidecar

log = logging.getLogger(__name__)


def resolve_model(model: str | Path | None) -> Path:
    """A shipped model by name (mri44.models.SHIPPED), or the given ONNX file, checkpoint or run folder."""
    from mri44.models import SHIPPED, shipped_model_path

    if model is None or str(model) in SHIPPED:
        path = shipped_model_path(str(model or "default"))
        if not path.is_file():
            raise SettingError(
                f"no shipped model at {path}; pass --model FILE.onnx (see README: onnx-export)"
            )
        return path
    path = Path(model)
    if not path.exists():
        raise SettingError(f"model {path} does not exist")
    return path


def check_report(options: ScoreOptions, model: Path) -> None:
    """--report and --explain problems, found before any scoring."""
    if options.explain and options.report is None:
        raise SettingError("--explain draws class activation maps into the report: it needs --report")
    if options.report is None:
        return
    check_report_path(options.report, options.overwrite)
    for module in ("jinja2", "matplotlib"):
        import_extra(module, "report", "--report")


def score(input_dir: str | Path, out: Path | None, options: ScoreOptions = ScoreOptions()) -> ScoreResult:
    """Score every image under input_dir with options.model; write predictions to out (and tables beside it)
    unless out is None, in which case nothing is written and the result holds them."""
    if options.engine == "ray":
        if out is None:
            raise SettingError("--engine ray writes its rows as part files: give an --out folder")
        local_only = options.local_only_given()
        if local_only:
            raise SettingError(f"{', '.join(local_only)} apply to the local engine only")
        import_extra("ray", "ray", "--engine ray")
        from .ray_engine import run_ray

        return run_ray(str(input_dir), out, resolve_model(options.model), options)
    if options.resume:
        raise SettingError("--resume is for --engine ray (the local scorer writes one file, all at once)")
    return run_local(Path(input_dir), out, options)


def check_local_run(folder: Path, out: Path | None, options: ScoreOptions) -> tuple[Path, Path]:
    """Everything refused before any work: outputs that exist or clash with inputs or each other, a missing
    input folder or model, report options. Returns (the metrics folder, the model path)."""
    require_folder(folder, "input folder")
    target = Path()
    if out is not None:
        target = check_outputs(folder, out, options.metrics_dir, options.overwrite)
    source = resolve_model(options.model)
    record = sidecar(out) if out is not None and out.suffix.lower() == ".csv" else None
    refuse_clashes(
        {
            "--out": out,
            "--out's provenance file": record,
            "--metrics-dir": target if out is not None else None,
            "--report": options.report,
        },
        {"--model": source},
        folder,
    )
    check_report(options, source)
    return target, source


def run_local(folder: Path, out: Path | None, options: ScoreOptions) -> ScoreResult:
    """The local engine: discover, decode in threads, infer in batches, write predictions and tables."""
    from mri44.discover import find_images
    from mri44.readers import list_items

    from .backends import open_backend
    from .pipeline import score_items

    # One file is scored from its grandparent folder, so that a class-named parent folder labels it.
    root, given = (folder.parent.parent, [folder]) if folder.is_file() else (folder, None)
    target, source = check_local_run(root, out, options)
    skipped: list[tuple[str, str]] = []
    listed = given if given is not None else find_images(root, skipped)
    limits = options.limits()
    items = list_items(listed, limits, skipped)  # frames and slices: a row each
    if not items:
        raise SettingError(f"no image files under {folder} (looked for .jpg .jpeg .png .webp .bmp .tif ...)")
    backend = open_backend(source, options.device, options.precision, options.compile)
    meta = backend.meta
    log.info(
        "model %s: %d classes, %dpx; %s; %d images",
        source.name,
        len(meta.classes),
        meta.preprocess.size,
        backend.provider,
        len(items),
    )
    run = score_items(
        backend,
        root,
        items,
        options.batch_size,
        options.workers,
        options.top_k,
        None,
        options.progress,
        limits,
        options.decode,
        ood=options.ood == "on",
        ood_threshold=options.ood_threshold,
    )
    labelled = run.predictions.filter(status="ok").drop_nulls("true_class")
    flagged = run.predictions["ood"].drop_nulls()
    tables = tables_with_counts(
        labelled, len(items), run.failed, len(skipped), int(flagged.sum()) if flagged.len() else None
    )
    if run.series is not None:  # a series-level answer, labelled or not
        tables = {**(tables or {}), "series": run.series}
    counts = {"files": len(items), "errors": run.failed, "skipped": len(skipped)}
    recorded = provenance(source, meta, str(root.resolve()), options, counts)
    if out is not None:
        write_outputs(run.predictions, tables, out, target, options.overwrite, meta.classes, recorded)
    if options.report is not None:
        from .report_cli import build_report

        build_report(
            None,
            run.predictions,
            options.report,
            root,
            recorded,
            options.explain,
            source,
            options.overwrite,
        )
    return ScoreResult(
        predictions=run.predictions,
        tables=tables,
        scored=run.scored,
        failed=run.failed,
        skipped=skipped,
        seconds=run.seconds,
        model=source,
        out=out,
        metrics_dir=target if out is not None and tables is not None else None,
    )
