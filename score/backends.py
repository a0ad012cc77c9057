"""What runs the network when scoring: ONNX Runtime for exported models, PyTorch for checkpoints.

Both take the same input (the shared core's normalised float32 NCHW batch) and give logits, and both carry the
same metadata (class names, preprocessing spec, temperature), so file discovery, decoding, preprocessing and the
output tables are one code path whatever runs the model. PyTorch is the way onto a GPU where onnxruntime-gpu
does not match the machine's CUDA (on CUDA: bf16 or fp16 autocast, channels_last, optionally torch.compile).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mri44.errors import MRI44Error
from mri44.onnx_meta import INPUT_NAME, ModelMetadata
from mri44.runtime import ProviderError, make_session

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Backend:
    meta: ModelMetadata
    run: Callable[[np.ndarray], np.ndarray]  # normalised float32 (N, 3, S, S) -> logits (N, classes)
    provider: str  # what runs it, for the log: an ONNX Runtime provider or "PyTorch cuda bf16"


def load_metadata(session, source: str) -> ModelMetadata:  # session: onnxruntime.InferenceSession
    """The model's mri44 metadata, checked against its actual input and output shapes."""
    meta = ModelMetadata.from_props(session.get_modelmeta().custom_metadata_map, source)
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if [i.name for i in inputs] != [INPUT_NAME]:
        raise ValueError(
            f"{source}: expected one input named {INPUT_NAME!r}, found {[i.name for i in inputs]}"
        )
    shape = inputs[0].shape
    if shape[1:] != [3, meta.preprocess.size, meta.preprocess.size]:
        raise ValueError(
            f"{source}: input shape {shape} does not match its metadata's {meta.preprocess.size}px spec"
        )
    out_shape = outputs[0].shape
    if out_shape[-1] != len(meta.classes):
        raise ValueError(
            f"{source}: output has {out_shape[-1]} classes but the metadata lists {len(meta.classes)}"
        )
    return meta


def onnx_backend(path: Path, device: str) -> Backend:
    try:
        session = make_session(path, device)
    except ProviderError:
        raise
    except Exception as exc:  # onnxruntime raises its own types for files that are not ONNX models
        raise MRI44Error(f"cannot load {path} as an ONNX model: {exc}") from exc
    meta = load_metadata(session, str(path))
    return Backend(meta, lambda x: session.run(None, {INPUT_NAME: x})[0], session.get_providers()[0])


def torch_device(device: str):
    """auto: CUDA when PyTorch sees a GPU, else the CPU; cuda without a GPU is refused, never a silent fallback."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ProviderError("--device cuda was asked but PyTorch sees no CUDA GPU; use --device cpu")
    if device not in ("cpu", "cuda"):
        raise ProviderError(f"--device {device} is for ONNX models; a checkpoint runs on auto, cpu or cuda")
    return torch.device(device)


def checkpoint_backend(path: Path, device: str, precision: str = "auto", compile: bool = False) -> Backend:
    """A training checkpoint (best.pt or its run folder) scored by PyTorch."""
    import torch

    from mri44.model import ARCH, checkpoint_path, file_sha256, load_checkpoint, model_from_checkpoint
    from mri44.preprocess import PreprocessSpec

    if precision not in PRECISIONS:
        raise ValueError(f"unknown --precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    ckpt = load_checkpoint(path)
    dev = torch_device(device)
    if precision == "auto":
        precision = "bf16" if dev.type == "cuda" else "fp32"
    if precision == "fp16" and dev.type == "cpu":
        raise ValueError(
            "--precision fp16 needs --device cuda (CPU half precision is slow): use fp32 or bf16"
        )
    meta = ModelMetadata(
        classes=list(ckpt["classes"]),
        preprocess=PreprocessSpec.from_dict(ckpt["preprocess"]),
        arch=ckpt.get("arch", ARCH),
        source_sha256=file_sha256(checkpoint_path(path)),
        export={"precision": precision, "runtime": "pytorch"},
        temperature=float(ckpt.get("temperature", 1.0)),
    )
    model = model_from_checkpoint(ckpt).to(dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    network = torch.compile(model) if compile else model
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    @torch.inference_mode()
    def run(batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch).to(dev, non_blocking=True)
        if dev.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            return network(x).float().cpu().numpy()

    return Backend(meta, run, f"PyTorch {dev.type} {precision}{' compiled' if compile else ''}")


def is_checkpoint(path: Path) -> bool:
    """A run folder or a .pt file is a checkpoint; anything else is taken for an ONNX model."""
    return path.is_dir() or path.suffix.lower() in (".pt", ".pth")


def open_backend(path: Path, device: str, precision: str = "auto", compile: bool = False) -> Backend:
    if is_checkpoint(path):
        return checkpoint_backend(path, device, precision, compile)
    if precision not in ("auto",) or compile:
        raise ValueError(
            "--precision and --compile apply to checkpoints; an ONNX model keeps its exported precision"
        )
    return onnx_backend(path, device)
