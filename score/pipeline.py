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
from mri44.imageio import MAX_PIXELS, ImageDecodeError
from mri44.labels import parse_label
from mri44.onnx_meta import ModelMetadata
from mri44.preprocess import PreprocessSpec, load_pixels, normalize
from score.backends import Backend


@dataclass
class ScoreRun:
    predictions: pl.DataFrame
    seconds: float
    scored: int
    failed: int


def decoded_batches(
    paths: list[Path],
    spec: PreprocessSpec,
    batch_size: int,
    workers: int,
    prefetch: int,
    max_pixels: int = MAX_PIXELS,
):
    """Yield (positions, pixels, errors) in file order; errors: list of (position, message)."""
    with ThreadPoolExecutor(max(1, workers)) as pool:
        pending: collections.deque[tuple[int, Future]] = collections.deque()
        next_i = 0

        def fill() -> None:
            nonlocal next_i
            while next_i < len(paths) and len(pending) < prefetch:
                pending.append((next_i, pool.submit(load_pixels, paths[next_i], spec, max_pixels)))
                next_i += 1

        fill()
        positions: list[int] = []
        pixels: list[np.ndarray] = []
        errors: list[tuple[int, str]] = []
        while pending:
            i, future = pending.popleft()
            fill()
            try:
                pixels.append(future.result())
                positions.append(i)
            except ImageDecodeError as exc:
                errors.append((i, exc.reason))
            except Exception as exc:  # anything else about one file stays about that file
                errors.append((i, f"{exc.__class__.__name__}: {exc}"))
            if len(pixels) == batch_size or (not pending and (pixels or errors)):
                yield positions, (np.stack(pixels) if pixels else None), errors
                positions, pixels, errors = [], [], []


def printable_path(name: str) -> str:
    """A file name that is not valid UTF-8 (undecodable bytes arrive as surrogates) with those bytes written as
    \\xNN escapes: the row is kept and the table can be written, where the raw name made the write crash."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def prediction_frame(
    rel_paths: list[str],
    probs: np.ndarray,
    ok: np.ndarray,
    errors: list[str | None],
    meta: ModelMetadata,
    top_k: int,
) -> pl.DataFrame:
    """One row per file: status, prediction, top-k, tumour/contrast marginals, and the folder's label if known."""
    classes = np.asarray(meta.classes)
    parsed = [parse_label(c) for c in meta.classes]
    tumors = sorted({p.tumor_type for p in parsed})
    contrasts = sorted({p.contrast for p in parsed})
    tumor_of = np.array([tumors.index(p.tumor_type) for p in parsed])
    contrast_of = np.array([contrasts.index(p.contrast) for p in parsed])
    tumor_probs = probs @ np.eye(len(tumors))[tumor_of]
    contrast_probs = probs @ np.eye(len(contrasts))[contrast_of]
    k = min(top_k, len(classes))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    pred = order[:, 0]
    rows = np.arange(len(rel_paths))
    predicted: dict[str, pl.Series] = {
        "pred_class": pl.Series(classes[pred]),
        "pred_tumor_type": pl.Series(np.asarray(tumors)[tumor_of[pred]]),
        "pred_contrast": pl.Series(np.asarray(contrasts)[contrast_of[pred]]),
        "confidence": pl.Series(probs[rows, pred].astype(np.float64)),
        "pred_tumor_type_prob": pl.Series(tumor_probs[rows, tumor_of[pred]].astype(np.float64)),
        "pred_contrast_prob": pl.Series(contrast_probs[rows, contrast_of[pred]].astype(np.float64)),
    }
    for j in range(k):
        predicted[f"top{j + 1}_class"] = pl.Series(classes[order[:, j]])
        predicted[f"top{j + 1}_prob"] = pl.Series(probs[rows, order[:, j]].astype(np.float64))
    frame = pl.DataFrame(
        {"path": rel_paths, "ok": ok, "error": pl.Series(errors, dtype=pl.String), **predicted}
    )
    # The label is the nearest enclosing folder named like a class, so CLASS/case01/series2/x.jpg is labelled
    # CLASS, as training labels every file under DATA/CLASS/ (a run's folders are its classes).
    folders = pl.col("path").str.split("/").list.head(pl.col("path").str.count_matches("/"))
    label = folders.list.eval(pl.element().filter(pl.element().is_in(list(meta.classes)))).list.last()
    return frame.select(
        "path",
        status=pl.when("ok").then(pl.lit("ok")).otherwise(pl.lit("error")),
        error="error",
        # Predictions of files that failed are meaningless zeros: null them.
        **{name: pl.when("ok").then(pl.col(name)) for name in predicted},
        true_class=label,
    )


def input_batches(
    backend: Backend,
    paths: list[Path],
    batch_size: int,
    workers: int,
    prefetch: int | None,
    max_pixels: int,
    decode: str,
) -> Iterator[tuple[list[int], Any, list[tuple[int, str]]]]:
    """(positions, normalised batch, errors) in file order: decoded by OpenCV threads on the CPU (decode="cpu"),
    or JPEGs decoded where the model runs (decode="device": nvJPEG on CUDA; score/device_decode.py)."""
    spec = backend.meta.preprocess
    if decode == "device":
        import torch

        from score.device_decode import device_batches

        yield from device_batches(paths, spec, batch_size, workers, torch.device(backend.device), max_pixels)
        return
    if decode != "cpu":
        raise ValueError(f"unknown --decode {decode!r}: choose cpu or device")
    window = prefetch or max(2 * batch_size, 8)
    for positions, pixels, errors in decoded_batches(paths, spec, batch_size, workers, window, max_pixels):
        yield positions, (None if pixels is None else normalize(pixels, spec)), errors


def score_batch(
    backend: Backend,
    x: Any,
    positions: list[int] | np.ndarray,
    probs: np.ndarray,
    ok: np.ndarray,
    errors: list[str | None],
) -> None:
    """Run the model on one normalised batch and fill its rows: temperature-scaled probabilities, and ok only where
    every logit is finite (a NaN or inf output becomes that file's error row, never a confident class 0)."""
    logits = backend.run(x)
    finite = np.isfinite(logits).all(1)
    probs[positions] = softmax(np.where(finite[:, None], logits, 0.0), backend.meta.temperature)
    ok[positions] = finite
    for i in np.asarray(positions)[~finite]:
        errors[i] = "model produced non-finite output (NaN or inf) for this image"


def score_paths(
    backend: Backend,
    root: Path,
    paths: list[Path],
    batch_size: int = 32,
    workers: int = 2,
    top_k: int = 3,
    prefetch: int | None = None,
    progress: bool = True,
    max_pixels: int = MAX_PIXELS,
    decode: str = "cpu",
) -> ScoreRun:
    """Score files (found under root) in order; returns one prediction row per file."""
    meta = backend.meta
    n = len(paths)
    probs = np.zeros((n, len(meta.classes)), np.float32)
    ok = np.zeros(n, bool)
    errors: list[str | None] = [None] * n
    t0 = time.perf_counter()
    bar = tqdm(total=n, desc="score", unit="img", disable=not progress or None, dynamic_ncols=True)
    for positions, x, batch_errors in input_batches(
        backend, paths, batch_size, workers, prefetch, max_pixels, decode
    ):
        if x is not None:
            score_batch(backend, x, positions, probs, ok, errors)
        for i, message in batch_errors:
            errors[i] = message
        bar.update(len(positions) + len(batch_errors))
    bar.close()
    seconds = time.perf_counter() - t0
    rel = [printable_path(p.relative_to(root).as_posix()) for p in paths]
    frame = prediction_frame(rel, probs, ok, errors, meta, top_k)
    return ScoreRun(frame, seconds, int(ok.sum()), int(n - ok.sum()))
