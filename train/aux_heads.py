"""Tumour-type and contrast heads beside the 44-way classifier, for training only (issue 29's factored head).

Carcinoma T1C+ has few images, but Carcinoma T1 and T2 images show the same tumour. Two small heads on the pooled
features learn the tumour type (from every contrast) and the contrast (from every tumour type); their
cross-entropy, weighted by the recipe's aux_weight, joins the loss, so the shared features must separate the types
the 44-way head confuses (Astrocitoma, Neurocitoma and Carcinoma T1C+ pulled toward Meningioma T1C+). The heads hang
off the network as `aux` (so the optimiser, the weight average and last.pt carry them) and read the pooled features
through a forward hook; the best checkpoint, and so every export, is the plain network without them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mri44.labels import parse_label

AUX_PREFIX = "aux."  # their weights' names in the network's state dict


class AuxHeads(nn.Module):
    def __init__(self, width: int, classes: list[str]) -> None:
        super().__init__()
        parsed = [parse_label(name) for name in classes]
        tumors = sorted({p.tumor_type for p in parsed})
        contrasts = sorted({p.contrast for p in parsed})
        self.tumor = nn.Linear(width, len(tumors))
        self.contrast = nn.Linear(width, len(contrasts))
        # class index -> tumour-type / contrast index; plain attributes, not buffers: rebuilt from the classes, never
        # averaged or saved
        self.tumor_of = torch.tensor([tumors.index(p.tumor_type) for p in parsed])
        self.contrast_of = torch.tensor([contrasts.index(p.contrast) for p in parsed])
        self.pooled: torch.Tensor | None = None  # the last forward pass's pooled features (the hook's)


def attach_aux_heads(model: nn.Module, classes: list[str]) -> AuxHeads:
    """Give a torchvision ResNet the two heads as `model.aux`, fed by a hook on its average pool."""
    heads = AuxHeads(model.fc.in_features, classes)  # type: ignore[union-attr, arg-type]
    model.aux = heads

    def keep(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        heads.pooled = output.flatten(1)

    model.avgpool.register_forward_hook(keep)  # type: ignore[union-attr]
    return heads


def aux_loss(model: nn.Module, y: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Cross-entropy of both heads on the features of the model's last forward pass, against the classes' tumour
    types and contrasts."""
    heads = model.aux
    assert isinstance(heads, AuxHeads) and heads.pooled is not None
    tumor = heads.tumor_of.to(y.device)[y]
    contrast = heads.contrast_of.to(y.device)[y]
    return F.cross_entropy(
        heads.tumor(heads.pooled).float(), tumor, label_smoothing=label_smoothing
    ) + F.cross_entropy(heads.contrast(heads.pooled).float(), contrast, label_smoothing=label_smoothing)


def without_aux(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The plain network's weights: what best.pt keeps and export reads."""
    return {name: value for name, value in weights.items() if not name.startswith(AUX_PREFIX)}
