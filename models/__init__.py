"""The shipped models (ONNX files with their metadata) and their model card.

SHIPPED is the one table of them: `--model NAME` and `mri44.load_model(NAME)` look names up here, and the
command-line help lists them from it."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

# name -> (file, what it is, for the help)
SHIPPED = {
    "default": ("mri44-resnet18.onnx", "ResNet-18, fp16"),
    "int8": (
        "mri44-resnet18-int8.onnx",
        "the default in INT8: about 3x faster on a CPU, slightly less accurate",
    ),
    # The ImageNet ResNet-50 teacher (issue 19): more accurate than the default, ~5x its CPU cost per image
    "resnet50": ("mri44-resnet50.onnx", "the ImageNet ResNet-50: the most accurate, ~5x slower"),
    # The ResNet-18 distilled from it on all images (issue 19); not the default: it lost the 206-image comparison
    "distilled": ("mri44-resnet18-distilled.onnx", "a ResNet-18 distilled from the ResNet-50, all images"),
}


def shipped_model_path(variant: str = "default") -> Path:
    """Where a shipped model lies, in a clone or in an installed wheel alike."""
    return Path(str(resources.files(__name__).joinpath(SHIPPED[variant][0])))


def default_model_path() -> Path:
    return shipped_model_path("default")


def shipped_names() -> str:
    """'default' (ResNet-18, fp16), 'int8' (...), ...: the names for a help text."""
    return ", ".join(f"'{name}' ({what})" for name, (_, what) in SHIPPED.items())
