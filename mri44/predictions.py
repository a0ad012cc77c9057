"""The prediction rows every part of mri44 writes and reads: the scorer (local and Ray), the Python API, and
training's val/test predictions, so `mri-report` reads any of them.

One row per image (a file, or one frame or slice of it): the columns of PREDICTION_SCHEMA, said once here and read
by the writer, the report, the API and the docs' test.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from mri44.labels import parse_label
from mri44.ood import OodRows


def printable_path(name: str) -> str:
    """A file name that is not valid UTF-8 (undecodable bytes arrive as surrogates) with those bytes written as
    \\xNN escapes: the row is kept and the table can be written, where the raw name made the write crash."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


TAG_SCHEMA = {
    "study_uid": pl.String,
    "series_uid": pl.String,
    "instance_number": pl.Int64,
    "series_description": pl.String,
    "modality": pl.String,  # DICOM Modality: MR for the images this tool is for
    "image_type": pl.String,  # DICOM ImageType, its values joined by backslashes
    "body_part": pl.String,  # DICOM BodyPartExamined
}
SCORED_MODALITY = (
    "MR"  # a DICOM object of any other modality (CT, CR, US, ...) is flagged, whatever its features
)

# The predictions' columns in order. Two entries stand for columns whose number or width comes from the run:
# TOP_K (top{j}_class: String and top{j}_prob: Float64 for j = 1..--top-k) and `probs` (every class's
# probability, float32, in the model's class order: as wide as the model has classes).
TOP_K = "top{j}_class, top{j}_prob"
PREDICTION_SCHEMA: dict[str, pl.DataType | str] = {
    "path": pl.String(),  # the file, relative to the scored folder
    "frame": pl.Int64(),  # the frame of a multi-frame DICOM file, from 1; null otherwise
    "slice": pl.Int64(),  # the axial slice of a NIfTI volume, from 1 (foot first); null otherwise
    "status": pl.String(),  # ok or error
    "error": pl.String(),  # why the image could not be scored
    "pred_class": pl.String(),
    "pred_tumor_type": pl.String(),
    "pred_contrast": pl.String(),
    "confidence": pl.Float64(),  # the predicted class's probability (temperature-scaled)
    "pred_tumor_type_prob": pl.Float64(),  # marginals over the classes
    "pred_contrast_prob": pl.Float64(),
    TOP_K: "per --top-k",
    "ood_score": pl.Float64(),  # 1 - cosine similarity to the nearest training image's features (mri44.ood)
    "turned_score": pl.Float64(),  # 1 - P(upright) from the model's orientation probe (mri44.orientation)
    "detail_score": pl.Float64(),  # fine detail of the model's input (mri44.detail): low for blurred or tiny images
    "border_score": pl.Float64(),  # how bright the input's border is (mri44.detail): high for photographs, screenshots
    "ood": pl.Boolean(),  # flagged: a check above (detail: under) its threshold, or a DICOM modality other than MR
    # why: "modality CT", "feature distance", "turned", "low detail", "bright border", joined by "; "; null if not
    # flagged
    "ood_reason": pl.String(),
    "seen_in_training": pl.Boolean(),  # the model trained on this very file (its bytes); null: no manifest
    "near_training": pl.Boolean(),  # ... or on the same picture re-encoded, resized or turned grey (mri44.fingerprint)
    "true_class": pl.String(),  # the nearest enclosing folder named like a class
    **{name: dtype() for name, dtype in TAG_SCHEMA.items()},
    "note": pl.String(),  # what else a reader should know: frames of this file left out (--max-frames), say
    "probs": "per class",
}


def prediction_schema(top_k: int, classes: int) -> pl.Schema:
    """The exact schema of a predictions table with top_k pairs from a model of `classes` classes."""
    columns: dict[str, pl.DataType] = {}
    for name, dtype in PREDICTION_SCHEMA.items():
        if name == TOP_K:
            for j in range(1, top_k + 1):
                columns |= {f"top{j}_class": pl.String(), f"top{j}_prob": pl.Float64()}
        elif name == "probs":
            columns[name] = pl.Array(pl.Float32, classes)
        else:
            assert isinstance(dtype, pl.DataType)
            columns[name] = dtype
    return pl.Schema(columns)


def for_csv(predictions: pl.DataFrame) -> pl.DataFrame:
    """A predictions table as a CSV file holds it: every column but `probs` (a list per row, which CSV cannot
    hold; the Parquet output keeps it)."""
    return predictions.drop("probs", strict=False)


def prediction_frame(
    rel_paths: list[str],
    probs: np.ndarray,
    ok: np.ndarray,
    errors: list[str | None],
    class_names: list[str],
    top_k: int,
    ood: OodRows | None = None,
    tags: list[dict | None] | None = None,
    members: dict[str, list[int | None]] | None = None,
    training: tuple[np.ndarray | None, np.ndarray | None] = (None, None),
) -> pl.DataFrame:
    """One row per image: status, prediction, top-k, tumour/contrast marginals, the out-of-distribution score and
    flags (mri44.ood; null when the model has no reference set or the check is off; turned_score, detail_score and
    border_score null when it has no orientation probe, detail floor or border ceiling), the folder's label if known, the series tags and every
    class's probability. members: the frame and slice columns (mri44.readers.member_columns), null when not given;
    training: (seen_in_training, near_training) per row (mri44.fingerprint.training_flags), null when the model
    has no manifest."""
    k = min(top_k, len(class_names))
    predicted = _class_columns(probs, class_names, k)
    predicted |= _ood_scores(ood, len(rel_paths))
    seen, near = (
        pl.Series(v, dtype=pl.Boolean)
        if v is not None
        else pl.repeat(None, len(rel_paths), dtype=pl.Boolean, eager=True)
        for v in training
    )
    notes = pl.Series("note", (members or {}).get("note") or [None] * len(rel_paths), pl.String)
    numbered = {
        name: pl.Series(name, (members or {}).get(name) or [None] * len(rel_paths), pl.Int64)
        for name in ("frame", "slice")
    }
    frame = pl.DataFrame(
        {"path": rel_paths, **numbered, "ok": ok, "error": pl.Series(errors, dtype=pl.String), **predicted}
    ).with_columns(
        by_features=_above("ood_score", ood.threshold if ood else None),
        by_turn=_above("turned_score", ood.turned_threshold if ood else None),
        by_detail=_below("detail_score", ood.detail_threshold if ood else None),
        by_border=_above("border_score", ood.border_threshold if ood else None),
    )
    # The label is the nearest enclosing folder named like a class, so CLASS/case01/series2/x.jpg is labelled
    # CLASS, as training labels every file under DATA/CLASS/ (a run's folders are its classes).
    folders = pl.col("path").str.split("/").list.head(pl.col("path").str.count_matches("/"))
    label = folders.list.eval(pl.element().filter(pl.element().is_in(list(class_names)))).list.last()
    rows_out = (
        frame.select(
            "path",
            "frame",
            "slice",
            status=pl.when("ok").then(pl.lit("ok")).otherwise(pl.lit("error")),
            error="error",
            # Predictions of files that failed are meaningless zeros: null them.
            **{name: pl.when("ok").then(pl.col(name)) for name in [*predicted, *CHECKS]},
            seen_in_training=pl.when("ok").then(seen),
            near_training=pl.when("ok").then(near),
            note=notes,
            true_class=label,
        )
        .hstack(tag_columns(tags, rel_paths))
        .with_columns(probs=pl.when(pl.col("status") == "ok").then(pl.Series(probs.astype(np.float32))))
    )
    return with_flags(rows_out).select(prediction_schema(k, len(class_names)).names())


def _class_columns(probs: np.ndarray, class_names: list[str], k: int) -> dict[str, pl.Series]:
    """The predicted class, its tumour type and contrast with their marginal probabilities, and the top k."""
    classes = np.asarray(class_names)
    parsed = [parse_label(c) for c in class_names]
    tumors = sorted({p.tumor_type for p in parsed})
    contrasts = sorted({p.contrast for p in parsed})
    tumor_of = np.array([tumors.index(p.tumor_type) for p in parsed])
    contrast_of = np.array([contrasts.index(p.contrast) for p in parsed])
    tumor_probs = probs @ np.eye(len(tumors))[tumor_of]
    contrast_probs = probs @ np.eye(len(contrasts))[contrast_of]
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    pred = order[:, 0]
    rows = np.arange(len(probs))
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
    return predicted


def _ood_scores(ood: OodRows | None, n: int) -> dict[str, pl.Series]:
    """ood_score, turned_score, detail_score and border_score (null where not scored, or when the check is
    absent)."""
    nothing = np.full(n, np.nan)
    values = {
        "ood_score": ood.distance if ood else None,
        "turned_score": ood.turned if ood else None,
        "detail_score": ood.detail if ood else None,
        "border_score": ood.border if ood else None,
    }
    return {
        column: pl.Series(nothing if v is None else np.asarray(v, np.float64), dtype=pl.Float64).fill_nan(
            None
        )
        for column, v in values.items()
    }


def _above(column: str, threshold: float | None) -> pl.Expr:
    """The check's flag: null where its score is null or it has no threshold."""
    flag = pl.col(column) > threshold if threshold is not None else pl.lit(None, pl.Boolean)
    return pl.when(pl.col(column).is_not_null()).then(flag)


def _below(column: str, threshold: float | None) -> pl.Expr:
    """The detail check's flag: under its floor; null where its score is null or it has no floor."""
    flag = pl.col(column) < threshold if threshold is not None else pl.lit(None, pl.Boolean)
    return pl.when(pl.col(column).is_not_null()).then(flag)


# The image checks' flag columns and the reason each gives in ood_reason, in the order reasons are listed.
CHECKS = {
    "by_features": "feature distance",
    "by_turn": "turned",
    "by_detail": "low detail",
    "by_border": "bright border",
}


def with_flags(frame: pl.DataFrame) -> pl.DataFrame:
    """ood and ood_reason from the checks: the feature distance, the orientation probe, the image's fine detail
    and its border (CHECKS; each null when it did not run) and the DICOM modality (null for other files). A row is
    flagged when any says so; its flag is null only when none could speak, and always for error rows."""
    other = pl.col("modality").is_not_null() & (pl.col("modality") != SCORED_MODALITY)
    said = {column: pl.col(column).fill_null(False) for column in CHECKS}
    reasons = pl.concat_list(
        pl.when(other).then(pl.lit("modality ") + pl.col("modality")),
        *(pl.when(said[column]).then(pl.lit(reason)) for column, reason in CHECKS.items()),
    ).list.drop_nulls()
    spoken = pl.any_horizontal(pl.col(*CHECKS, "modality").is_not_null())
    ok = pl.col("status") == "ok"
    return frame.with_columns(
        ood=pl.when(ok & other).then(True).when(ok & spoken).then(pl.any_horizontal(*said.values())),
        ood_reason=pl.when(ok & (reasons.list.len() > 0)).then(reasons.list.join("; ")),
    )


def tag_columns(tags: list[dict | None] | None, rel_paths: list[str]) -> pl.DataFrame:
    """The series columns (mri44.dicom.tags_of, or a NIfTI slice's number): null for plain images. A file of
    several images without a series UID of its own (a NIfTI volume, whose tags number its slices) is its own
    series, keyed by its path."""
    rows = tags if tags is not None else [None] * len(rel_paths)
    values = {name: [t.get(name) if t else None for t in rows] for name in TAG_SCHEMA}
    values["series_uid"] = [  # a member of a file of several images without its own series UID: the file
        (t.get("series_uid", path) if "instance_number" in t else t.get("series_uid")) if t else None
        for t, path in zip(rows, rel_paths, strict=True)
    ]
    return pl.DataFrame(values, schema=TAG_SCHEMA)


def series_table(predictions: pl.DataFrame, class_names: list[str] | None = None) -> pl.DataFrame | None:
    """One row per series (rows with a series_uid and status ok: a DICOM series, a NIfTI volume): the class whose
    probability, averaged over the series' images, is highest, that mean probability, the image count, the image
    most confident in that class, the folder label when all its images share one, the share of its images flagged
    out of distribution (ood_fraction) and the series' own flag (ood: most of them are). None when no row has a
    series.

    The one series function of both engines and the report: it reads the table alone. With class_names (the
    model's class order) and the table's `probs` column it is exact; a table without them (a CSV, an older
    file) gives each image its top-k probabilities, the rest counted as zero: a close lower bound."""
    if "series_uid" not in predictions.columns:
        return None
    scored = (predictions["status"] == "ok") & predictions["series_uid"].is_not_null()
    if not scored.any():
        return None
    width = getattr(predictions.schema.get("probs"), "size", None)  # an Array column's width
    if class_names is not None and width == len(class_names):
        names = list(class_names)
        probs = np.zeros((predictions.height, len(names)), np.float64)
        rows = np.flatnonzero(scored.to_numpy())
        probs[rows] = np.stack(predictions["probs"].gather(rows).to_list())
    else:
        names, probs = _top_k_probabilities(predictions)
    rows = np.flatnonzero(scored.to_numpy())
    keys = predictions["series_uid"].to_numpy()[rows]
    # Rows grouped by series in one sort (the table grows linearly: a loop over series, each scanning every row,
    # took 39 s for 40,000 one-slice series).
    order = np.argsort(keys, kind="stable")
    members, keys = rows[order], keys[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    counts = np.diff(np.r_[starts, len(members)])
    mean = np.add.reduceat(probs[members], starts, axis=0) / counts[:, None]
    best_class = mean.argmax(1)
    series_of = np.repeat(np.arange(len(starts)), counts)
    strength = probs[members, best_class[series_of]]
    # The most confident member of each series: the first row of its series after sorting by -strength.
    by_strength = np.lexsort((-strength, series_of))
    best = members[by_strength[starts]]
    first = predictions[members[starts]]
    shown = [
        shown_path(row) for row in predictions[best].select("path", "frame", "slice").iter_rows(named=True)
    ]
    flags = (
        predictions["ood"].gather(members)
        if "ood" in predictions.columns
        else pl.repeat(None, len(members), dtype=pl.Boolean, eager=True)
    )
    labels = (
        pl.DataFrame({"series": series_of, "label": predictions["true_class"].gather(members), "ood": flags})
        .group_by("series")
        .agg(
            single=pl.col("label").n_unique() == 1,
            label=pl.col("label").first(),
            ood_fraction=pl.col("ood").cast(pl.Float64).mean(),  # of the images the checks spoke for
        )
        .sort("series")
    )
    return pl.DataFrame(
        {
            "study_uid": first["study_uid"],
            "series_uid": pl.Series(keys[starts], dtype=pl.String),
            "series_description": first["series_description"],
            "slices": counts.astype(np.int64),
            "pred_class": np.asarray(names)[best_class],
            "confidence": mean[np.arange(len(starts)), best_class].astype(np.float64),
            "most_confident_slice": shown,
            "true_class": labels.select(pl.when("single").then("label"))["label"],
            "ood_fraction": labels["ood_fraction"],
            # flagged when most of its images are: a volume of noise, a CT series
            "ood": labels.select(pl.col("ood_fraction") > 0.5)["ood_fraction"],
        },
        schema_overrides={
            "true_class": pl.String,
            "series_description": pl.String,
            "ood_fraction": pl.Float64,
        },
    )


def shown_path(row: dict) -> str:
    """A row's image as a person names it: the path, and its frame or slice when it is one of several."""
    for column in ("frame", "slice"):
        if row.get(column) is not None:
            return f"{row['path']} ({column} {row[column]})"
    return str(row["path"])


def _top_k_probabilities(predictions: pl.DataFrame) -> tuple[list[str], np.ndarray]:
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
    return names, probs
