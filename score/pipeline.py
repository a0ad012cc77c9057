"""Streaming batch scoring: decode in a thread pool, infer in batches, never hold more than a window of images.

Decoding and preprocessing (OpenCV releases the GIL) run in `workers` threads with at most `prefetch` images in
flight, while the main thread feeds ready batches to ONNX Runtime (which also releases the GIL), so decode and
inference overlap. A file that cannot be decoded becomes an error row; it never stops the run.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from tqdm import tqdm

from mri44.calibration import softmax
from mri44.errors import SettingError
from mri44.fingerprint import training_flags
from mri44.imageio import file_error
from mri44.limits import Limits
from mri44.ood import OodRows
from mri44.predictions import prediction_frame, printable_path, series_table
from mri44.preprocess import PreprocessSpec, load_item, normalize
from mri44.readers import Item, Tags, member_columns
from mri44.runtime import one_blas_thread

from .backends import Backend


@dataclass
class ScoreRun:
    predictions: pl.DataFrame
    seconds: float
    scored: int
    failed: int
    series: pl.DataFrame | None = None  # one row per series (mri44.predictions.series_table)


def decoded_batches(
    items: list[Item], spec: PreprocessSpec, batch_size: int, workers: int, prefetch: int, limits: Limits
) -> Iterator[tuple[list[int], np.ndarray | None, list[tuple[int, str]], list[Tags | None]]]:
    """Yield (positions, pixels, errors, tags of the decoded) in item order; errors: list of (position, message)."""
    with ThreadPoolExecutor(max(1, workers)) as pool:
        pending: collections.deque[tuple[int, Future]] = collections.deque()
        next_i = 0

        def fill() -> None:
            nonlocal next_i
            while next_i < len(items) and len(pending) < prefetch:
                pending.append((next_i, pool.submit(load_item, items[next_i], spec, limits)))
                next_i += 1

        fill()
        positions: list[int] = []
        pixels: list[np.ndarray] = []
        tags: list[Tags | None] = []
        errors: list[tuple[int, str]] = []
        while pending:
            i, future = pending.popleft()
            fill()
            try:
                image, found = future.result()
                pixels.append(image)
                tags.append(found)
                positions.append(i)
            except Exception as exc:  # about this one file: its error row
                errors.append((i, file_error(exc)))
            if len(pixels) == batch_size or (not pending and (pixels or errors)):
                yield positions, (np.stack(pixels) if pixels else None), errors, tags
                positions, pixels, errors, tags = [], [], [], []


def input_batches(
    backend: Backend,
    items: list[Item],
    batch_size: int,
    workers: int,
    prefetch: int | None,
    limits: Limits,
    decode: str,
) -> Iterator[tuple[list[int], Any, list[tuple[int, str]], list[Tags | None]]]:
    """(positions, normalised batch, errors, tags) in item order: decoded by OpenCV threads on the CPU
    (decode="cpu"), or JPEGs decoded where the model runs (decode="device": nvJPEG on CUDA;
    score/device_decode.py)."""
    spec = backend.meta.preprocess
    if decode == "device":
        import torch

        from .device_decode import device_batches

        yield from device_batches(items, spec, batch_size, workers, torch.device(backend.device), limits)
        return
    if decode != "cpu":
        raise SettingError(f"unknown --decode {decode!r}: choose cpu or device")
    window = prefetch or max(2 * batch_size, 8)
    for positions, pixels, errors, tags in decoded_batches(items, spec, batch_size, workers, window, limits):
        yield positions, (None if pixels is None else normalize(pixels, spec)), errors, tags


def score_batch(
    backend: Backend,
    x: Any,
    positions: list[int] | np.ndarray,
    probs: np.ndarray,
    ok: np.ndarray,
    errors: list[str | None],
    ood: OodRows | None = None,
) -> None:
    """Run the model on one normalised batch and fill its rows: temperature-scaled probabilities, ok only where
    every logit is finite (a NaN or inf output becomes that file's error row, never a confident class 0), and,
    when ood is given, each row's out-of-distribution scores (mri44.ood) from the same forward pass, with NumPy's
    BLAS on one thread (mri44.runtime.one_blas_thread: its idle threads spun on the model's cores)."""
    if ood is not None:
        spec, run_features = backend.meta.ood, backend.run_features
        assert spec is not None and run_features is not None  # ood_check() decided
        logits, features = run_features(x)
        with one_blas_thread():
            spec.fill(ood, positions, features, x)
    else:
        logits = backend.run(x)
    finite = np.isfinite(logits).all(1)
    probs[positions] = softmax(np.where(finite[:, None], logits, 0.0), backend.meta.temperature)
    ok[positions] = finite
    for i in np.asarray(positions)[~finite]:
        errors[i] = "model produced non-finite output (NaN or inf) for this image"


def ood_check(backend: Backend, ood: bool) -> bool:
    """Whether to compute the out-of-distribution score: asked for, and the model carries a reference set and
    its feature map (models exported before issue 23 have neither: their rows carry null ood columns)."""
    return ood and backend.meta.ood is not None and backend.run_features is not None


def ood_rows(backend: Backend, n: int, ood: bool, override: float | None) -> OodRows | None:
    """The out-of-distribution scores to fill for n rows when the check runs (ood_check), flagged above the
    model's thresholds or --ood-threshold (override) for the feature distance; None when it does not run."""
    spec = backend.meta.ood
    return OodRows.empty(n, spec, override) if spec is not None and ood_check(backend, ood) else None


def score_items(
    backend: Backend,
    root: Path,
    items: list[Item],
    batch_size: int = 32,
    workers: int = 2,
    top_k: int = 3,
    prefetch: int | None = None,
    progress: bool = True,
    limits: Limits = Limits(),
    decode: str = "cpu",
    ood: bool = True,
    ood_threshold: float | None = None,
) -> ScoreRun:
    """Score images (found under root) in order; returns one prediction row per item. ood_threshold overrides the
    model's own threshold."""
    meta = backend.meta
    n = len(items)
    probs = np.zeros((n, len(meta.classes)), np.float32)
    ok = np.zeros(n, bool)
    errors: list[str | None] = [None] * n
    tags: list[Tags | None] = [None] * n
    ood_evidence = ood_rows(backend, n, ood, ood_threshold)
    t0 = time.perf_counter()
    bar = tqdm(total=n, desc="score", unit="img", disable=not progress or None, dynamic_ncols=True)
    for positions, x, batch_errors, batch_tags in input_batches(
        backend, items, batch_size, workers, prefetch, limits, decode
    ):
        if x is not None:
            score_batch(backend, x, positions, probs, ok, errors, ood_evidence)
        for i, found in zip(positions, batch_tags, strict=True):
            tags[i] = found
        for i, message in batch_errors:
            errors[i] = message
        bar.update(len(positions) + len(batch_errors))
    bar.close()
    seconds = time.perf_counter() - t0
    rel = [printable_path(i.path.relative_to(root).as_posix()) for i in items]
    tags = [t if scored else None for t, scored in zip(tags, ok, strict=True)]
    frame = prediction_frame(
        rel,
        probs,
        ok,
        errors,
        meta.classes,
        top_k,
        ood_evidence,
        tags,
        member_columns(items),
        training_flags(meta.training, tags),
    )
    return ScoreRun(frame, seconds, int(ok.sum()), int(n - ok.sum()), series_table(frame, meta.classes))
