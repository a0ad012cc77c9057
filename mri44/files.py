"""File identity without heavy imports: the scorer names models and checkpoints by these, and must not import torch
to do it (an ONNX scoring run never needs PyTorch, and importing it costs
seconds per run)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from mri44.run_folder import RunFolder


def checkpoint_path(source: str | os.PathLike[str]) -> Path:
    """The file a model path stands for: a run folder's best checkpoint, any file (a .pt, an ONNX model) itself."""
    source = Path(source)
    return RunFolder(source).best if source.is_dir() else source


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
