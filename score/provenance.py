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


def read_provenance(predictions: Path) -> dict[str, Any] | None:
    """The provenance stored with a predictions file or parts folder; None when there is none (older files, or
    files that mri-score did not write). Never raises for a file that merely lacks it."""
    try:
        if predictions.is_dir():
            record = predictions / RUN_FILE
            return json.loads(record.read_text(encoding="utf-8")) if record.is_file() else None
        if predictions.suffix.lower() == ".parquet":
            text = pl.read_parquet_metadata(predictions).get(PROVENANCE_KEY)
            return json.loads(text) if text else None
        side = sidecar(predictions)
        return json.loads(side.read_text(encoding="utf-8")) if side.is_file() else None
    except (OSError, ValueError, pl.exceptions.PolarsError):
        return None
