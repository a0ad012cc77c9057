"""GPU scoring throughput (issue 12): decoding (CPU thread pool vs batched nvJPEG), the model alone (PyTorch fp32 /
bf16 / fp16, eager and CUDA-graphed through torch.compile's reduce-overhead mode; ONNX Runtime CUDA when that
build is installed) and `mri-score`'s pipeline end to end (on-device JPEG decoding + PyTorch), at several batch
sizes, on real JPEGs repeated to at least --gpu-images. Run through `python benchmarks/bench.py --device cuda`.

The network has random weights: throughput does not depend on them, and no checkpoint has to travel to the GPU
machine. `--device cpu` rehearses the whole script on a small input (its numbers mean nothing for a GPU).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from mri44.discover import find_images
from mri44.imageio import decode_bytes
from mri44.model import build_model
from mri44.preprocess import PreprocessSpec, to_model_pixels
from mri44.torch_input import to_model_pixels as tensor_pixels
from score.backends import Backend, onnx_backend
from score.device_decode import decode_on_device
from score.pipeline import score_paths


def random_checkpoint(folder: Path, spec: PreprocessSpec) -> Path:
    """An mri44 checkpoint of a random-weight ResNet-18 with 44 classes and this spec (speed needs no training)."""
    path = folder / "random.pt"
    classes = [f"class{i} T1" for i in range(44)]
    torch.save(
        {"model": build_model(44).state_dict(), "classes": classes, "preprocess": spec.to_dict()}, path
    )
    return path


def timed(fn: Callable[[], object], items: int, repeats: int, sync: Callable[[], None]) -> float:
    """Items per second, median of `repeats` timed calls after one warm-up."""
    fn()
    sync()
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        rates.append(items / (time.perf_counter() - t0))
    return statistics.median(rates)


def model_rows(
    spec: PreprocessSpec, device: torch.device, batches: list[int], repeats: int, sync
) -> list[tuple[str, float]]:
    rows = []
    model = build_model(44).to(device).eval().to(memory_format=torch.channels_last)
    for precision, dtype in (("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        if device.type == "cpu" and precision == "fp16":
            continue
        for mode in ("eager", "compiled (reduce-overhead: CUDA graphs)"):
            if mode != "eager" and (device.type == "cpu" or precision != "bf16"):
                continue  # compiling takes a minute per shape: only for the precision the scorer uses on CUDA
            net = model if mode == "eager" else torch.compile(model, mode="reduce-overhead")
            for b in batches:
                x = torch.randn(b, 3, spec.size, spec.size, device=device).contiguous(
                    memory_format=torch.channels_last
                )

                @torch.inference_mode()
                def step(net=net, x=x, dtype=dtype) -> None:
                    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                        net(x)

                rows.append(
                    (f"model only, PyTorch {precision} {mode}, batch {b}", timed(step, b, repeats, sync))
                )
    return rows


def decode_rows(
    blobs: list[bytes],
    spec: PreprocessSpec,
    device: torch.device,
    batches: list[int],
    workers: int,
    repeats: int,
    sync,
) -> list[tuple[str, float]]:
    def cpu_pool() -> None:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda b: to_model_pixels(decode_bytes(b), spec), blobs, chunksize=64))

    rows = [
        (f"decode + resize, CPU pool of {workers} OpenCV threads", timed(cpu_pool, len(blobs), repeats, sync))
    ]
    encoded = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    for b in batches:

        def on_device(b=b) -> None:
            for s in range(0, len(encoded), b):
                images = decode_on_device(encoded[s : s + b], device)
                torch.stack([tensor_pixels(img, spec) for img in images if img is not None])

        rows.append(
            (
                f"decode + resize on {device.type} (nvJPEG on CUDA), batch {b}",
                timed(on_device, len(blobs), repeats, sync),
            )
        )
    return rows


def end_to_end_rows(
    files: list[Path],
    root: Path,
    spec: PreprocessSpec,
    device: torch.device,
    batches: list[int],
    workers: int,
    repeats: int,
    sync,
) -> list[tuple[str, float]]:
    from score.backends import checkpoint_backend

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = random_checkpoint(Path(tmp), spec)
        precision = "bf16" if device.type == "cuda" else "fp32"
        backend = checkpoint_backend(ckpt, device.type, precision)
        for decode in ("device", "cpu"):
            for b in batches:

                def run(b: int = b, decode: str = decode) -> object:
                    return score_paths(
                        backend, root, files, batch_size=b, workers=workers, progress=False, decode=decode
                    )

                rows.append(
                    (
                        f"end to end, mri-score pipeline, PyTorch {precision}, decode {decode}, batch {b}",
                        timed(run, len(files), repeats, sync),
                    )
                )
    onnx_cuda = _onnx_cuda_rows(spec, batches, repeats, sync) if device.type == "cuda" else []
    return rows + onnx_cuda


def _onnx_cuda_rows(spec: PreprocessSpec, batches: list[int], repeats: int, sync) -> list[tuple[str, float]]:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return [
            (
                "model only, ONNX Runtime CUDA: not measured (this onnxruntime build has no CUDA provider)",
                float("nan"),
            )
        ]
    from export.onnx_export import export_onnx

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        proto, _, _ = export_onnx(random_checkpoint(Path(tmp), spec), fp16=True)
        path = Path(tmp) / "m.onnx"
        path.write_bytes(proto.SerializeToString())
        backend: Backend = onnx_backend(path, "cuda")
        for b in batches:
            x = torch.randn(b, 3, spec.size, spec.size, device="cuda")
            rows.append(
                (
                    f"model only, ONNX Runtime CUDA fp16 (I/O binding), batch {b}",
                    timed(lambda x=x: backend.run(x), b, repeats, sync),
                )
            )
    return rows


def run(data: Path, device_name: str, images: int, repeats: int, workers: int, size: int) -> list[str]:
    device = torch.device(device_name)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    spec = PreprocessSpec(size=size)
    files = [p for p in find_images(data) if p.suffix.lower() in (".jpg", ".jpeg")]
    blobs = [p.read_bytes() for p in files]
    reps = -(-images // max(1, len(blobs)))
    blobs, many = (blobs * reps)[:images], (files * reps)[:images]
    batches = [64, 256, 1024] if device.type == "cuda" else [16]
    rows = decode_rows(blobs, spec, device, batches, workers, repeats, sync)
    rows += model_rows(spec, device, batches, repeats, sync)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "in"
        for i, src in enumerate(many):  # the same files many times, as links in class folders
            link = root / src.parent.name / f"{i:06d}_{src.name}"
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(src.resolve())
        rows += end_to_end_rows(
            sorted(root.rglob("*.*")), root, spec, device, batches, workers, repeats, sync
        )
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU rehearsal"
    best = {
        key: max((v for k, v in rows if k.startswith(key) and v == v), default=float("nan"))
        for key in ("decode + resize on", "model only", "end to end, mri-score pipeline")
    }
    ratio = best["end to end, mri-score pipeline"] / min(best["decode + resize on"], best["model only"])
    return [
        f"Device: {name}; {len(blobs)} JPEG decodes per pass ({len(set(many))} distinct files), {size} px, medians of {repeats} runs; torch {torch.__version__}",
        "",
        "| measurement | images/s |",
        "| --- | ---: |",
        *[f"| {k} | {v:.0f} |" for k, v in rows],
        "",
        f"best end to end / min(best on-device decode, best model only) = {ratio:.2f} (target >= 0.8); "
        f"best end to end {best['end to end, mri-score pipeline']:.0f} img/s (target >= 10,000 at 256 px).",
    ]
