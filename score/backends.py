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
from typing import Any

import numpy as np

from mri44.errors import MRI44Error, SettingError
from mri44.onnx_meta import (
    FEATURES_NAME,
    INPUT_NAME,
    OUTPUT_NAME,
    ModelMetadata,
    checkpoint_metadata,
    is_checkpoint,
)
from mri44.runtime import ProviderError, make_session

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Backend:
    meta: ModelMetadata
    # normalised float32 (N, 3, S, S), a numpy array or a torch tensor (on `device` ideally) -> logits (N, classes)
    run: Callable[[Any], np.ndarray]
    provider: str  # what runs it, for the log: an ONNX Runtime provider or "PyTorch cuda bf16"
    device: str = "cpu"  # where inputs should be for the run: "cpu" or "cuda"
    # the same input -> (logits, the last stage's feature map (N, C, h, w)); None for a model that lacks the map
    run_features: Callable[[Any], tuple[np.ndarray, np.ndarray]] | None = None


def load_metadata(session, source: str) -> ModelMetadata:  # session: onnxruntime.InferenceSession
    """The model's mri44 metadata, checked against its actual input and output shapes."""
    meta = ModelMetadata.from_props(session.get_modelmeta().custom_metadata_map, source)
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if [i.name for i in inputs] != [INPUT_NAME]:
        raise SettingError(
            f"{source}: expected one input named {INPUT_NAME!r}, found {[i.name for i in inputs]}"
        )
    shape = inputs[0].shape
    if shape[1:] != [3, meta.preprocess.size, meta.preprocess.size]:
        raise SettingError(
            f"{source}: input shape {shape} does not match its metadata's {meta.preprocess.size}px spec"
        )
    out_shape = outputs[0].shape
    if out_shape[-1] != len(meta.classes):
        raise SettingError(
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
    provider = session.get_providers()[0]
    names = [o.name for o in session.get_outputs()]
    if provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
        return Backend(meta, _io_binding_runner(session), provider, "cuda")

    def run(x: Any) -> np.ndarray:
        batch = x if isinstance(x, np.ndarray) else x.cpu().numpy()
        return session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]

    def run_features(x: Any) -> tuple[np.ndarray, np.ndarray]:
        batch = x if isinstance(x, np.ndarray) else x.cpu().numpy()
        logits, features = session.run([OUTPUT_NAME, FEATURES_NAME], {INPUT_NAME: batch})
        return logits, features

    return Backend(meta, run, provider, run_features=run_features if FEATURES_NAME in names else None)


def _io_binding_runner(session) -> Callable[[Any], np.ndarray]:
    """ONNX Runtime on CUDA fed through I/O binding: an input already on the GPU (a torch CUDA tensor from the
    on-device decoder) is bound in place, not copied to the host and back; numpy inputs are bound as they are."""
    output = OUTPUT_NAME

    def run(x: Any) -> np.ndarray:
        binding = session.io_binding()
        if isinstance(x, np.ndarray):
            binding.bind_cpu_input(INPUT_NAME, np.ascontiguousarray(x, dtype=np.float32))
        else:
            x = x.float().contiguous()
            binding.bind_input(
                INPUT_NAME, "cuda", x.device.index or 0, np.float32, tuple(x.shape), x.data_ptr()
            )
        binding.bind_output(output, "cpu")
        session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    return run


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

    from mri44.checkpoint import Checkpoint
    from mri44.files import checkpoint_path, file_sha256
    from mri44.model import logits_and_features

    if precision not in PRECISIONS:
        raise SettingError(f"unknown --precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    ckpt = Checkpoint.load(path)
    dev = torch_device(device)
    if precision == "auto":
        precision = "bf16" if dev.type == "cuda" else "fp32"
    if precision == "fp16" and dev.type == "cpu":
        raise SettingError(
            "--precision fp16 needs --device cuda (CPU half precision is slow): use fp32 or bf16"
        )
    meta = checkpoint_metadata(
        ckpt, file_sha256(checkpoint_path(path)), {"precision": precision, "runtime": "pytorch"}
    )
    model = ckpt.model().to(dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    network = torch.compile(model) if compile else model
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def prepared(batch: Any) -> torch.Tensor:
        x = torch.as_tensor(batch).to(dev, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if dev.type == "cuda" else x

    @torch.inference_mode()
    def run(batch: Any) -> np.ndarray:
        with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            return network(prepared(batch)).float().cpu().numpy()

    @torch.inference_mode()
    def run_features(batch: Any) -> tuple[np.ndarray, np.ndarray]:
        with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits, features = logits_and_features(model, prepared(batch))
        return logits.float().cpu().numpy(), features.float().cpu().numpy()

    provider = f"PyTorch {dev.type} {precision}{' compiled' if compile else ''}"
    return Backend(meta, run, provider, dev.type, run_features)


def open_backend(path: Path, device: str, precision: str = "auto", compile: bool = False) -> Backend:
    if is_checkpoint(path):
        return checkpoint_backend(path, device, precision, compile)
    if precision not in ("auto",) or compile:
        raise SettingError(
            "--precision and --compile apply to checkpoints; an ONNX model keeps its exported precision"
        )
    return onnx_backend(path, device)
