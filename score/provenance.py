"""Where a predictions table came from, stored with it: the model (name, SHA-256 of the file, architecture, input
size, precision), the input root, the options that change rows, versions, time and counts.

A Parquet file carries it as key-value metadata under PROVENANCE_KEY; a CSV file in a sidecar next to it
(`preds.csv.mri44.json`); an `--engine ray` parts folder in its run record (mri44-run.json). `mri-report` reads it
to find the images and to name the model, so a report made later says what it reports on.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from mri44.errors import MRI44Error

if TYPE_CHECKING:
    from mri44.onnx_meta import ModelMetadata

    from .options import ScoreOptions

PROVENANCE_KEY = "mri44.provenance"
# An --engine ray parts folder's record: this provenance plus the identity a --resume must match (ray_engine).
RUN_FILE = "mri44-run.json"


def sidecar(out: Path) -> Path:
    """The CSV predictions file's provenance file."""
    return out.with_name(out.name + ".mri44.json")


def model_identity(model: Path, meta: ModelMetadata) -> dict[str, Any]:
    from mri44.files import checkpoint_path, file_sha256

    return {
        "name": model.name,
        "path": str(model.resolve()),
        "sha256": file_sha256(checkpoint_path(model)),
        "arch": meta.arch,
        "input_size": meta.preprocess.size,
        "precision": str(meta.export.get("precision", "fp32")),
        "classes": len(meta.classes),
        "class_names": list(meta.classes),  # the order of the predictions' `probs` column
        "ood_threshold": meta.ood.threshold if meta.ood is not None else None,  # the model's own
    }


def provenance(
    model: Path, meta: ModelMetadata, input_root: str, options: ScoreOptions, counts: dict[str, int]
) -> dict[str, Any]:
    import onnxruntime

    from mri44.version import __version__

    return {
        "model": model_identity(model, meta),
        "input": input_root,
        "options": {
            "top_k": options.top_k,
            "max_pixels": options.max_pixels,
            "max_frames": options.max_frames,
            "ood": options.ood,
            "ood_threshold": options.ood_threshold,
            "device": options.device,
            "decode": options.decode,
        },
        "versions": {
            "mri44": __version__,
            "python": platform.python_version(),
            "polars": pl.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "time": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "counts": counts,
    }


class ProvenanceError(MRI44Error):
    """A provenance or run record that exists but does not hold what mri-score writes."""


# What each recorded field must be (mri-score writes exactly these; any of them may be absent in older files).
RECORD_FIELDS: dict[str, type | tuple[type, ...]] = {
    "model": dict,
    "input": str,
    "options": dict,
    "versions": dict,
    "time": str,
    "counts": dict,
}
MODEL_FIELDS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "path": str,
    "sha256": str,
    "arch": str,
    "input_size": int,
    "precision": str,
    "classes": int,
    "class_names": list,
}


def checked_record(record: Any, source: Path) -> dict[str, Any]:
    """record if it has the shape mri-score writes, else a ProvenanceError naming the first field that does not
    (a list, a nested value or a number where a name belongs crashed the commands that read them)."""

    def wrong(where: str, value: Any, kind: type | tuple[type, ...]) -> bool:
        expected = kind if isinstance(kind, tuple) else (kind,)
        return value is not None and (
            not isinstance(value, expected) or isinstance(value, bool) and bool not in expected
        )

    problem = None
    if not isinstance(record, dict):
        problem = f"a {type(record).__name__}, not an object"
    else:
        fields = [(name, record.get(name), kind) for name, kind in RECORD_FIELDS.items()]
        model = record.get("model")
        if isinstance(model, dict):
            fields += [(f"model.{name}", model.get(name), kind) for name, kind in MODEL_FIELDS.items()]
        problem = next(
            (f"{name} is {type(value).__name__}" for name, value, kind in fields if wrong(name, value, kind)),
            None,
        )
    if problem is not None:
        raise ProvenanceError(
            f"{source}: its provenance record is malformed ({problem}): it was not written by mri-score, or was "
            "changed since; score the images again to write a new one"
        )
    return record


def read_provenance(predictions: Path) -> dict[str, Any] | None:
    """The provenance stored with a predictions file or parts folder; None when there is none (older files, or
    files that mri-score did not write). A record that is there but malformed is a ProvenanceError."""
    try:
        if predictions.is_dir():
            record = predictions / RUN_FILE
            text = record.read_text(encoding="utf-8") if record.is_file() else None
        elif predictions.suffix.lower() == ".parquet":
            text = pl.read_parquet_metadata(predictions).get(PROVENANCE_KEY)
        else:
            side = sidecar(predictions)
            text = side.read_text(encoding="utf-8") if side.is_file() else None
        loaded = json.loads(text) if text else None
    except (OSError, ValueError, pl.exceptions.PolarsError):
        return None
    return None if loaded is None else checked_record(loaded, predictions)
