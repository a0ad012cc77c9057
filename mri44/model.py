"""The network and its checkpoints: one definition for training and export.

Checkpoints are plain dicts of tensors and JSON-able values, saved with torch.save and always loaded with
weights_only=True, so loading one never runs pickled code.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
import torchvision

ARCH = "resnet18"


class CheckpointError(Exception):
    """A checkpoint that is missing, unreadable or not one of ours; the message says what to do."""


def build_model(num_classes: int) -> torch.nn.Module:
    """torchvision ResNet-18 with its last layer replaced for num_classes."""
    model = torchvision.models.resnet18(weights=None)
    model.fc = torch.nn.Linear(model.fc.in_features, num_classes)
    return model


def checkpoint_path(source: str | os.PathLike[str]) -> Path:
    """A run folder stands for its best checkpoint."""
    source = Path(source)
    return source / "best.pt" if source.is_dir() else source


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = checkpoint_path(path)
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {path}: pass a .pt file written by `python -m train` or its run folder"
        )
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise CheckpointError(
            f"cannot load checkpoint {path}: {exc.__class__.__name__}: {exc}".strip()
        ) from exc
    if not isinstance(ckpt, dict) or "model" not in ckpt or "classes" not in ckpt or "preprocess" not in ckpt:
        raise CheckpointError(
            f"{path} is not an mri44 checkpoint (expected keys 'model', 'classes', 'preprocess'); "
            "a bare torchvision state dict can be fine-tuned with `python -m train --weights PATH`"
        )
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any]) -> torch.nn.Module:
    if ckpt.get("arch", ARCH) != ARCH:
        raise CheckpointError(f"checkpoint architecture {ckpt.get('arch')!r} is not supported (only {ARCH})")
    model = build_model(len(ckpt["classes"]))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint weights do not match a {ARCH} with {len(ckpt['classes'])} classes: {exc}"
        ) from exc
    return model.eval()


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
