"""Which way up is a slice? A linear probe on the model's own features flags slices turned 90, 180 or 270 degrees.

The out-of-distribution score (mri44.ood) asks whether an image looks like any training image; a brain turned on
its side still does, so that score flags only a quarter to a third of turned slices (docs/ood.md). The network is
not rotation-invariant, though: its pooled last-stage features say which way up a slice is. A 4-way logistic
regression on those features (upright, 90, 180, 270 degrees), fitted on the training images turned all four ways,
gives `turned_score` = 1 - P(upright) from the same forward pass, at no cost beyond a (4, C) product. On the default
model it separates turned from upright unseen slices with AUROC 0.98-0.99 (scripts/orientation_probe.py).

Slices tilted by a few degrees are not flagged and should not be: heads tilt in scanners. The probe, its threshold
and how the threshold was chosen travel inside the model's OodSpec (mri44.ood), so a model without one scores as
before.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mri44.errors import MRI44Error

QUARTER_TURNS = (0, 1, 2, 3)  # the probe's classes: np.rot90(image, k)
UPRIGHT_PASS = 0.99  # the share of unseen upright slices the threshold lets through


class OrientationError(MRI44Error):
    """Unreadable or inconsistent orientation settings in a model."""


def _array(data: dict, key: str, source: str) -> np.ndarray:
    shape = tuple(int(n) for n in data[f"{key}_shape"])
    return np.frombuffer(base64.b64decode(data[key]), np.float32).reshape(shape)


@dataclass(frozen=True)
class OrientationProbe:
    weights: (
        np.ndarray
    )  # float32 (4, C): logits of (upright, 90, 180, 270) from L2-normalised pooled features
    bias: np.ndarray  # float32 (4,)
    threshold: float  # turned_score above this is flagged
    source: str = ""  # how the probe and threshold were fitted, for the model card

    def turned_scores(self, pooled_unit: np.ndarray) -> np.ndarray:
        """1 - P(upright) per image, from (N, C) L2-normalised pooled features."""
        if pooled_unit.shape[1] != self.weights.shape[1]:
            raise OrientationError(
                f"the model's features have {pooled_unit.shape[1]} channels, its orientation probe "
                f"{self.weights.shape[1]}: re-fit it (scripts/fit_ood.py --orientation) or score with --ood off"
            )
        logits = pooled_unit.astype(np.float32) @ self.weights.T + self.bias
        logits -= logits.max(1, keepdims=True)
        probs = np.exp(logits)
        return (1.0 - probs[:, 0] / probs.sum(1)).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        w, b = np.ascontiguousarray(self.weights, np.float32), np.ascontiguousarray(self.bias, np.float32)
        return {
            "threshold": self.threshold,
            "source": self.source,
            "weights": base64.b64encode(w.tobytes()).decode("ascii"),
            "weights_shape": list(w.shape),
            "bias": base64.b64encode(b.tobytes()).decode("ascii"),
            "bias_shape": list(b.shape),
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "model") -> OrientationProbe:
        try:
            weights, bias = _array(data, "weights", source), _array(data, "bias", source)
            threshold = float(data["threshold"])
        except (ValueError, KeyError, TypeError) as exc:
            raise OrientationError(f"{source}: unreadable orientation probe ({exc})") from exc
        if (
            weights.ndim != 2
            or weights.shape[0] != len(QUARTER_TURNS)
            or bias.shape != (len(QUARTER_TURNS),)
            or not 0.0 < threshold < 1.0
            or not (np.isfinite(weights).all() and np.isfinite(bias).all())
        ):
            raise OrientationError(
                f"{source}: orientation probe out of range (weights {weights.shape}, bias {bias.shape}, threshold "
                f"{threshold}): re-fit it (scripts/fit_ood.py --orientation) or score with --ood off"
            )
        return cls(weights=weights, bias=bias, threshold=threshold, source=str(data.get("source", "")))


def quarter_turns(pixels: np.ndarray) -> list[np.ndarray]:
    """The four quarter turns of one (S, S) or (S, S, C) model-input image, in QUARTER_TURNS order."""
    return [np.ascontiguousarray(np.rot90(pixels, k)) for k in QUARTER_TURNS]


def fit_orientation(
    pooled_unit_by_turn: list[np.ndarray],
    groups: np.ndarray,
    folds: int = 5,
    upright_pass: float = UPRIGHT_PASS,
    fit: Callable[[np.ndarray, np.ndarray], Any] | None = None,
) -> OrientationProbe:
    """The probe on training images' features, one (N, C) array per quarter turn (row i: image i turned).

    The threshold comes from images the probe did not see: grouped K-fold over the images (near-duplicate groups
    kept whole, so a neighbouring slice is never on both sides), each fold's upright images scored by a probe
    fitted on the other folds; the threshold lets `upright_pass` of them through. The shipped probe is then
    fitted on every image."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold

    def train(x: np.ndarray, y: np.ndarray) -> Any:
        return (fit or (lambda a, b: LogisticRegression(C=10.0, max_iter=2000).fit(a, b)))(x, y)

    n = len(pooled_unit_by_turn[0])
    x_all = np.concatenate(pooled_unit_by_turn)
    y_all = np.repeat(np.asarray(QUARTER_TURNS), n)
    held_out = np.empty(n, np.float32)
    k = min(folds, len(np.unique(groups)))
    for fit_rows, test_rows in GroupKFold(n_splits=k).split(np.zeros(n), groups=groups):
        rows = np.concatenate([fit_rows + t * n for t in range(len(QUARTER_TURNS))])
        model = train(x_all[rows], y_all[rows])
        held_out[test_rows] = 1.0 - model.predict_proba(pooled_unit_by_turn[0][test_rows])[:, 0]
    model = train(x_all, y_all)
    threshold = float(np.quantile(held_out, upright_pass))
    return OrientationProbe(
        weights=model.coef_.astype(np.float32),
        bias=model.intercept_.astype(np.float32),
        threshold=min(max(threshold, 1e-6), 1 - 1e-6),
        source=f"{upright_pass:.0%} of {n} training images pass upright, grouped {k}-fold held out",
    )
