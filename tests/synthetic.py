"""Small synthetic class folders whose classes are learnable: tumour type -> shape, contrast -> intensities.

Names follow the real data ("<Type> <Contrast>", plus a "_NORMAL" class) so the label parser and the
per-contrast / per-tumour-type tables are exercised too.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

if TYPE_CHECKING:
    from mri44.stages.train.config import TrainConfig

CLASSES = ("Circloma T1", "Circloma T2", "Squaroma T1C+", "Squaroma T2", "_NORMAL T1")
_INTENSITY = {"T1": (40, 200), "T1C+": (90, 255), "T2": (200, 60)}  # (background, lesion)


def make_image(label: str, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    tumor, contrast = label.rsplit(" ", 1)
    background, lesion = _INTENSITY[contrast]
    img = np.zeros((size, size), np.uint8)
    cv2.circle(img, (size // 2, size // 2), int(size * 0.42), background, -1)  # the "head"
    c = (int(rng.integers(size * 0.35, size * 0.65)), int(rng.integers(size * 0.35, size * 0.65)))
    r = int(rng.integers(size // 10, size // 6))
    if tumor == "Circloma":
        cv2.circle(img, c, r, lesion, -1)
    elif tumor == "Squaroma":
        cv2.rectangle(img, (c[0] - r, c[1] - r), (c[0] + r, c[1] + r), lesion, -1)
    noise = rng.normal(0, 6, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def make_dataset(root: Path, per_class: int = 12, size: int = 64, seed: int = 0, classes=CLASSES) -> Path:
    """Write per_class images per class; some RGB, some greyscale, odd extensions, as in the real set."""
    rng = np.random.default_rng(seed)
    for label in classes:
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = make_image(label, rng, size)
            if i % 2:
                img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
            ext = (".jpg", ".jpeg", ".JPG", ".png")[i % 4]
            ok, data = cv2.imencode(".png" if ext == ".png" else ".jpg", img)
            assert ok
            (folder / f"slice ({i}){ext}").write_bytes(data.tobytes())
    return root


def tiny_run_config(data: Path, out: Path, **changes: Any) -> TrainConfig:
    """The settings of the tests' reference run (the trained_run fixture): 48 px, 8 epochs on the CPU, fp32 so
    every CI machine gets the same numerics; changes override any field (e.g. precision="bf16")."""
    from mri44.stages.train.config import TrainConfig
    from mri44.stages.train.recipes import get_recipe
    from mri44.stages.train.split import SplitConfig

    settings: dict[str, Any] = {
        "recipe": get_recipe("default"),
        "image_size": 48,
        "epochs": 8,
        "batch_size": 16,
        "lr": 2e-3,
        "device": "cpu",
        "precision": "fp32",
        "split": SplitConfig(phash_distance=-1),
        "workers": 2,
    }
    return TrainConfig(data=data, out=out, **{**settings, **changes})
