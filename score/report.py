"""A review report a person can look at: one self-contained HTML file (images as data URIs, no scripts, no
network) built from a predictions table.

Sections: summary and error count; with labels, the per-contrast, per-tumour-type and per-class tables, the
confusion heatmap, a reliability diagram with the ECE, and galleries of the most confident errors and the least
confident correct predictions; without labels, the distribution of predicted classes and the least confident
predictions. Gallery cards show the thumbnail, true and predicted class, top-3 probabilities, and a Grad-CAM
overlay when one was made (score/explain.py). Plots need matplotlib (pip install 'mri44[report]').
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from mri44.atomic import atomic_path
from mri44.errors import import_extra
from mri44.imageio import ImageDecodeError
from mri44.metrics import ECE_BINS, expected_calibration_error, metric_tables
from mri44.predictions import series_table, shown_path
from mri44.readers import Item, inside, read_item, row_item

log = logging.getLogger(__name__)
GALLERY_SIZE = 12
THUMB_SIDE = 160  # px on the card, readable without opening it
FULL_SIDE = 512  # px when opened; MRI slices are rarely larger


def data_uri(encoded: bytes, kind: str = "png") -> str:
    return f"data:image/{kind};base64," + base64.b64encode(encoded).decode("ascii")


def _figure_png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return data_uri(buffer.getvalue())


def _pyplot() -> Any:
    import_extra("matplotlib", "report", "the report's plots").use("Agg")
    return import_extra("matplotlib.pyplot", "report", "the report's plots")


def confusion_plot(confusion: pl.DataFrame) -> str:
    """Row-normalised heat map of the long-format confusion table (true_class, pred_class, count): the metrics
    folder's confusion.png, drawn by the same function."""
    from mri44.metrics import confusion_heatmap

    labels = sorted(set(confusion["true_class"]) | set(confusion["pred_class"]))
    return data_uri(confusion_heatmap(confusion, labels))


def reliability(confidence: np.ndarray, correct: np.ndarray) -> tuple[str, float]:
    """The reliability diagram (accuracy per confidence bin, with counts) and the expected calibration error."""
    plt = _pyplot()
    edges = np.linspace(0, 1, ECE_BINS + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, ECE_BINS - 1)
    centres = (edges[:-1] + edges[1:]) / 2
    counts = np.bincount(which, minlength=ECE_BINS)
    accuracy = np.bincount(which, weights=correct.astype(float), minlength=ECE_BINS) / np.maximum(counts, 1)
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.bar(
        centres[counts > 0],
        accuracy[counts > 0],
        width=1 / ECE_BINS,
        edgecolor="k",
        alpha=0.7,
        label="accuracy",
    )
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    for c, a, n in zip(centres, accuracy, counts, strict=True):
        if n:
            ax.text(c, min(a + 0.02, 0.97), str(n), ha="center", fontsize=6)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=7, loc="upper left")
    return _figure_png(fig), expected_calibration_error(confidence, correct)


def distribution_plot(predictions: pl.DataFrame) -> str:
    plt = _pyplot()
    counts = predictions.group_by("pred_class").len().sort("len", descending=True)
    with plt.rc_context({"text.parse_math": False}):  # class names are text: `$x$` in one is not mathematics
        fig, ax = plt.subplots(figsize=(10, 3.5))
        ax.bar(range(counts.height), counts["len"].to_list())
        ax.set_xticks(range(counts.height), counts["pred_class"].to_list(), rotation=90, fontsize=7)
        ax.set_ylabel("images")
        return _figure_png(fig)


def card_images(item: Item) -> tuple[str | None, str | None]:
    """(thumbnail, opened image) of one image, decoded once: a PNG at most THUMB_SIDE pixels on its longer edge for
    the card, a JPEG up to FULL_SIDE when opened (JPEG keeps a report small); (None, None) when it cannot be read
    (the card then shows text only)."""
    try:
        image = read_item(item)[0]
    except ImageDecodeError:
        return None, None
    return _encoded(image, THUMB_SIDE, ".png"), _encoded(image, FULL_SIDE, ".jpg")


def _encoded(image: np.ndarray, side: int, ext: str) -> str | None:
    import cv2

    scale = side / max(image.shape[:2])
    small = cv2.resize(image, None, fx=min(scale, 1.0), fy=min(scale, 1.0), interpolation=cv2.INTER_AREA)
    small = small if small.ndim == 2 else cv2.cvtColor(small, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(ext, small, [cv2.IMWRITE_JPEG_QUALITY, 85] if ext == ".jpg" else [])
    if not ok:
        return None
    return data_uri(encoded.tobytes(), "jpeg" if ext == ".jpg" else "png")


def outside_count(predictions: pl.DataFrame, root: Path | None) -> int:
    """Rows whose file lies outside the folder the report was given (`../`, an absolute path, a link out of it):
    their images are never embedded, so a report shared with others shows nothing from elsewhere."""
    if root is None:
        return 0
    return sum(not inside(root, root / path) for path in predictions["path"].unique().to_list())


def cards(rows: pl.DataFrame, root: Path | None, overlays: dict[str, str]) -> list[dict[str, Any]]:
    """One card per gallery row: the path relative to the input root (folder and file: the folder is the case or
    the class), green when the prediction is right, red when wrong, neutral without a label, amber when flagged
    out of distribution (whatever the verdict)."""
    top_columns = [c for c in rows.columns if c.startswith("top") and c.endswith("_class")][:3]
    out = []
    for row in rows.iter_rows(named=True):
        true = row.get("true_class")
        item = row_item(root, row) if root is not None else None
        shown = root is not None and item is not None and inside(root, item.path)  # nothing from elsewhere
        thumb, full = card_images(item) if shown and item is not None else (None, None)
        out.append(
            {
                "path": shown_path(row),
                "thumb": thumb,
                "full": full,
                "cam": overlays.get(shown_path(row)),
                "true": true,
                "pred": row["pred_class"],
                "verdict": "" if true is None else ("right" if true == row["pred_class"] else "wrong"),
                "flagged": bool(row.get("ood")),  # amber, whatever the verdict: never a green border
                "reason": row.get("ood_reason") if row.get("ood") else None,
                "series": _series_label(row),
                "top": [(row[c], row[c.replace("_class", "_prob")]) for c in top_columns],
            }
        )
    return out


def _series_label(row: dict[str, Any]) -> str | None:
    """'AX T1 POST, image 12' for a DICOM slice (series description, instance number), 'slice 40' of a NIfTI
    volume; None for a plain image."""
    if row.get("series_uid") is None:
        return None
    name = row.get("series_description") or "series"
    number = row.get("instance_number")
    kind = "slice" if name == "NIfTI volume" else "image"
    return f"{name}, {kind} {number}" if number is not None else name


def ood_line(ok: pl.DataFrame, recorded: dict[str, Any]) -> str:
    """The out-of-distribution check in one line for the report's header: how many scored images it flagged and
    why (ood_reason, counted per check), and the distance threshold and whose (the model's, or --ood-threshold)."""
    if "ood" not in ok.columns or ok["ood"].is_null().all():
        return "off (mri-score --ood off), or not recorded"
    options, model = recorded.get("options"), recorded.get("model")
    given = options.get("ood_threshold") if isinstance(options, dict) else None
    own = model.get("ood_threshold") if isinstance(model, dict) else None
    threshold = given if isinstance(given, (int, float)) else own
    whose = "given with --ood-threshold" if isinstance(given, (int, float)) else "the model's threshold"
    at = (
        f"; distance: ood_score above {threshold:.4f}, {whose}" if isinstance(threshold, (int, float)) else ""
    )
    reasons = (
        ok.filter(pl.col("ood").fill_null(False))
        .select(pl.col("ood_reason").str.split("; ").explode().value_counts(sort=True))
        .unnest("ood_reason")
    )
    why = ", ".join(f"{r['ood_reason']} {r['count']}" for r in reasons.iter_rows(named=True))
    return (
        f"{int(ok['ood'].fill_null(False).sum())} of {ok.height} scored images flagged ({why or 'none'}{at})"
    )


def ood_gallery(ok: pl.DataFrame) -> list[tuple[str, str, str, pl.DataFrame]]:
    """The rows flagged out of distribution (mri44.ood), least like the training images first; none when the
    check did not run or flagged nothing."""
    if "ood" not in ok.columns or not ok["ood"].fill_null(False).any():
        return []
    flagged = ok.filter(pl.col("ood").fill_null(False)).sort("ood_score", descending=True)
    note = (
        f"{flagged.height} image(s) unlike the training images (each card says why: feature distance, turned, low "
        "detail, bright border or a DICOM modality other than MR): the model has no business answering for these, "
        "whatever its confidence."
    )
    return [("out-of-distribution", "Not like the training images", note, flagged.head(GALLERY_SIZE))]


def gallery_rows(predictions: pl.DataFrame) -> list[tuple[str, str, str, pl.DataFrame]]:
    """(id, title, note, rows) of each gallery: which images a reviewer should look at first."""
    ok = predictions.filter(pl.col("status") == "ok")
    labelled = ok.filter(pl.col("true_class").is_not_null())
    if not labelled.height:
        low = ok.sort("confidence").head(GALLERY_SIZE)
        return [
            *ood_gallery(ok),
            ("low-confidence", "Least confident predictions", "The model hesitates most on these.", low),
        ]
    wrong = labelled.filter(pl.col("pred_class") != pl.col("true_class")).sort("confidence", descending=True)
    right = labelled.filter(pl.col("pred_class") == pl.col("true_class")).sort("confidence")
    return [
        *ood_gallery(ok),
        (
            "confident-errors",
            "Most confident errors",
            "Wrong, and sure of it: the errors a user would trust.",
            wrong.head(GALLERY_SIZE),
        ),
        (
            "unsure-correct",
            "Least confident correct predictions",
            "Right, but barely: one step from an error.",
            right.head(GALLERY_SIZE),
        ),
    ]


def wilson_interval(successes: pl.Expr, n: pl.Expr, z: float = 1.959964) -> tuple[pl.Expr, pl.Expr]:
    """The 95 % Wilson score interval of a proportion (Wilson 1927): honest at small n and at 0 or 1, where the
    normal approximation gives widths of zero or bounds outside 0..1."""
    n = n.cast(pl.Float64)
    p = successes.cast(pl.Float64) / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * (p * (1 - p) / n + z * z / (4 * n * n)).sqrt() / (1 + z * z / n)
    return centre - half, centre + half


def with_interval(table: pl.DataFrame, rate: str, n: str) -> pl.DataFrame:
    """table with a '<rate> 95% CI' column beside `rate` (a proportion over `n` images)."""
    lo, hi = wilson_interval(pl.col(rate) * pl.col(n), pl.col(n))
    bounds = table.select(lo=pl.when(pl.col(n) > 0).then(lo), hi=hi)
    # Three decimals on both ends, as every other figure of the report (round() printed 0.5-1.0 beside 0.25-0.83)
    label = [None if a is None else f"{a:.3f}–{b:.3f}" for a, b in bounds.iter_rows()]
    return table.with_columns(pl.Series(f"{rate} 95% CI", label, dtype=pl.String))


def grouped_confusions(labelled: pl.DataFrame) -> dict[str, str]:
    """Tumour-type and contrast confusion maps (data URIs), the story behind most 44-class errors."""
    from mri44.metrics import confusion_heatmap, confusion_table, with_label_parts

    parts = with_label_parts(labelled.select("true_class", "pred_class"))
    maps = {}
    for name, column in (("tumor_type", "tumor_type"), ("contrast", "contrast")):
        pairs = parts.select(true_class=f"true_{column}", pred_class=f"pred_{column}").drop_nulls()
        table = confusion_table(pairs)
        labels = sorted(set(table["true_class"]) | set(table["pred_class"]))
        maps[name] = data_uri(confusion_heatmap(table, labels))
    return maps


def html_table(frame: pl.DataFrame, digits: int = 3) -> str:
    head = "".join(f"<th>{c}</th>" for c in frame.columns)
    body = []
    for row in frame.iter_rows():
        cells = (f"{v:.{digits}f}" if isinstance(v, float) else ("" if v is None else str(v)) for v in row)
        body.append("<tr>" + "".join(f"<td>{_escape(c)}</td>" for c in cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_report(
    predictions: pl.DataFrame,
    root: Path | None,
    provenance: dict[str, Any] | None,
    title: str,
    overlays: dict[str, str] | None = None,
) -> str:
    """The report's HTML for a predictions table (mri-score's columns); root: where its relative paths live;
    provenance: what score/provenance.py recorded with the predictions (model, input, time), None if nothing."""
    import jinja2

    overlays = overlays or {}
    ok = predictions.filter(pl.col("status") == "ok")
    labelled_rows = ok.filter(pl.col("true_class").is_not_null())
    labelled = labelled_rows.height > 0
    recorded = provenance or {}
    model = recorded.get("model")
    context: dict[str, Any] = {
        "title": title,
        "model": model if isinstance(model, dict) else None,
        "input": recorded.get("input"),
        "time": recorded.get("time"),
        "version": recorded.get("versions", {}).get("mri44"),
        "skipped": recorded.get("counts", {}).get("skipped"),
        "bins": ECE_BINS,
        "tables": {},
        "plots": {},
        "ece": 0.0,
    }
    context["ood"] = ood_line(ok, recorded)
    context["generated"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    context["counts"] = {
        "files": predictions.height,
        "ok": ok.height,
        "errors": predictions.height - ok.height,
        "labelled": labelled_rows.height,
        "outside": outside_count(predictions, root),
    }
    errors = predictions.filter(pl.col("status") == "error").select("path", "error").head(20)
    context["errors"], context["errors_table"] = errors.height, html_table(errors)
    if labelled:
        tables = metric_tables(labelled_rows["true_class"], labelled_rows["pred_class"])
        tables["per_contrast"] = with_interval(tables["per_contrast"], "accuracy", "n")
        for name in ("per_tumor_type", "per_class"):
            tables[name] = with_interval(tables[name], "recall", "n")
        for name in ("summary", "per_contrast", "per_tumor_type", "per_class"):
            context["tables"][name] = html_table(tables[name])
        context["plots"]["confusion"] = confusion_plot(tables["confusion"])
        context["plots"].update(grouped_confusions(labelled_rows))
        correct = (labelled_rows["pred_class"] == labelled_rows["true_class"]).to_numpy()
        context["plots"]["reliability"], context["ece"] = reliability(
            labelled_rows["confidence"].to_numpy(), correct
        )
    elif ok.height:
        context["plots"]["distribution"] = distribution_plot(ok)
    model = (provenance or {}).get("model")
    names = model.get("class_names") if isinstance(model, dict) else None
    series = series_table(predictions, names if isinstance(names, list) else None)
    shown = series.drop("study_uid", "series_uid").head(200) if series is not None else None
    context["tables"]["series"] = html_table(shown) if shown is not None else ""
    context["galleries"] = [
        {"id": gid, "title": title, "note": note, "cards": cards(rows, root, overlays)}
        for gid, title, note, rows in gallery_rows(predictions)
    ]
    context["cams_shown"] = any(card["cam"] for g in context["galleries"] for card in g["cards"])
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader(__package__ or "mri44.stages.score", "templates"),
        autoescape=jinja2.select_autoescape(default=True),
    )
    template = environment.get_template("report.html.j2")
    return template.render(
        **{k: _markup(v) if k in ("tables", "errors_table") else v for k, v in context.items()}
    )


def _markup(value: Any) -> Any:
    """Our own table HTML (cells already escaped) goes into the template as markup, not as text."""
    from markupsafe import Markup

    if isinstance(value, dict):
        return {k: Markup(v) for k, v in value.items()}
    return Markup(value)


def write_report(html: str, out: Path, overwrite: bool) -> None:
    with atomic_path(out, replace=overwrite) as tmp:
        tmp.write_text(html, encoding="utf-8")
    log.info("report: %s (%.1f MB)", out, out.stat().st_size / 1e6)
