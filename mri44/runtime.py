"""ONNX Runtime sessions with an explicit provider policy, shared by the parity check, the scorer and benchmarks.

`auto` tries TensorRT -> CUDA -> CPU, skipping GPU providers when no NVIDIA driver is loadable (ONNX Runtime
would otherwise print errors for each). Asking for `cuda` or `tensorrt` and not getting it is an error, never a
silent fall back to the CPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
from collections.abc import Iterator
from typing import Any

import onnxruntime as ort

from mri44.errors import MRI44Error

PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


class ProviderError(MRI44Error, RuntimeError):
    """The asked execution provider is not available or did not start."""


def _nvidia_driver_present() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False


def provider_chain(device: str) -> list[str]:
    available = set(ort.get_available_providers())
    if device == "auto":
        gpu = ["tensorrt", "cuda"] if _nvidia_driver_present() else []
        return [PROVIDERS[d] for d in [*gpu, "cpu"] if PROVIDERS[d] in available]
    if device not in PROVIDERS:
        raise ProviderError(f"unknown device {device!r}: choose auto, cpu, cuda or tensorrt")
    if PROVIDERS[device] not in available:
        raise ProviderError(
            f"{PROVIDERS[device]} is not in this onnxruntime build (available: {', '.join(sorted(available))}); "
            "install onnxruntime-gpu for cuda/tensorrt, or use --device cpu"
        )
    if device == "tensorrt":
        return [PROVIDERS["tensorrt"], PROVIDERS["cuda"], PROVIDERS["cpu"]]
    return [PROVIDERS[device], PROVIDERS["cpu"]] if device == "cuda" else [PROVIDERS["cpu"]]


def make_session(
    model: str | os.PathLike[str] | bytes, device: str = "auto", threads: int = 0
) -> ort.InferenceSession:
    """A session on the asked device; raises ProviderError when a GPU provider was asked and is not active."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle ONNX Runtime threads spin by default, taking the cores our decoding threads need between batches:
    # on 2 cores, end-to-end scoring went from 94 to 101 images/s without spinning (benchmarks/bench.py).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    chain = provider_chain(device)
    source = model if isinstance(model, bytes) else os.fspath(model)
    session = ort.InferenceSession(source, options, providers=chain)
    active = session.get_providers()[0]
    if device in ("cuda", "tensorrt") and active != PROVIDERS[device]:
        raise ProviderError(
            f"--device {device} was asked but ONNX Runtime runs {active} (the GPU provider failed to start: check the "
            "NVIDIA driver, CUDA and cuDNN libraries); use --device cpu to score on the CPU"
        )
    return session


@functools.cache
def _blas_pools() -> Any:
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()  # finds the loaded BLAS libraries once (0.5 ms); limiting then costs 13 us


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """NumPy's BLAS (OpenBLAS) on one thread inside: the out-of-distribution check's small matrix products on
    every batch woke OpenBLAS's second thread, which then spun on a core ONNX Runtime's threads needed for the
    next batch. On 2 cores the default's end-to-end rate went from 0.80 to 0.88 of its forward pass with it
    (benchmarks/decode_options.py). The limit is process-wide while it holds and is restored after."""
    with _blas_pools().limit(limits=1, user_api="blas"):
        yield
