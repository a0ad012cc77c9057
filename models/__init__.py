"""The shipped models (ONNX files with their metadata) and their model card.

SHIPPED is the one table of them: `--model NAME` and `mri44.load_model(NAME)` look names up here, and the
command-line help lists them from it."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

# name -> (file, what it is, for the help)
SHIPPED = {
    # The ResNet-18 distilled from the ResNet-50 on all images (issue 29: the default since 2026-12-06)
    "default": ("mri44-resnet18.onnx", "ResNet-18 distilled from the ResNet-50, fp16"),
    "int8": (
        "mri44-resnet18-int8.onnx",
        "the default in INT8: faster on a CPU, the same predictions on our images",
    ),
    # The ImageNet ResNet-50 teacher (issue 19): as accurate as the default, ~5x its CPU cost per forward pass
    "resnet50": ("mri44-resnet50.onnx", "the ImageNet ResNet-50 teacher, ~5x the default's forward pass"),
    # The geometric mean of the two above in one graph (issue 29: the most accurate model out of fold), shipped as a
    # recipe naming them (mri44/ensemble.py) and built into the user's cache on first use
    "ensemble": (
        "mri44-ensemble.json",
        "the default and the ResNet-50 averaged: the most accurate, ~2.5x the default's scoring time",
    ),
}


def shipped_model_path(variant: str = "default") -> Path:
    """Where a shipped model lies, in a clone or in an installed wheel alike; a recipe (.json) is built into the
    cache first and the built ONNX file's path returned."""
    path = Path(str(resources.files(__name__).joinpath(SHIPPED[variant][0])))
    if path.suffix == ".json" and path.is_file():
        from mri44.ensemble import build_from_recipe

        return build_from_recipe(path)
    return path


def default_model_path() -> Path:
    return shipped_model_path("default")


def shipped_names() -> str:
    """'default' (ResNet-18, fp16), 'int8' (...), ...: the names for a help text."""
    return ", ".join(f"'{name}' ({what})" for name, (_, what) in SHIPPED.items())
