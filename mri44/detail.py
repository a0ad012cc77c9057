"""Slices without fine detail: an image statistic beside the feature checks (issue 32).

A slice shrunk to a thumbnail and scaled back up (or a small image the scorer scales up to the model's input) still
has a brain's shape, and the feature distance let 18 % of slices shrunk to 32 px through (docs/ood.md). What such an
image lacks is fine detail:

    detail = mean |x - x seen at a quarter of the input side| / std(x)

on one channel of the model's input (any per-channel scaling gives the same value, so it reads the normalised
batch the model gets). Measured at 256 px on every third of the 3,811 data images (1,271; scripts/detail_probe.py):
0.046-0.223, 0.5th percentile 0.068; the same slices shrunk to 32 px and back: 0.012-0.057; to 64 px: 0.025-0.096
(median 0.048); a quarter of the slice enlarged 2x: 0.020-0.162 (median 0.068). A model's floor lets DETAIL_PASS of
its training images through; it travels in the model's OodSpec (mri44.ood). An image statistic, not a learned one:
unseen slices pass it as often as training ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from mri44.errors import MRI44Error

LOW_FRACTION = 4  # the blurred copy is seen at 1/4 of the input side (64 px for a 256 px model)
DETAIL_PASS = 0.995  # the share of a model's training images above its floor


class DetailError(MRI44Error):
    """A detail floor in a model that cannot be used; the message says why."""


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


def input_detail(batch: Any) -> np.ndarray:
    """detail_scores of a model batch (N, C, S, S), normalised or raw: a NumPy array or a torch tensor on any
    device."""
    first = batch[:, 0]
    if not isinstance(first, np.ndarray):
        first = first.float().cpu().numpy()
    return detail_scores(first)


@dataclass(frozen=True)
class DetailFloor:
    threshold: float  # rows whose detail is under it are flagged "low detail"
    source: str = ""  # how it was chosen, for the model card

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "source": self.source}

    @classmethod
    def from_dict(cls, data: Any, source: str = "model") -> DetailFloor:
        try:
            threshold = float(data["threshold"])
        except (ValueError, KeyError, TypeError) as exc:
            raise DetailError(f"{source}: unreadable detail floor ({exc})") from exc
        if not 0.0 <= threshold < 10.0:
            raise DetailError(
                f"{source}: detail floor {threshold} out of range: re-fit it (scripts/fit_ood.py)"
            )
        return cls(threshold, str(data.get("source", "")))


def fit_detail(scores: np.ndarray) -> DetailFloor:
    """The floor that DETAIL_PASS of these (training) images' detail scores stay above."""
    threshold = float(np.quantile(scores, 1.0 - DETAIL_PASS))
    return DetailFloor(threshold, f"{DETAIL_PASS:.1%} of {len(scores)} training images above")
