"""Where the scorer's time outside the model goes, and what two ways of cutting it would give (issue 31: end to end
at 0.92 of the model's own rate). Prints two Markdown tables:

1. The pipeline end to end (decode threads, batches of 32, ONNX Runtime, rows) with 1 or 2 decoding threads and
   OpenCV's own thread pool at 1 or 2, against the model alone on ready batches of the same images.
2. Per JPEG: the shipped decode (full size, then an area resize to the model's side, then the fingerprint) against
   libjpeg's DCT-domain decode at half size (cv2.IMREAD_REDUCED_*_2) followed by the same resize: milliseconds,
   pixel differences at the model's input, and how many of the model's predictions change.
3. Scheduling, on ready-to-decode files without rows: the model alone (one session of 2 threads, or two 1-thread
   sessions side by side), decoding overlapped with the model (the shipped way), decoding then the model (no
   overlap), and the overlap with ONNX Runtime's dynamic blocks or with the decoding threads at nice 19.

    python benchmarks/decode_options.py --data ../shared/data/brain-mri-44c --images 1024 --model default

Run it on a quiet machine: the ratios mean nothing beside a training run.
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_util import bench_parser, median_rate  # noqa: E402

from mri44.calibration import softmax  # noqa: E402
from mri44.discover import find_images  # noqa: E402
from mri44.fingerprint import signature  # noqa: E402
from mri44.imageio import decode_bytes, read_file  # noqa: E402
from mri44.limits import Limits  # noqa: E402
from mri44.onnx_meta import FEATURES_NAME, INPUT_NAME, OUTPUT_NAME  # noqa: E402
from mri44.preprocess import PreprocessSpec, load_item, normalize, to_model_pixels  # noqa: E402
from mri44.readers import list_items  # noqa: E402
from mri44.samples import spread  # noqa: E402
from mri44.stages.score.backends import Backend, onnx_backend  # noqa: E402
from mri44.stages.score.pipeline import decoded_batches, score_items  # noqa: E402
from mri44.stages.score.run import resolve_model  # noqa: E402


def pipeline_table(backend: Backend, data: Path, paths: list[Path], repeats: int) -> None:
    spec = backend.meta.preprocess
    batches = decoded_batches(list_items(paths), spec, 32, 2, 64, Limits())
    ready = [normalize(p, spec) for _, p, _, _ in batches if p is not None and len(p) == 32]
    alone = median_rate(lambda: [backend.run(x) for x in ready], 32 * len(ready), repeats)
    score_items(backend, data, list_items(paths[:32]), progress=False)  # warm-up
    print("| decoding threads | OpenCV threads | end to end (img/s) | / model alone |")
    print("| ---: | ---: | ---: | ---: |")
    for opencv in (cv2.getNumThreads(), 1):
        cv2.setNumThreads(opencv)
        for workers in (2, 1):
            rates = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                score_items(backend, data, list_items(paths), progress=False, workers=workers)
                rates.append(len(paths) / (time.perf_counter() - t0))
            rate = statistics.median(rates)
            print(f"| {workers} | {opencv} | {rate:.1f} | {rate / alone:.3f} |")
    print(f"\nmodel alone: {alone:.1f} img/s\n")


def reduced_decode(raw: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """A JPEG decoded at half size in the DCT domain (full size when half would be smaller than the model's side)."""
    grey = spec.channels == "grey"
    image = cv2.imdecode(raw, cv2.IMREAD_REDUCED_GRAYSCALE_2 if grey else cv2.IMREAD_REDUCED_COLOR_2)
    if max(image.shape[:2]) < spec.size:
        image = cv2.imdecode(raw, cv2.IMREAD_GRAYSCALE if grey else cv2.IMREAD_COLOR)
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def decode_table(backend: Backend, paths: list[Path], repeats: int) -> None:
    spec = backend.meta.preprocess
    raws = [read_file(p) for p in paths if p.suffix.lower() in (".jpg", ".jpeg")]
    ways = {
        "full size (shipped)": lambda r: decode_bytes(r),
        "half size, DCT domain": lambda r: reduced_decode(r, spec),
    }
    print(f"{len(raws)} JPEGs, model input {spec.size} px {spec.channels}, medians of {repeats}\n")
    print("| decode | decode + resize (ms/img) | + fingerprint (ms/img) |")
    print("| --- | ---: | ---: |")
    pixels = {}
    for name, decode in ways.items():
        resize, whole = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            images = [decode(r) for r in raws]
            pixels[name] = np.stack([to_model_pixels(i, spec) for i in images])
            t1 = time.perf_counter()
            for i in images:
                signature(i)
            t2 = time.perf_counter()
            resize.append((t1 - t0) / len(raws) * 1e3)
            whole.append((t2 - t0) / len(raws) * 1e3)
        print(f"| {name} | {statistics.median(resize):.3f} | {statistics.median(whole):.3f} |")
    full, half = pixels.values()
    diff = np.abs(full.astype(np.int16) - half.astype(np.int16))
    probs = [
        softmax(
            np.concatenate(
                [backend.run(normalize(p[i : i + 32], spec)) for i in range(0, len(p), 32)]
            ).astype(np.float64),
            backend.meta.temperature,
        )
        for p in (full, half)
    ]
    changed = int((probs[0].argmax(1) != probs[1].argmax(1)).sum())
    print(
        f"\nAt the model's input: mean |difference| {diff.mean():.2f} grey levels, 99th percentile "
        f"{np.percentile(diff, 99):.0f}, largest {diff.max()}; top-1 class changed on {changed} of {len(raws)}, "
        f"largest probability difference {np.abs(probs[0] - probs[1]).max():.3f}"
    )


def scheduling_table(model: Path, items: list, spec: PreprocessSpec, repeats: int) -> None:
    """What changing who runs when would give: img/s and the ratio to the model alone (one 2-thread session)."""

    def session(threads: int = 0, dynamic_blocks: int = 0) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as mri44.runtime
        options.intra_op_num_threads = threads
        if dynamic_blocks:
            options.add_session_config_entry("session.dynamic_block_base", str(dynamic_blocks))
        return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])

    ready = [
        normalize(p, spec)
        for _, p, _, _ in decoded_batches(items, spec, 32, 2, 64, Limits())
        if p is not None
    ]
    n = sum(len(x) for x in ready)
    shipped, dynamic, single = session(), session(dynamic_blocks=4), session(threads=1)
    pool = ThreadPoolExecutor(2)

    def forward(s: ort.InferenceSession) -> Callable[[np.ndarray], object]:
        return lambda x: s.run([OUTPUT_NAME, FEATURES_NAME], {INPUT_NAME: x})

    def overlapped(s: ort.InferenceSession, nice: int = 0) -> Callable[[], None]:
        def go() -> None:
            init = (
                (lambda: os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)) if nice else None
            )
            with ThreadPoolExecutor(2, initializer=init) as workers:
                futures = [workers.submit(load_item, i, spec) for i in items]
                for start in range(0, len(items), 32):
                    batch = np.stack([f.result()[0] for f in futures[start : start + 32]])
                    forward(s)(normalize(batch, spec))

        return go

    def serial() -> None:
        for start in range(0, len(items), 32):
            batch = np.stack(
                [r[0] for r in pool.map(lambda i: load_item(i, spec), items[start : start + 32])]
            )
            forward(shipped)(normalize(batch, spec))

    alone = median_rate(lambda: [forward(shipped)(x) for x in ready], n, repeats)
    ways = {
        "model alone, two 1-thread sessions side by side": (
            lambda: list(pool.map(forward(single), ready)),
            n,
        ),
        "decoding overlapped with the model (shipped)": (overlapped(shipped), len(items)),
        "decoding, then the model (no overlap)": (serial, len(items)),
        "overlapped, ONNX Runtime dynamic blocks (base 4)": (overlapped(dynamic), len(items)),
        "overlapped, decoding threads at nice 19": (overlapped(shipped, nice=19), len(items)),
    }
    print("| schedule | img/s | / model alone |")
    print("| --- | ---: | ---: |")
    print(f"| model alone, one 2-thread session | {alone:.1f} | 1.000 |")
    for name, (fn, count) in ways.items():
        rate = median_rate(fn, count, repeats)
        print(f"| {name} | {rate:.1f} | {rate / alone:.3f} |")


def main() -> None:
    parser = bench_parser(__doc__, images=1024)
    parser.add_argument("--model", default="default", help="a shipped model name or an ONNX file")
    parser.add_argument("--only", choices=("pipeline", "decode", "scheduling"), help="print this table alone")
    args = parser.parse_args()
    model = resolve_model(args.model)
    backend = onnx_backend(model, "cpu")
    paths = spread(find_images(args.data), args.images)
    print(f"{args.model}: {len(paths)} images from {args.data}\n")
    if args.only in (None, "pipeline"):
        pipeline_table(backend, args.data, paths[:256], args.repeats)
    if args.only in (None, "decode"):
        decode_table(backend, paths, args.repeats)
    if args.only in (None, "scheduling"):
        scheduling_table(model, list_items(paths[:256]), backend.meta.preprocess, args.repeats)


if __name__ == "__main__":
    main()
