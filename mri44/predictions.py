"""The prediction rows every part of mri44 writes and reads: the scorer (local and Ray), the Python API, and
training's val/test predictions, so `mri-report` reads any of them.

One row per file: path, status, error, pred_class, pred_tumor_type, pred_contrast, confidence, the tumour-type and
contrast marginals, top-k classes and probabilities, and true_class from the nearest class-named folder.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from mri44.labels import parse_label


def printable_path(name: str) -> str:
    """A file name that is not valid UTF-8 (undecodable bytes arrive as surrogates) with those bytes written as
    \\xNN escapes: the row is kept and the table can be written, where the raw name made the write crash."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def prediction_frame(
    rel_paths: list[str],
    probs: np.ndarray,
    ok: np.ndarray,
    errors: list[str | None],
    class_names: list[str],
    top_k: int,
    ood_scores: np.ndarray | None = None,
    ood_threshold: float | None = None,
    tags: list[dict | None] | None = None,
) -> pl.DataFrame:
    """One row per file: status, prediction, top-k, tumour/contrast marginals, the out-of-distribution score and
    flag (mri44.ood; null when the model has no reference set or the check is off), and the folder's label if
    known."""
    classes = np.asarray(class_names)
    parsed = [parse_label(c) for c in class_names]
    tumors = sorted({p.tumor_type for p in parsed})
    contrasts = sorted({p.contrast for p in parsed})
    tumor_of = np.array([tumors.index(p.tumor_type) for p in parsed])
    contrast_of = np.array([contrasts.index(p.contrast) for p in parsed])
    tumor_probs = probs @ np.eye(len(tumors))[tumor_of]
    contrast_probs = probs @ np.eye(len(contrasts))[contrast_of]
    k = min(top_k, len(classes))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    pred = order[:, 0]
    rows = np.arange(len(rel_paths))
    predicted: dict[str, pl.Series] = {
        "pred_class": pl.Series(classes[pred]),
        "pred_tumor_type": pl.Series(np.asarray(tumors)[tumor_of[pred]]),
        "pred_contrast": pl.Series(np.asarray(contrasts)[contrast_of[pred]]),
        "confidence": pl.Series(probs[rows, pred].astype(np.float64)),
        "pred_tumor_type_prob": pl.Series(tumor_probs[rows, tumor_of[pred]].astype(np.float64)),
        "pred_contrast_prob": pl.Series(contrast_probs[rows, contrast_of[pred]].astype(np.float64)),
    }
    for j in range(k):
        predicted[f"top{j + 1}_class"] = pl.Series(classes[order[:, j]])
        predicted[f"top{j + 1}_prob"] = pl.Series(probs[rows, order[:, j]].astype(np.float64))
    scores = np.full(len(rel_paths), np.nan) if ood_scores is None else np.asarray(ood_scores, np.float64)
    predicted["ood_score"] = pl.Series(scores, dtype=pl.Float64).fill_nan(None)
    flagged = pl.col("ood_score") > ood_threshold if ood_threshold is not None else pl.lit(None, pl.Boolean)
    frame = pl.DataFrame(
        {"path": rel_paths, "ok": ok, "error": pl.Series(errors, dtype=pl.String), **predicted}
    ).with_columns(ood=pl.when(pl.col("ood_score").is_not_null()).then(flagged))
    # The label is the nearest enclosing folder named like a class, so CLASS/case01/series2/x.jpg is labelled
    # CLASS, as training labels every file under DATA/CLASS/ (a run's folders are its classes).
    folders = pl.col("path").str.split("/").list.head(pl.col("path").str.count_matches("/"))
    label = folders.list.eval(pl.element().filter(pl.element().is_in(list(class_names)))).list.last()
    return frame.select(
        "path",
        status=pl.when("ok").then(pl.lit("ok")).otherwise(pl.lit("error")),
        error="error",
        # Predictions of files that failed are meaningless zeros: null them.
        **{name: pl.when("ok").then(pl.col(name)) for name in [*predicted, "ood"]},
        true_class=label,
    ).hstack(tag_columns(tags, len(rel_paths)))


TAG_SCHEMA = {
    "study_uid": pl.String,
    "series_uid": pl.String,
    "instance_number": pl.Int64,
    "series_description": pl.String,
}


def tag_columns(tags: list[dict | None] | None, n: int) -> pl.DataFrame:
    """The series columns of n rows (mri44.dicom.dicom_tags, or a NIfTI volume and slice): null for plain images."""
    rows = tags if tags is not None else [None] * n
    return pl.DataFrame(
        {name: [t.get(name) if t else None for t in rows] for name in TAG_SCHEMA}, schema=TAG_SCHEMA
    )


def series_table(frame: pl.DataFrame, probs: np.ndarray, class_names: list[str]) -> pl.DataFrame | None:
    """One row per DICOM series (rows of `frame` with a series_uid and status ok): the class whose probability,
    averaged over the series' slices, is highest, that mean probability, the slice count, the slice most
    confident in that class, and the folder label when all its slices share one. None when no row has a series."""
    scored = (frame["status"] == "ok") & frame["series_uid"].is_not_null()
    if not scored.any():
        return None
    rows = np.flatnonzero(scored.to_numpy())
    keys = frame["series_uid"].to_numpy()[rows]
    out = []
    for uid in sorted(set(keys)):
        members = rows[keys == uid]
        mean = probs[members].mean(0)
        k = int(mean.argmax())
        best = members[int(probs[members, k].argmax())]
        labels = frame["true_class"].gather(members).unique().to_list()
        first = frame.row(int(members[0]), named=True)
        out.append(
            {
                "study_uid": first["study_uid"],
                "series_uid": uid,
                "series_description": first["series_description"],
                "slices": len(members),
                "pred_class": class_names[k],
                "confidence": float(mean[k]),
                "most_confident_slice": frame["path"][int(best)],
                "true_class": labels[0] if len(labels) == 1 else None,
            }
        )
    return pl.DataFrame(out, schema_overrides={"true_class": pl.String, "series_description": pl.String})


def series_from_rows(predictions: pl.DataFrame) -> pl.DataFrame | None:
    """series_table from what a predictions table holds (the report, the Ray engine's parts): each slice's top-k
    probabilities, the rest counted as zero, so with --top-k 3 of 44 classes the mean is a close lower bound; the
    local engine's series.csv, made from every probability, is the exact one."""
    if "series_uid" not in predictions.columns or predictions["series_uid"].is_null().all():
        return None
    tops = sorted(c for c in predictions.columns if c.startswith("top") and c.endswith("_class"))
    names = sorted({n for c in tops for n in predictions[c].drop_nulls().to_list()})
    index = {n: i for i, n in enumerate(names)}
    probs = np.zeros((predictions.height, len(names)), np.float64)
    for c in tops:  # k columns, each placed in one vectorised step
        column = (
            predictions[c].replace_strict(index, default=-1, return_dtype=pl.Int64).fill_null(-1).to_numpy()
        )
        rows = np.flatnonzero(column >= 0)
        probs[rows, column[rows]] = predictions[c.replace("_class", "_prob")].fill_null(0.0).to_numpy()[rows]
    return series_table(predictions, probs, names)
