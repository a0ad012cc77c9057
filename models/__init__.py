"""The shipped default model (an ONNX file with its metadata) and its model card."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

DEFAULT_MODEL_NAME = "mri44-resnet18.onnx"


def default_model_path() -> Path:
    """Where the default model lies, in a clone or in an installed wheel alike."""
    return Path(str(resources.files(__name__).joinpath(DEFAULT_MODEL_NAME)))
