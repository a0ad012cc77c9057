"""GPU scoring throughput (issue 12): decoding (CPU thread pool vs batched nvJPEG), the model alone (PyTorch fp32 /
bf16 / fp16, eager and CUDA-graphed through torch.compile's reduce-overhead mode; ONNX Runtime CUDA when that
build is installed) and `mri-score`'s pipeline end to end (on-device JPEG decoding + PyTorch), at several batch
sizes, on real JPEGs repeated to at least --gpu-images. Run through `python benchmarks/bench.py --device cuda`.

The network has random weights: throughput does not depend on them, and no checkpoint has to travel to the GPU
machine. `--device cpu` rehearses the whole script on a small input (its numbers mean nothing for a GPU).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from bench_util import median_rate, subset_folder

from mri44.checkpoint import Checkpoint
from mri44.discover import find_images
from mri44.imageio import decode_bytes
from mri44.model import build_model
from mri44.preprocess import PreprocessSpec, to_model_pixels
from mri44.readers import list_items
from mri44.stages.score.backends import checkpoint_backend, onnx_backend
from mri44.stages.score.device_decode import decode_on_device
from mri44.stages.score.pipeline import score_items
from mri44.torch_input import to_model_pixels as tensor_pixels


@dataclass(frozen=True)
class Setup:
    """What every table of this benchmark is measured with."""

    spec: PreprocessSpec
    device: torch.device
    batches: list[int]
    workers: int
    repeats: int

    def rate(self, fn: Callable[[], object], items: int) -> float:
        sync = torch.cuda.synchronize if self.device.type == "cuda" else None
        return median_rate(fn, items, self.repeats, sync)


def random_checkpoint(folder: Path, spec: PreprocessSpec) -> Path:
    """An mri44 checkpoint of a random-weight ResNet-18 with 44 classes and this spec (speed needs no training)."""
    path = folder / "random.pt"
    classes = [f"class{i} T1" for i in range(44)]
    Checkpoint(weights=build_model(44).state_dict(), classes=classes, preprocess=spec).save(path)
    return path


def model_rows(setup: Setup) -> list[tuple[str, float]]:
    spec, device = setup.spec, setup.device
    rows = []
    model = build_model(44).to(device).eval().to(memory_format=torch.channels_last)
    for precision, dtype in (("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        if device.type == "cpu" and precision == "fp16":
            continue
        for mode in ("eager", "compiled (reduce-overhead: CUDA graphs)"):
            if mode != "eager" and (device.type == "cpu" or precision != "bf16"):
                continue  # compiling takes a minute per shape: only for the precision the scorer uses on CUDA
            net = model if mode == "eager" else torch.compile(model, mode="reduce-overhead")
            for b in setup.batches:
                x = torch.randn(b, 3, spec.size, spec.size, device=device).contiguous(
                    memory_format=torch.channels_last
                )

                @torch.inference_mode()
                def step(net=net, x=x, dtype=dtype) -> None:
                    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                        net(x)

                rows.append((f"model only, PyTorch {precision} {mode}, batch {b}", setup.rate(step, b)))
    return rows


def decode_rows(blobs: list[bytes], setup: Setup) -> list[tuple[str, float]]:
    spec, device = setup.spec, setup.device

    def cpu_pool() -> None:
        with ThreadPoolExecutor(setup.workers) as pool:
            list(pool.map(lambda b: to_model_pixels(decode_bytes(b), spec), blobs, chunksize=64))

    rows = [
        (f"decode + resize, CPU pool of {setup.workers} OpenCV threads", setup.rate(cpu_pool, len(blobs)))
    ]
    encoded = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    for b in setup.batches:

        def on_device(b: int = b) -> None:
            for s in range(0, len(encoded), b):
                images = decode_on_device(encoded[s : s + b], device)
                torch.stack([tensor_pixels(img, spec) for img in images if img is not None])

        rows.append(
            (
                f"decode + resize on {device.type} (nvJPEG on CUDA), batch {b}",
                setup.rate(on_device, len(blobs)),
            )
        )
    return rows


def end_to_end_rows(root: Path, setup: Setup) -> list[tuple[str, float]]:
    """mri-score's pipeline on the folder, decoding on the device and on the CPU, PyTorch bf16 on CUDA."""
    files = find_images(root)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        precision = "bf16" if setup.device.type == "cuda" else "fp32"
        backend = checkpoint_backend(random_checkpoint(Path(tmp), setup.spec), setup.device.type, precision)
        for decode in ("device", "cpu"):
            for b in setup.batches:

                def run(b: int = b, decode: str = decode) -> object:
                    return score_items(
                        backend,
                        root,
                        list_items(files),
                        batch_size=b,
                        workers=setup.workers,
                        progress=False,
                        decode=decode,
                    )

                name = f"end to end, mri-score pipeline, PyTorch {precision}, decode {decode}, batch {b}"
                rows.append((name, setup.rate(run, len(files))))
    return rows + (onnx_cuda_rows(setup) if setup.device.type == "cuda" else [])


def onnx_cuda_rows(setup: Setup) -> list[tuple[str, float]]:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return [
            (
                "model only, ONNX Runtime CUDA: not measured (this onnxruntime build has no CUDA provider)",
                float("nan"),
            )
        ]
    from mri44.stages.export.onnx_export import export_onnx

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        proto, _, _ = export_onnx(random_checkpoint(Path(tmp), setup.spec), fp16=True)
        path = Path(tmp) / "m.onnx"
        path.write_bytes(proto.SerializeToString())
        backend = onnx_backend(path, "cuda")
        for b in setup.batches:
            x = torch.randn(b, 3, setup.spec.size, setup.spec.size, device="cuda")
            name = f"model only, ONNX Runtime CUDA fp16 (I/O binding), batch {b}"
            rows.append((name, setup.rate(lambda x=x: backend.run(x), b)))
    return rows


def run(data: Path, device_name: str, images: int, repeats: int, workers: int, size: int) -> list[str]:
    device = torch.device(device_name)
    batches = [64, 256, 1024] if device.type == "cuda" else [16]
    setup = Setup(PreprocessSpec(size=size), device, batches, workers, repeats)
    files = [p for p in find_images(data) if p.suffix.lower() in (".jpg", ".jpeg")]
    reps = -(-images // max(1, len(files)))
    blobs = ([p.read_bytes() for p in files] * reps)[:images]
    rows = decode_rows(blobs, setup) + model_rows(setup)
    with tempfile.TemporaryDirectory() as tmp:  # the same files many times, as links in class folders
        rows += end_to_end_rows(subset_folder(files, data, images, Path(tmp) / "in"), setup)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU rehearsal"
    best = {
        key: max((v for k, v in rows if k.startswith(key) and v == v), default=float("nan"))
        for key in ("decode + resize on", "model only", "end to end, mri-score pipeline")
    }
    ratio = best["end to end, mri-score pipeline"] / min(best["decode + resize on"], best["model only"])
    return [
        f"Device: {name}; {len(blobs)} JPEG decodes per pass ({min(images, len(files))} distinct files), {size} px, "
        f"medians of {repeats} runs; torch {torch.__version__}",
        "",
        "| measurement | images/s |",
        "| --- | ---: |",
        *[f"| {k} | {v:.0f} |" for k, v in rows],
        "",
        f"best end to end / min(best on-device decode, best model only) = {ratio:.2f} (target >= 0.8); "
        f"best end to end {best['end to end, mri-score pipeline']:.0f} img/s (target >= 10,000 at 256 px).",
    ]
