"""Temperature scaling (Guo et al., 2017): one scalar T, fitted on validation logits, makes softmax(z / T)
honest about its confidence without changing any prediction. It travels in checkpoints and ONNX metadata and the
scorer divides the logits by it."""

from __future__ import annotations

import logging

import numpy as np

T_RANGE = (0.05, 20.0)  # an untrained model's best T runs off to infinity (uniform output): keep it finite


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    z = z - z.max(1, keepdims=True)
    return float(np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(z)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, steps: int = 60) -> float:
    """The T in T_RANGE that minimises the negative log-likelihood of labels under softmax(logits / T).

    The likelihood is convex in 1/T, so one minimum: a log-spaced grid over T_RANGE finds its cell and a golden-
    section search refines it. Deterministic on every CPU (an L-BFGS fit stopped at different places on
    different machines where the curve is flat, as it is near the bounds)."""
    z = np.asarray(logits, np.float64)
    y = np.asarray(labels, np.int64)
    grid = np.geomspace(*T_RANGE, 97)
    best = int(np.argmin([_nll(z, y, t) for t in grid]))
    low, high = np.log(grid[max(best - 1, 0)]), np.log(grid[min(best + 1, len(grid) - 1)])
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(steps):
        a, b = high - ratio * (high - low), low + ratio * (high - low)
        if _nll(z, y, float(np.exp(a))) <= _nll(z, y, float(np.exp(b))):
            high = b
        else:
            low = a
    fitted = float(np.clip(np.exp((low + high) / 2), *T_RANGE))
    if not T_RANGE[0] * 1.01 < fitted < T_RANGE[1] / 1.01:
        logging.getLogger(__name__).warning(
            "the fitted temperature %.3g sits on the bound of its range %s: the logits carry no usable "
            "calibration signal here (too few or too easy images, or a model that has not learnt); its "
            "probabilities are not calibrated",
            fitted,
            T_RANGE,
        )
    return fitted


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of logits / temperature, in float64 for stability."""
    z = np.asarray(logits, np.float64) / temperature
    z -= z.max(1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(1, keepdims=True)
