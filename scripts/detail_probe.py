"""The detail statistic (mri44.detail) on real slices and on the same slices altered: the measurement behind its
floor.

    python scripts/detail_probe.py --data ../shared/data/brain-mri-44c [--every 3] [--size 256]

Prints, per family, the percentiles of the detail score of the model input (stretched to --size, grey) of every
--every-th image: the slices as they are, shrunk to 32 and 64 px and scaled back, and a quarter of the slice
enlarged 2x (benchmarks/ood.py's families).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from mri44.detail import detail_scores
from mri44.discover import find_images
from mri44.preprocess import PreprocessSpec, to_model_pixels
from mri44.readers import read_image


def shrunk(side: int) -> Callable[[np.ndarray], np.ndarray]:
    def alter(image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        small = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)

    return alter


def quarter(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    return cv2.resize(image[: h // 2, : w // 2], (w, h), interpolation=cv2.INTER_LINEAR)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--every", type=int, default=3)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    spec = PreprocessSpec(size=args.size, resize="stretch", channels="grey")
    images = [read_image(p) for p in find_images(args.data)[:: args.every]]
    families: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "slices": lambda image: image,
        "shrunk to 32 px and back": shrunk(32),
        "shrunk to 64 px and back": shrunk(64),
        "a quarter, enlarged 2x": quarter,
    }
    print(f"{len(images)} images, model input {args.size} px (stretch, grey)\n")
    print("| family | min | 0.5 % | 1 % | 5 % | median | 95 % | max |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, alter in families.items():
        pixels = np.stack([to_model_pixels(alter(image), spec)[..., 0] for image in images])
        cells = np.percentile(detail_scores(pixels), [0, 0.5, 1, 5, 50, 95, 100])
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in cells) + " |")


if __name__ == "__main__":
    main()
