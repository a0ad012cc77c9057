"""Cached uint8 pixels -> network input on the training device: the torch twin of mri44.preprocess.normalize,
shared by the training loop and the distillation teacher (which normalises with its own spec)."""

from __future__ import annotations

import torch


def to_input(batch_u8: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """uint8-valued (B, C, H, W) -> normalised float (B, 3, H, W), the spec's x * scale + bias."""
    x = batch_u8.float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x * scale.view(1, 3, 1, 1) + bias.view(1, 3, 1, 1)
