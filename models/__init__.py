"""The shipped models (ONNX files with their metadata) and their model card."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

SHIPPED = {
    "default": "mri44-resnet18.onnx",  # fp16 weights, float32 input/output
    "int8": "mri44-resnet18-int8.onnx",  # static INT8, ~3x faster on CPUs, slightly less accurate
    # The ImageNet ResNet-50 teacher (issue 19): more accurate than the default, ~5x its CPU cost per image
    "resnet50": "mri44-resnet50.onnx",
}


def shipped_model_path(variant: str = "default") -> Path:
    """Where a shipped model lies, in a clone or in an installed wheel alike."""
    return Path(str(resources.files(__name__).joinpath(SHIPPED[variant])))


def default_model_path() -> Path:
    return shipped_model_path("default")
