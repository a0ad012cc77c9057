"""Temperature scaling (Guo et al., 2017): one scalar T, fitted on validation logits, makes softmax(z / T)
honest about its confidence without changing any prediction. It travels in checkpoints and ONNX metadata and the
scorer divides the logits by it."""

from __future__ import annotations

import logging

import numpy as np

T_RANGE = (0.05, 20.0)  # an untrained model's best T runs off to infinity (uniform output): keep it finite


def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 200) -> float:
    """The T in T_RANGE that minimises the negative log-likelihood of labels under softmax(logits / T)."""
    import torch  # here, not at the top: the scorer imports softmax and must not pay for PyTorch

    z = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.int64)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    fitted = float(np.clip(float(log_t.detach().exp()), *T_RANGE))
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
