"""Image statistics beside the feature checks (issue 32): fine detail and a dark border.

**Detail.** A slice shrunk to a thumbnail and scaled back up (or a small image the scorer scales up to the model's
input) still has a brain's shape, and the feature distance let 18 % of slices shrunk to 32 px through (docs/ood.md).
What such an image lacks is fine detail:

    detail = mean |x - x seen at a quarter of the input side| / std(x)

on one channel of the model's input (any per-channel scaling gives the same value, so it reads the normalised
batch the model gets). Measured at 256 px on every third of the 3,811 data images (1,271; scripts/detail_probe.py):
0.046-0.223, 0.5th percentile 0.068; the same slices shrunk to 32 px and back: 0.012-0.057; to 64 px: 0.025-0.096
(median 0.048); a quarter of the slice enlarged 2x: 0.020-0.162 (median 0.068). A model's floor lets DETAIL_PASS of
its training images through.

**Border.** An MRI slice sits on dark air, so the median of its outer frame sits near its darkest value:

    border = (median of the outer frame - min) / (max - min)

is 0-0.083 on all 3,811 data images (median 0.005, 99.9th percentile 0.071), while 95 % of photographs, every
viewer screenshot and every inverted slice score above 0.08 (benchmarks/ood_unseen.py). The ResNet-18's feature
checks let 18 % of photographs and 15 % of screenshots through at 3 % of unseen slices flagged; the ceiling, at
BORDER_PASS of a model's training images, catches them (docs/ood.md). Both limits travel in the
model's OodSpec (mri44.ood); image statistics, not learned ones: unseen slices pass them as often as training ones.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from mri44.errors import MRI44Error

LOW_FRACTION = 4  # the blurred copy is seen at 1/4 of the input side (64 px for a 256 px model)
DETAIL_PASS = 0.995  # the share of a model's training images above its floor
BORDER_FRACTION = 32  # the border check reads a frame 1/32 of the side wide (8 px of a 256 px input)
BORDER_PASS = 0.999  # the share of a model's training images under its border ceiling


class ImageLimitError(MRI44Error):
    """An image-statistic limit in a model that cannot be used; the message says why."""


def detail_scores(channel: np.ndarray) -> np.ndarray:
    """(N, H, W) one channel of a batch of model inputs -> (N,) float32 detail (0 for a flat image)."""
    out = np.empty(len(channel), np.float32)
    for i, x in enumerate(np.asarray(channel, np.float32)):
        h, w = x.shape
        low = cv2.resize(
            x, (max(1, w // LOW_FRACTION), max(1, h // LOW_FRACTION)), interpolation=cv2.INTER_AREA
        )
        blurred = cv2.resize(low, (w, h), interpolation=cv2.INTER_LINEAR)
        # OpenCV's mean and standard deviation: half the time of NumPy's on a 256 px image
        spread = float(cv2.meanStdDev(x)[1][0, 0])
        out[i] = cv2.mean(cv2.absdiff(x, blurred))[0] / spread if spread > 1e-6 else 0.0
    return out


def border_scores(channel: np.ndarray) -> np.ndarray:
    """(N, H, W) one channel of a batch of model inputs -> (N,) float32 border level: where the median of the
    outer frame (1/BORDER_FRACTION of the side) sits between the image's darkest and brightest value (0: dark,
    1: bright; 0 for a flat image). Any per-channel scaling gives the same value, so it reads raw or normalised
    batches alike."""
    x = np.asarray(channel, np.float32)
    n, h, w = x.shape
    b = max(1, min(h, w) // BORDER_FRACTION)
    frame = np.concatenate(
        [
            x[:, :b].reshape(n, -1),
            x[:, -b:].reshape(n, -1),
            x[:, b:-b, :b].reshape(n, -1),
            x[:, b:-b, -b:].reshape(n, -1),
        ],
        axis=1,
    )
    low, high = x.reshape(n, -1).min(1), x.reshape(n, -1).max(1)
    spread = high - low
    level = (np.median(frame, axis=1) - low) / np.where(spread > 1e-6, spread, 1.0)
    return np.where(spread > 1e-6, level, 0.0).astype(np.float32)


@dataclass(frozen=True)
class ImageLimit:
    """A limit on one image statistic: a floor (detail: rows under it are flagged) or a ceiling (border: rows over
    it are flagged), and how it was chosen."""

    threshold: float
    source: str = ""  # how it was chosen, for the model card

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "source": self.source}

    @classmethod
    def from_dict(cls, data: Any, source: str = "model", what: str = "detail floor") -> ImageLimit:
        try:
            threshold = float(data["threshold"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ImageLimitError(f"{source}: unreadable {what} ({exc})") from exc
        if not -10.0 < threshold < 10.0:
            raise ImageLimitError(
                f"{source}: {what} {threshold} out of range: re-fit it (scripts/fit_ood.py)"
            )
        return cls(threshold, str(data.get("source", "")))


def fit_detail(scores: np.ndarray) -> ImageLimit:
    """The floor that DETAIL_PASS of these (training) images' detail scores stay above."""
    threshold = float(np.quantile(scores, 1.0 - DETAIL_PASS))
    return ImageLimit(threshold, f"{DETAIL_PASS:.1%} of {len(scores)} training images above")


def fit_border(scores: np.ndarray) -> ImageLimit:
    """The ceiling that BORDER_PASS of these (training) images' border scores stay under."""
    threshold = float(np.quantile(scores, BORDER_PASS))
    return ImageLimit(threshold, f"{BORDER_PASS:.1%} of {len(scores)} training images under")


def fit_image_limits(stats: Iterable[tuple[np.ndarray, np.ndarray]]) -> tuple[ImageLimit, ImageLimit]:
    """The detail floor and border ceiling of training images, from input_statistics of their batches: the one place
    training, scripts/fit_ood.py and the benchmarks fit both limits."""
    detail, border = (np.concatenate(parts) for parts in zip(*stats, strict=True))
    return fit_detail(detail), fit_border(border)


def input_statistics(batch: Any) -> tuple[np.ndarray, np.ndarray]:
    """(detail, border) of a model batch (N, C, S, S), from its first channel read once."""
    first = batch[:, 0]
    if not isinstance(first, np.ndarray):
        first = first.float().cpu().numpy()
    return detail_scores(first), border_scores(first)
