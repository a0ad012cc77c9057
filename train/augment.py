"""Batch augmentation on the training device, on uint8-valued tensors straight from the cache.

Doing it batched with affine_grid/grid_sample keeps augmentation off the data path's critical section: it costs
a small fraction of a ResNet-18 step on CPU and next to nothing on a GPU. The ranges are mild on purpose: MRI
slices are roughly centred and left-right symmetric; contrast differences are the signal, so intensity changes
stay small.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# One row of augmentation parameters per image: what a stored view (train/soft_labels.py) keeps to replay it.
PARAMS = ("angle", "scale", "flip", "tx", "ty", "gamma", "contrast", "brightness")


def draw_params(
    b: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    max_rotate_deg: float = 12.0,
    scale_range: tuple[float, float] = (0.9, 1.1),
    max_translate: float = 0.06,
    flip_p: float = 0.5,
    contrast_range: tuple[float, float] = (0.85, 1.15),
    max_brightness: float = 12.0,
    gamma_range: tuple[float, float] = (0.85, 1.18),
) -> torch.Tensor:
    """float32 (b, len(PARAMS)): one random augmentation per image, drawn in a fixed order from generator."""

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(b, generator=generator, device=device) * (hi - lo) + lo

    angle = uniform(-max_rotate_deg, max_rotate_deg) * (math.pi / 180.0)
    scale = uniform(*scale_range)
    flip = torch.where(torch.rand(b, generator=generator, device=device) < flip_p, -1.0, 1.0)
    tx, ty = uniform(-max_translate, max_translate) * 2, uniform(-max_translate, max_translate) * 2
    gamma = uniform(*gamma_range)
    contrast = uniform(*contrast_range)
    brightness = uniform(-max_brightness, max_brightness)
    return torch.stack([angle, scale, flip, tx, ty, gamma, contrast, brightness], 1)


def apply_params(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """x: float (B, C, H, W) on the 0..255 scale, params (B, len(PARAMS)) -> augmented, same shape and scale.
    The geometry is in normalised coordinates, so one view replays alike at any input size."""
    b = x.shape[0]
    angle, scale, flip, tx, ty, gamma, contrast, brightness = params.to(x.device, x.dtype).unbind(1)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    x = 255.0 * (x.clamp(0, 255) / 255.0).pow(gamma.view(b, 1, 1, 1))
    return (x * contrast.view(b, 1, 1, 1) + brightness.view(b, 1, 1, 1)).clamp(0, 255)


def random_affine_intensity(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """x: float (B, C, H, W) on the 0..255 scale -> randomly augmented, same shape and scale."""
    return apply_params(x, draw_params(x.shape[0], generator, x.device))
