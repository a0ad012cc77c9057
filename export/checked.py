"""Export as a library: build the ONNX model (and optionally a TensorRT engine), gate each on parity with
PyTorch, and write only what passed. `onnx-export` is a thin command over these functions (the shape of timm's
onnx_export.py over timm/utils/onnx.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mri44.atomic import atomic_path
from mri44.errors import MRI44Error
from mri44.files import checkpoint_path
from mri44.onnx_meta import INPUT_NAME, ModelMetadata
from mri44.runtime import make_session

from .onnx_export import DEFAULT_OPSET, export_onnx
from .parity import ParityRow, check_parity, random_batches, real_batch, training_data


@dataclass(frozen=True)
class ExportRequest:
    checkpoint: Path  # best.pt or its run folder
    opset: int = DEFAULT_OPSET
    fp16: bool = False
    int8_calibration: Path | None = (
        None  # image folder: static INT8 calibrated on the run's train images in it
    )
    calibration_images: int = 256
    tensorrt: bool = False
    check: bool = True
    images: Path | None = None  # real images for the gate (default: the calibration or training folder)
    max_images: int = 64


@dataclass
class Exported:
    onnx_bytes: bytes
    meta: ModelMetadata
    engine: bytes | None = None
    checks: list[tuple[str, list[ParityRow]]] = field(default_factory=list)  # (title, rows) per runtime

    @property
    def passed(self) -> bool:
        return all(row.passed for _, rows in self.checks for row in rows)


def gate_batches(request: ExportRequest, meta: ModelMetadata) -> dict[str, np.ndarray]:
    """Random batches plus real images: always real ones, or a one-line error saying how to give them."""
    batches = random_batches(meta.preprocess)
    real = request.images or request.int8_calibration or training_data(request.checkpoint)
    if real is None:
        raise MRI44Error("no real images for the parity gate: pass --images DIR (or --no-check)")
    batch, _ = real_batch(real, meta.preprocess, request.max_images)
    batches[f"real x{len(batch)}"] = batch
    return batches


def export_checked(request: ExportRequest) -> Exported:
    """The exported model(s) in memory with their parity tables; nothing is written here."""
    files = None
    if request.int8_calibration is not None:
        from .int8 import calibration_files

        files = calibration_files(
            request.int8_calibration, checkpoint_path(request.checkpoint), request.calibration_images
        )
    proto, model, meta = export_onnx(
        request.checkpoint, opset=request.opset, fp16=request.fp16, int8_calibration=files
    )
    result = Exported(onnx_bytes=proto.SerializeToString(), meta=meta)
    precision = meta.export["precision"]
    batches = gate_batches(request, meta) if request.check else {}
    if request.check:
        session = make_session(result.onnx_bytes, "cpu")
        rows = check_parity(model, lambda x: session.run(None, {INPUT_NAME: x})[0], batches, precision)
        result.checks.append((f"parity {precision} ONNX Runtime (CPU) vs PyTorch", rows))
    if request.tensorrt and result.passed:
        from .tensorrt_engine import build_engine, engine_runner

        result.engine = build_engine(result.onnx_bytes, meta.preprocess.size, request.fp16)
        if request.check:
            rows = check_parity(model.float(), engine_runner(result.engine), batches, precision)
            result.checks.append((f"parity {precision} TensorRT vs PyTorch", rows))
    return result


def write_exported(result: Exported, out: Path, overwrite: bool) -> list[Path]:
    """Write the model (and engine, beside it as .engine) atomically; refuse to replace unless overwrite."""
    if not result.passed:
        raise MRI44Error("parity check failed: nothing written")
    written = []
    for path, data in ((out, result.onnx_bytes), (out.with_suffix(".engine"), result.engine)):
        if data is None:
            continue
        with atomic_path(path, replace=overwrite) as tmp:
            tmp.write_bytes(data)
        written.append(path)
    return written
