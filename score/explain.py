"""Class activation maps over the report's gallery images: where in the slice the network's evidence for its
predicted class lies. Works with any model mri-score runs, the shipped ONNX files included: the map is the last
stage's feature map weighted by the classifier's row for the class (mri44.cam; for a ResNet this equals
Grad-CAM, checked against torchcam in tests/test_report.py).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import polars as pl

from mri44.cam import class_activation_map, classifier_weights
from mri44.errors import SettingError
from mri44.imageio import ImageDecodeError
from mri44.predictions import shown_path
from mri44.preprocess import load_pixels, normalize
from mri44.readers import inside, row_item

from .report import data_uri, gallery_rows


def overlay(pixels: np.ndarray, heat: np.ndarray) -> bytes:
    """uint8 model pixels (S, S, C) with a jet-coloured heat map (S, S, 0..1) blended over them, as PNG."""
    base = pixels[..., 0] if pixels.shape[-1] == 1 else cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)
    colour = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)
    blended = cv2.addWeighted(cv2.cvtColor(base, cv2.COLOR_GRAY2BGR), 0.55, colour, 0.45, 0)
    ok, png = cv2.imencode(".png", blended)
    if not ok:
        raise ValueError("could not encode the overlay")
    return png.tobytes()


def gallery_overlays(predictions: pl.DataFrame, root: Path, model: Path, per_gallery: int) -> dict[str, str]:
    """Data URIs of class activation map overlays, by shown path (mri44.predictions.shown_path), for the first per_gallery images of each
    gallery. model: the ONNX file, checkpoint or run folder that made the predictions (run on the CPU)."""
    from .backends import open_backend

    backend = open_backend(model, "cpu")
    if backend.run_features is None:
        raise SettingError(
            f"{model} has no feature-map output (exported before it existed): re-export it with onnx-export"
        )
    weights = classifier_weights(model)
    spec, index = backend.meta.preprocess, {name: i for i, name in enumerate(backend.meta.classes)}
    out: dict[str, str] = {}
    for _, _, _, rows in gallery_rows(predictions):
        for row in rows.head(per_gallery).iter_rows(named=True):
            if row["pred_class"] not in index:
                raise SettingError(
                    f"{model} does not know the predicted class {row['pred_class']!r}: wrong model?"
                )
            item = row_item(root, row)
            if not inside(root, item.path):  # never a map of a file outside the folder the report shows
                continue
            try:
                pixels = load_pixels(item, spec)
            except ImageDecodeError:
                continue
            _, features = backend.run_features(normalize(pixels, spec))
            heat = class_activation_map(features[0], weights, index[row["pred_class"]], spec.size)
            out[shown_path(row)] = data_uri(overlay(pixels, heat))
    return out
