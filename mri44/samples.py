"""Small samples of real images, shared by the export's parity gate, INT8 calibration and the benchmark."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mri44.errors import InputNotFoundError
from mri44.imageio import ImageDecodeError
from mri44.preprocess import PreprocessSpec, load_pixels


def spread(paths: list[Path], limit: int) -> list[Path]:
    """At most `limit` paths taken evenly over the list, so every class folder of a sorted listing is sampled."""
    return paths[:: max(1, len(paths) // limit)][:limit]


def decodable_pixels(paths: list[Path], spec: PreprocessSpec) -> tuple[np.ndarray, list[str]]:
    """uint8 model pixels of the files that decode (the others are skipped), and their paths."""
    pixels, names = [], []
    for path in paths:
        try:
            pixels.append(load_pixels(path, spec))
            names.append(str(path))
        except ImageDecodeError:
            continue
    if not pixels:
        raise InputNotFoundError(f"none of the {len(paths)} files could be decoded")
    return np.stack(pixels), names
