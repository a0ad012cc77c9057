"""Parity of an exported model against its PyTorch source, on the same preprocessed batches.

Relative difference is scale-relative: max |onnx - torch| / max |torch| over the batch, which stays meaningful
where individual logits are near zero. Bounds (never loosened to pass): fp32 max abs <= 1e-4 and 100% top-1
agreement everywhere; fp16 max relative <= 1e-2 everywhere and >= 99% top-1 agreement on real images;
int8 (a lossy approximation by design) >= 95% top-1 agreement on real images, its accuracy cost is measured
separately on a labelled split (benchmarks/bench.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from mri44.checkpoint import Checkpoint
from mri44.discover import find_images
from mri44.errors import InputNotFoundError
from mri44.preprocess import PreprocessSpec, normalize
from mri44.samples import decodable_pixels, spread

FP32_MAX_ABS = 1e-4
FP16_MAX_REL = 1e-2
FP16_MIN_TOP1_REAL = 0.99
INT8_MIN_TOP1_REAL = 0.95


@dataclass(frozen=True)
class ParityRow:
    inputs: str
    batch: int
    max_abs: float
    max_rel: float
    top1_agreement: float
    passed: bool


def random_batches(
    spec: PreprocessSpec, sizes: tuple[int, ...] = (1, 3, 8), seed: int = 0
) -> dict[str, np.ndarray]:
    """Random images pushed through the real normalisation, so values have the model's input range."""
    rng = np.random.default_rng(seed)
    return {
        f"random x{n}": normalize(
            rng.integers(0, 256, (n, spec.size, spec.size, spec.cache_channels), dtype=np.uint8), spec
        )
        for n in sizes
    }


def real_batch(folder: Path, spec: PreprocessSpec, limit: int = 64) -> tuple[np.ndarray, list[str]]:
    """Up to `limit` images spread evenly over the folder's sorted files, preprocessed by the shared core."""
    paths = find_images(folder)
    if not paths:
        raise InputNotFoundError(f"no images under {folder} for the parity check")
    pixels, names = decodable_pixels(spread(paths, limit), spec)
    return normalize(pixels, spec), names


def training_data(checkpoint: Path) -> Path | None:
    """The data folder a checkpoint was trained on, from the config it carries, if that folder still exists."""
    folder = Path(Checkpoint.load(checkpoint).data)
    return folder if str(folder) not in ("", ".") and folder.is_dir() else None


def bounds_hold(precision: str, max_abs: float, max_rel: float, top1: float, real: bool) -> bool:
    """The parity bounds of the module docstring; `real`: the inputs are real images, not random ones."""
    if precision == "fp32":
        return max_abs <= FP32_MAX_ABS and top1 == 1.0
    if precision == "int8":
        return top1 >= INT8_MIN_TOP1_REAL or not real
    return max_rel <= FP16_MAX_REL and (top1 >= FP16_MIN_TOP1_REAL or not real)


def compare(name: str, reference: np.ndarray, candidate: np.ndarray, precision: str) -> ParityRow:
    """Logits of the exported model against PyTorch's on one batch."""
    diff = np.abs(candidate.astype(np.float64) - reference.astype(np.float64))
    max_abs = float(diff.max())
    max_rel = max_abs / max(float(np.abs(reference).max()), 1e-12)
    top1 = float((candidate.argmax(1) == reference.argmax(1)).mean())
    passed = bounds_hold(precision, max_abs, max_rel, top1, real=name.startswith("real"))
    return ParityRow(name, int(reference.shape[0]), max_abs, max_rel, top1, passed)


def compare_predictions(
    name: str, reference: pl.DataFrame, candidate: pl.DataFrame, precision: str
) -> ParityRow:
    """Two mri-score prediction tables of the same real files, under the export's bounds: the same files with the
    same status, top-1 agreement, and the largest difference in confidence where the top-1 classes agree."""
    both = reference.join(candidate, on="path", how="full", suffix="_c", coalesce=True)
    same_rows = both.height == reference.height == candidate.height
    if not same_rows or not (both["status"] == both["status_c"]).all():
        return ParityRow(name, both.height, float("inf"), float("inf"), 0.0, False)
    ok = both.filter(pl.col("status") == "ok")
    agree = (ok["pred_class"] == ok["pred_class_c"]).to_numpy()
    top1 = float(agree.mean()) if ok.height else 1.0
    reference_conf = ok["confidence"].to_numpy()
    diff = np.abs(reference_conf - ok["confidence_c"].to_numpy())[agree]
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = max_abs / max(float(reference_conf.max()) if ok.height else 0.0, 1e-12)
    return ParityRow(
        name, ok.height, max_abs, max_rel, top1, bounds_hold(precision, max_abs, max_rel, top1, True)
    )


def check_parity(
    model: torch.nn.Module,
    run: Callable[[np.ndarray], np.ndarray],
    batches: dict[str, np.ndarray],
    precision: str,
) -> list[ParityRow]:
    """run: the exported model as a function float32 NCHW -> logits."""
    rows = []
    with torch.no_grad():
        for name, batch in batches.items():
            reference = model(torch.from_numpy(batch)).numpy()
            rows.append(compare(name, reference, run(batch), precision))
    return rows


def format_table(rows: list[ParityRow], title: str) -> str:
    lines = [title, f"{'inputs':<14} {'batch':>5} {'max abs':>10} {'max rel':>10} {'top-1':>7}  result"]
    for r in rows:
        lines.append(
            f"{r.inputs:<14} {r.batch:>5} {r.max_abs:>10.2e} {r.max_rel:>10.2e} {r.top1_agreement:>7.2%}  "
            + ("ok" if r.passed else "FAIL")
        )
    return "\n".join(lines)
