"""INT8 for CPU scoring: ONNX Runtime static quantisation (QDQ, per-channel int8 weights, uint8 activations),
calibrated on training images preprocessed by the shared core.

Calibration images come from the folder given; when the checkpoint's run folder has a split.csv, only the files
of its train split are used, so calibration never sees validation or test images.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import polars as pl

from mri44.discover import find_images
from mri44.errors import InputNotFoundError
from mri44.onnx_meta import INPUT_NAME
from mri44.preprocess import PreprocessSpec, normalize
from mri44.run_folder import RunFolder
from mri44.samples import decodable_pixels, spread


def calibration_files(folder: Path, checkpoint: Path, limit: int) -> list[Path]:
    files = find_images(folder)
    split_csv = RunFolder(checkpoint if checkpoint.is_dir() else checkpoint.parent).split_csv
    if split_csv.is_file():
        train = set(pl.read_csv(split_csv).filter(pl.col("split") == "train")["path"].to_list())
        in_train = [f for f in files if f.relative_to(folder).as_posix() in train]
        if files and not in_train:  # calibrating on everything would let val/test images in: refuse
            raise InputNotFoundError(
                f"none of the images under {folder} are in the train split of {split_csv}: pass the folder the "
                "run was trained on (its paths are relative to it)"
            )
        files = in_train
    if not files:
        raise InputNotFoundError(f"no calibration images under {folder}")
    return spread(files, limit)


class _Reader:
    """onnxruntime.quantization.CalibrationDataReader over preprocessed batches."""

    def __init__(self, files: list[Path], spec: PreprocessSpec, batch: int = 16) -> None:
        pixels, _ = decodable_pixels(files, spec)
        self._batches = [normalize(pixels[i : i + batch], spec) for i in range(0, len(pixels), batch)]
        self._iter = iter(self._batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._iter, None)
        return None if batch is None else {INPUT_NAME: batch}

    def rewind(self) -> None:
        self._iter = iter(self._batches)


def quantize_int8(proto: onnx.ModelProto, files: list[Path], spec: PreprocessSpec) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    CalibrationDataReader.register(_Reader)
    with tempfile.TemporaryDirectory() as tmp:
        src, pre, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        onnx.save(proto, src)
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(dst),
            _Reader(files, spec),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        return onnx.load(dst)


def float32_graph(proto: onnx.ModelProto) -> onnx.ModelProto:
    """An fp16 export (ONNX Runtime's converter, float32 inputs and outputs) as the float32 graph it came from:
    fp16 weights widened exactly, casts to float16 made casts to float32 (no-ops the optimiser drops). What
    quantize_int8 needs when only the shipped fp16 file is left, not its checkpoint (scripts/int8_from_onnx.py)."""
    from onnx import TensorProto, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    graph = out.graph
    for i, init in enumerate(graph.initializer):
        if init.data_type == TensorProto.FLOAT16:
            graph.initializer[i].CopyFrom(
                numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float32), init.name)
            )
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT16:
                attr.i = TensorProto.FLOAT
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT16:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float32)))
    for value in [*graph.value_info, *graph.input, *graph.output]:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT16:
            value.type.tensor_type.elem_type = TensorProto.FLOAT
    return out
