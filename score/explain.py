"""Grad-CAM overlays (torchcam's GradCAM on the last residual stage) for the report's gallery images: where in
the slice the network's evidence for its predicted class lies. Needs the checkpoint (PyTorch), not the ONNX file.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import polars as pl
import torch

from mri44.errors import SettingError
from mri44.imageio import ImageDecodeError
from mri44.model import load_checkpoint, model_from_checkpoint
from mri44.preprocess import PreprocessSpec, load_pixels, normalize

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


def grad_cam(
    model: torch.nn.Module, spec: PreprocessSpec, pixels: np.ndarray, class_index: int
) -> np.ndarray:
    """The Grad-CAM map (S, S, 0..1) of class_index for one image's model pixels."""
    from torchcam.methods import GradCAM

    extractor = GradCAM(model, target_layer="layer4")
    try:
        x = torch.from_numpy(normalize(pixels, spec))
        scores = model(x)
        (cam,) = extractor(class_index, scores)
    finally:
        extractor.remove_hooks()
    small = np.asarray(cam[0].detach().float().numpy(), np.float32)
    heat = np.asarray(cv2.resize(small, (spec.size, spec.size), interpolation=cv2.INTER_LINEAR), np.float32)
    return (heat - heat.min()) / max(float(heat.max() - heat.min()), 1e-8)


def gallery_overlays(
    predictions: pl.DataFrame, root: Path, checkpoint: Path, per_gallery: int
) -> dict[str, str]:
    """Data URIs of Grad-CAM overlays, by relative path, for the first per_gallery images of each gallery."""
    ckpt = load_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt)
    spec = PreprocessSpec.from_dict(ckpt["preprocess"])
    index = {name: i for i, name in enumerate(ckpt["classes"])}
    out: dict[str, str] = {}
    for _, _, _, rows in gallery_rows(predictions):
        for row in rows.head(per_gallery).iter_rows(named=True):
            if row["pred_class"] not in index:
                raise SettingError(
                    f"{checkpoint} does not know the predicted class {row['pred_class']!r}: wrong checkpoint?"
                )
            try:
                pixels = load_pixels(root / row["path"], spec)
            except ImageDecodeError:
                continue
            out[row["path"]] = data_uri(
                overlay(pixels, grad_cam(model, spec, pixels, index[row["pred_class"]]))
            )
    return out
