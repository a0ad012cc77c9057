"""The preprocessing spec on torch tensors, on any device: the twin of mri44.preprocess for pixels that are
already tensors (the training cache, nvJPEG output). Used by the training loop, the distillation teacher and the
scorer's on-device JPEG path.

Resizing follows OpenCV's conventions (half-pixel centres; INTER_AREA as box averaging when shrinking, linear when
enlarging; round to nearest), so on-device preprocessing lands within a grey level or two of the CPU path's; the
scorer's tests bound the difference and the resulting top-1 agreement.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from mri44.preprocess import PreprocessSpec


def to_input(batch_u8: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """uint8-valued (B, C, H, W) -> normalised float (B, 3, H, W), the spec's x * scale + bias."""
    x = batch_u8.float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x * scale.view(1, 3, 1, 1) + bias.view(1, 3, 1, 1)


def to_channels(image: torch.Tensor, channels: str) -> torch.Tensor:
    """uint8 (C, H, W), C in {1, 3} -> the spec's channels; grey with OpenCV's fixed-point RGB2GRAY weights."""
    if channels == "grey":
        if image.shape[0] == 1:
            return image
        r, g, b = image.int().unbind(0)
        return ((r * 4899 + g * 9617 + b * 1868 + 8192) >> 14).to(torch.uint8)[None]
    return image.expand(3, -1, -1) if image.shape[0] == 1 else image


def _area_weights(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in): output pixel i averages input span [i * s, (i + 1) * s), s = n_in / n_out, partial pixels
    weighted by their overlap (OpenCV's INTER_AREA when shrinking)."""
    scale = n_in / n_out
    start = torch.arange(n_out, dtype=torch.float64)[:, None] * scale
    j = torch.arange(n_in, dtype=torch.float64)[None, :]
    overlap = (torch.minimum(j + 1, start + scale) - torch.maximum(j, start)).clamp(min=0)
    return overlap / scale


def _linear_weights(n_in: int, n_out: int, area_mode: bool) -> torch.Tensor:
    """(n_out, n_in) two-tap weights of OpenCV's linear resize; area_mode: INTER_AREA's rule when enlarging."""
    scale = n_in / n_out
    dx = torch.arange(n_out, dtype=torch.float64)
    if area_mode:
        sx = torch.floor(dx * scale)
        fx = (dx + 1) - (sx + 1) / scale
        fx = torch.where(fx <= 0, torch.zeros_like(fx), fx - torch.floor(fx))
    else:
        f = (dx + 0.5) * scale - 0.5
        sx = torch.floor(f)
        fx = f - sx
    weights = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    for tap, w in ((sx, 1 - fx), (sx + 1, fx)):
        weights.index_put_((rows, tap.clamp(0, n_in - 1).long()), w, accumulate=True)
    return weights


@functools.lru_cache(maxsize=256)
def _weights(
    n_in: int, n_out: int, interpolation: str, shrink: bool, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """The axis's weight matrix on the device, built once per (size, target) pair: scans hold few distinct sizes."""
    if shrink:
        weights = _area_weights(n_in, n_out)
    else:
        weights = _linear_weights(n_in, n_out, area_mode=interpolation == "area")
    return weights.to(device, dtype)


def resize(image: torch.Tensor, height: int, width: int, interpolation: str) -> torch.Tensor:
    """uint8 (C, H, W) -> uint8 (C, height, width), as cv2.resize with the spec's interpolation computes it: one
    weight matrix per axis (out = Wy @ image @ Wx^T), so the same code runs on any device."""
    h, w = image.shape[1:]
    if (h, w) == (height, width):
        return image
    if interpolation == "cubic":
        x = F.interpolate(image[None].float(), size=(height, width), mode="bicubic", align_corners=False)[0]
    else:
        shrink = interpolation == "area" and h >= height and w >= width
        dtype = torch.float64 if image.device.type == "cpu" else torch.float32
        wy = _weights(h, height, interpolation, shrink, image.device, dtype)
        wx = _weights(w, width, interpolation, shrink, image.device, dtype)
        x = wy @ image.to(dtype) @ wx.T
    return x.round().clamp(0, 255).to(torch.uint8)


def to_model_pixels(image: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """Decoded uint8 (C, H, W) -> uint8 (C', size, size): mri44.preprocess.to_model_pixels on a tensor."""
    img = to_channels(image, spec.channels)
    size = spec.size
    h, w = img.shape[1:]
    if spec.resize == "stretch":
        return resize(img, size, size, spec.interpolation)
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    out = torch.zeros((img.shape[0], size, size), dtype=torch.uint8, device=img.device)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[:, top : top + nh, left : left + nw] = resize(img, nh, nw, spec.interpolation)
    return out
