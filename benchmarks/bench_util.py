"""What the benchmark scripts share: their common options, the median-rate timer, the folder of links they
score and decoded images batched as the network's input."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from mri44.preprocess import PreprocessSpec, normalize, to_model_pixels

DATA = Path(__file__).resolve().parents[2] / "shared/data/brain-mri-44c"


def bench_parser(doc: str | None, images: int) -> argparse.ArgumentParser:
    """A parser with the options every scoring benchmark takes: --data, --images (how many real images), --repeats
    (medians over that many runs)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--images", type=int, default=images)
    parser.add_argument("--repeats", type=int, default=3)
    return parser


def median_rate(
    fn: Callable[[], object], n_items: int, repeats: int, sync: Callable[[], None] | None = None
) -> float:
    """Items per second, median over repeats (one warm-up call first); sync waits for queued GPU work."""
    wait = sync or (lambda: None)
    fn()
    wait()
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        wait()
        rates.append(n_items / (time.perf_counter() - t0))
    return statistics.median(rates)


def subset_folder(paths: list[Path], root: Path, n: int, dst: Path) -> Path:
    """n images (repeating if needed) as symlinks in their class folders under dst, like a real input folder."""
    for i in range(n):
        src = paths[i % len(paths)]
        rel = src.relative_to(root)
        link = dst / rel.parent / f"{i:06d}_{rel.name}"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(src.resolve())
    return dst


def model_batches(images: list[np.ndarray], spec: PreprocessSpec, batch: int = 32) -> Iterator[np.ndarray]:
    """Decoded images as the network's float32 input (N, 3, S, S), preprocessed exactly as the scorer does."""
    for start in range(0, len(images), batch):
        yield normalize(np.stack([to_model_pixels(i, spec) for i in images[start : start + batch]]), spec)
