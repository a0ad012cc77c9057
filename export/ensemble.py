"""The ensemble graph (mri44/ensemble.py) measured against its members scored separately: the gate a recipe or
file passes before it is written (scripts/ensemble_onnx.py). The in-graph resize (linear, from the first
member's input) differs slightly from the second member's own (area, from the file), so the figures are real
differences, not rounding."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mri44.ensemble import EnsembleError
from mri44.onnx_meta import INPUT_NAME, OUTPUT_NAME, ModelMetadata
from mri44.preprocess import PreprocessSpec


def ensemble_parity(
    model: Any, meta: ModelMetadata, members: tuple[Path, Path], images: list[Path], batch: int = 32
) -> dict[str, float]:
    """The ensemble file against its members scored separately, each with its own preprocessing from the file
    (the geometric mean as scripts/cv_ensemble.py computes it): top-1 agreement and the largest difference in
    any class probability, at the ensemble's temperature, on real images."""
    from mri44.calibration import softmax
    from mri44.onnx_meta import read_metadata
    from mri44.preprocess import normalize
    from mri44.runtime import make_session
    from mri44.samples import decodable_pixels

    def logits(session: Any, spec: PreprocessSpec) -> np.ndarray:
        pixels, _ = decodable_pixels(images, spec)
        out = [
            session.run([OUTPUT_NAME], {INPUT_NAME: normalize(pixels[i : i + batch], spec)})[0]
            for i in range(0, len(pixels), batch)
        ]
        return np.concatenate(out).astype(np.float64)

    joint = logits(make_session(model.SerializeToString(), "cpu"), meta.preprocess)
    separate = np.mean(
        [
            np.log(softmax(logits(make_session(path, "cpu"), read_metadata(path).preprocess)))
            for path in members
        ],
        axis=0,
    )
    if joint.shape != separate.shape:
        raise EnsembleError("the members decode different images: parity cannot pair them")
    p, q = softmax(joint, meta.temperature), softmax(separate, meta.temperature)
    return {
        "images": float(len(p)),
        "top1_agreement": float((p.argmax(1) == q.argmax(1)).mean()),
        "max_prob_diff": float(np.abs(p - q).max()),
    }
