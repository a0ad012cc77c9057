"""Metric tables shared by training (test split) and scoring (labelled folders).

Everything is computed with Polars from a frame of (true_class, pred_class) pairs, following scikit-learn's
conventions (classes = those seen in truth or prediction, zero division -> 0), so the tables can be checked
against sklearn.metrics and agree with the published report's tables 4-6.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from mri44.atomic import atomic_path, write_text_atomic
from mri44.discover import OUTPUT_MARKER
from mri44.labels import parse_label


def _mean(series: pl.Series) -> float:
    """The mean as a float; 0 for an empty series (polars gives None)."""
    value = series.cast(pl.Float64).mean()
    return float(value) if isinstance(value, (int, float)) else 0.0


def _safe_div(num: pl.Expr, den: pl.Expr) -> pl.Expr:
    return pl.when(den > 0).then(num / den).otherwise(0.0)


def per_class_table(pairs: pl.DataFrame, true: str = "true_class", pred: str = "pred_class") -> pl.DataFrame:
    """Precision, recall, F1 and n (its true images) for every class seen in truth or prediction, sorted by F1."""
    classes = pl.concat(
        [pairs.select(pl.col(true).alias("class")), pairs.select(pl.col(pred).alias("class"))]
    )
    classes = classes.unique().drop_nulls()
    tp = pairs.filter(pl.col(true) == pl.col(pred)).group_by(pl.col(true).alias("class")).len("tp")
    counts = pairs.group_by(pl.col(true).alias("class")).len("n")
    predicted = pairs.group_by(pl.col(pred).alias("class")).len("predicted")
    table = (
        classes.join(tp, on="class", how="left")
        .join(counts, on="class", how="left")
        .join(predicted, on="class", how="left")
        .with_columns(pl.col("tp", "n", "predicted").fill_null(0).cast(pl.Int64))
        .with_columns(
            precision=_safe_div(pl.col("tp"), pl.col("predicted")),
            recall=_safe_div(pl.col("tp"), pl.col("n")),
        )
        .with_columns(
            f1=_safe_div(2 * pl.col("precision") * pl.col("recall"), pl.col("precision") + pl.col("recall"))
        )
    )
    return table.select("class", "precision", "recall", "f1", "n").sort(["f1", "class"])


def summary_table(pairs: pl.DataFrame, true: str = "true_class", pred: str = "pred_class") -> pl.DataFrame:
    """Accuracy, macro and weighted precision/recall/F1 (the report's table 4), one row."""
    per_class = per_class_table(pairs, true, pred)
    n = pairs.height
    total_n = max(int(per_class["n"].sum()), 1)
    metrics = ("precision", "recall", "f1")
    return pl.DataFrame(
        {
            "n": [n],
            "accuracy": [float((pairs[true] == pairs[pred]).sum()) / n if n else 0.0],
            **{f"macro_{m}": [_mean(per_class[m])] for m in metrics},
            **{f"weighted_{m}": [float((per_class[m] * per_class["n"]).sum()) / total_n] for m in metrics},
        }
    )


def _grouped_table(pairs: pl.DataFrame, key: str) -> pl.DataFrame:
    """Per-group n, accuracy and macro-F1 of the task restricted to (and relabelled by) that group key."""
    rows = []
    for (value,), group in pairs.group_by(f"true_{key}", maintain_order=True):
        summary = summary_table(group)
        rows.append(
            {
                key: value,
                "n": group.height,
                "accuracy": summary["accuracy"][0],
                "macro_f1": summary["macro_f1"][0],
            }
        )
    return pl.DataFrame(
        rows, schema={key: pl.String, "n": pl.Int64, "accuracy": pl.Float64, "macro_f1": pl.Float64}
    )


def with_label_parts(pairs: pl.DataFrame) -> pl.DataFrame:
    """Add tumour type and contrast of truth and prediction, via the shared label parser."""
    names = pl.concat([pairs["true_class"], pairs["pred_class"]]).unique().drop_nulls().to_list()
    parsed = {name: parse_label(name) for name in names}
    tumor = {k: v.tumor_type for k, v in parsed.items()}
    contrast = {k: v.contrast for k, v in parsed.items()}
    return pairs.with_columns(
        true_tumor_type=pl.col("true_class").replace_strict(tumor, default=None),
        pred_tumor_type=pl.col("pred_class").replace_strict(tumor, default=None),
        true_contrast=pl.col("true_class").replace_strict(contrast, default=None),
        pred_contrast=pl.col("pred_class").replace_strict(contrast, default=None),
    )


def confusion_table(pairs: pl.DataFrame) -> pl.DataFrame:
    """Long-format confusion matrix: one row per (true, pred) pair that occurs, with its count."""
    return (
        pairs.group_by("true_class", "pred_class")
        .len("count")
        .with_columns(pl.col("count").cast(pl.Int64))
        .sort("true_class", "pred_class")
    )


def metric_tables(
    true_class: list[str] | pl.Series, pred_class: list[str] | pl.Series
) -> dict[str, pl.DataFrame]:
    """All tables for one set of labelled predictions (rows with a null on either side are left out)."""
    pairs = pl.DataFrame(
        {"true_class": true_class, "pred_class": pred_class},
        schema=[("true_class", pl.String), ("pred_class", pl.String)],
    ).drop_nulls()
    pairs = with_label_parts(pairs)
    tumor_pairs = pairs.select(true_class="true_tumor_type", pred_class="pred_tumor_type")
    per_tumor = per_class_table(tumor_pairs).rename({"class": "tumor_type"})
    per_contrast = (
        _grouped_table(pairs, "contrast")
        .join(
            pairs.group_by(contrast="true_contrast").agg(
                contrast_accuracy=(pl.col("true_contrast") == pl.col("pred_contrast")).mean()
            ),
            on="contrast",
            how="left",
        )
        .sort("contrast")
    )
    return {
        "summary": summary_table(pairs).with_columns(
            tumor_type_accuracy=pl.lit(_mean(pairs["true_tumor_type"] == pairs["pred_tumor_type"])),
            contrast_accuracy=pl.lit(_mean(pairs["true_contrast"] == pairs["pred_contrast"])),
        ),
        "per_class": per_class_table(pairs),
        "per_contrast": per_contrast,
        "per_tumor_type": per_tumor,
        "confusion": confusion_table(pairs),
    }


ECE_BINS = 15  # one bin count for every ECE we report: training summaries, scoring tables, the report


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-1 ECE with equal-width confidence bins."""
    confidence = np.asarray(confidence, np.float64)
    correct = np.asarray(correct, np.float64)
    if confidence.size == 0:
        return 0.0
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def confusion_heatmap(confusion: pl.DataFrame, classes: list[str]) -> bytes:
    """The row-normalised confusion heat map as PNG bytes, drawn with OpenCV (no plotting dependency): the one
    drawing of it, in the metrics folder and in the HTML report alike. Labels are drawn as plain text (a class
    name with `$` in it is not mathematics)."""
    import cv2

    index = {c: i for i, c in enumerate(classes)}
    n = len(classes)
    counts = np.zeros((n, n), np.float64)
    for t, p, c in confusion.select("true_class", "pred_class", "count").iter_rows():
        if t in index and p in index:
            counts[index[t], index[p]] += c
    rows = counts.sum(axis=1, keepdims=True)
    frac = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    cell, margin = 16, 170
    side = margin + n * cell + 10
    canvas = np.full((side, side, 3), 255, np.uint8)
    heat = cv2.applyColorMap((255 - frac * 255).astype(np.uint8), cv2.COLORMAP_BONE)
    canvas[margin : margin + n * cell, margin : margin + n * cell] = cv2.resize(
        heat, (n * cell, n * cell), interpolation=cv2.INTER_NEAREST
    )
    font = cv2.FONT_HERSHEY_SIMPLEX
    for i, name in enumerate(classes):
        y = margin + i * cell + cell - 4
        cv2.putText(canvas, name[:24], (4, y), font, 0.33, (0, 0, 0), 1, cv2.LINE_AA)
        label = np.full((cell, margin - 4, 3), 255, np.uint8)
        cv2.putText(label, name[:24], (2, cell - 4), font, 0.33, (0, 0, 0), 1, cv2.LINE_AA)
        rotated = cv2.rotate(label, cv2.ROTATE_90_COUNTERCLOCKWISE)
        x = margin + i * cell
        canvas[0 : margin - 4, x : x + cell] = rotated
    cv2.putText(canvas, "true (rows) vs predicted (columns)", (4, 14), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    ok, encoded = cv2.imencode(".png", canvas)
    if not ok:
        raise RuntimeError("could not encode the confusion heatmap")
    return encoded.tobytes()


def confusion_heatmap_png(confusion: pl.DataFrame, classes: list[str], path: Path) -> None:
    """confusion_heatmap, written atomically to path."""
    png = confusion_heatmap(confusion, classes)
    with atomic_path(path) as tmp:
        tmp.write_bytes(png)


def write_tables(
    tables: dict[str, pl.DataFrame], out_dir: Path, classes: list[str] | None = None
) -> list[Path]:
    """Each table as CSV and Parquet (atomic writes), plus the confusion heatmap when classes are given.

    The folder's OUTPUT_MARKER lists every file written here, before they are written, so that a later
    `--overwrite` removes exactly these and never a file someone else put beside them (score/outputs.py)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [f"{name}{suffix}" for name in tables for suffix in (".csv", ".parquet")]
    heatmap = bool(classes) and "confusion" in tables
    names += ["confusion.png"] if heatmap else []
    marker = out_dir / OUTPUT_MARKER
    listed = set(marker.read_text().split()) if marker.is_file() else set()
    write_text_atomic(marker, "\n".join(sorted(listed | set(names))) + "\n")
    written = []
    for name, table in tables.items():
        for suffix in (".csv", ".parquet"):
            path = out_dir / f"{name}{suffix}"
            with atomic_path(path) as tmp:
                table.write_csv(tmp) if suffix == ".csv" else table.write_parquet(tmp)
            written.append(path)
    if heatmap:
        png = out_dir / "confusion.png"
        confusion_heatmap_png(tables["confusion"], classes or [], png)
        written.append(png)
    return written


def tables_with_counts(
    labelled: pl.DataFrame, files: int, errors: int, skipped: int, flagged: int | None = None
) -> dict[str, pl.DataFrame] | None:
    """Metric tables of the labelled, scored rows (true_class, pred_class, ood, near_training); None without any.
    The summary also counts what was not scored, the rows flagged out of distribution (flagged: every scored
    row, labelled or not; ood_flagged_labelled: the labelled ones), with accuracy and macro-F1 without them (null
    when the check did not run), and the rows whose image the model trained on
    (in_training: the same file or a re-encoded copy), with accuracy and macro-F1 on the others (null without a
    training manifest): figures on images a model saw flatter it."""
    if not labelled.height:
        return None
    tables = metric_tables(labelled["true_class"], labelled["pred_class"])
    checked = labelled.drop_nulls("ood") if "ood" in labelled.columns else labelled.clear()
    without = _figures(checked.filter(~pl.col("ood")))
    known = labelled.drop_nulls("near_training") if "near_training" in labelled.columns else labelled.clear()
    unseen = _figures(known.filter(~pl.col("near_training")))
    tables["summary"] = tables["summary"].with_columns(
        files=pl.lit(files, pl.Int64),  # every count of every table is Int64 (issue 33: i32 beside i64)
        errors=pl.lit(errors, pl.Int64),
        skipped=pl.lit(skipped, pl.Int64),
        ood_flagged=pl.lit(flagged, pl.Int64),  # every scored row flagged, labelled or not
        ood_flagged_labelled=pl.lit(int(checked["ood"].sum()) if checked.height else None, pl.Int64),
        accuracy_without_ood=pl.lit(without[0], pl.Float64),
        macro_f1_without_ood=pl.lit(without[1], pl.Float64),
        in_training=pl.lit(int(known["near_training"].sum()) if known.height else None, pl.Int64),
        accuracy_unseen=pl.lit(unseen[0], pl.Float64),
        macro_f1_unseen=pl.lit(unseen[1], pl.Float64),
    )
    return tables


def _figures(rows: pl.DataFrame) -> tuple[float | None, float | None]:
    """(accuracy, macro-F1) of labelled rows; (None, None) without any."""
    if not rows.height:
        return None, None
    summary = metric_tables(rows["true_class"], rows["pred_class"])["summary"]
    return summary["accuracy"][0], summary["macro_f1"][0]


def training_overlap(summary: pl.DataFrame) -> str | None:
    """The warning a run prints when labelled images were in the model's training data; None when none were."""
    row = summary.row(0, named=True)
    seen = row.get("in_training")
    if not seen:
        return None
    others = row["n"] - seen
    tail = (
        f"on the {others} others: accuracy {row['accuracy_unseen']:.3f}, macro-F1 {row['macro_f1_unseen']:.3f}"
        if others
        else "no image here is new to it"
    )
    return (
        f"{seen} of {row['n']} labelled images were in the model's training data (the same file or a re-encoded "
        f"copy): the figures above flatter it; {tail} (summary: in_training, accuracy_unseen, macro_f1_unseen)"
    )
