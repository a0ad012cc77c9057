"""Checkpoint -> ONNX (fp32 or fp16) with the scorer's metadata embedded.

Tracing uses a batch of 2 so the batch axis stays symbolic; opset 17 is what current ONNX Runtime and
TensorRT 8.6+/10 all run. fp16 goes through ONNX Runtime's own maintained converter (keep_io_types=True), so
callers keep feeding and receiving float32.
"""

from __future__ import annotations

import datetime as dt
import io
import warnings
from pathlib import Path

import onnx
import torch

from mri44.checkpoint import Checkpoint
from mri44.errors import MRI44Error
from mri44.files import checkpoint_path, file_sha256
from mri44.onnx_meta import FEATURES_NAME, INPUT_NAME, OUTPUT_NAME, ModelMetadata, checkpoint_metadata

DEFAULT_OPSET = 17


def add_feature_output(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Expose the last stage's feature map, the input of the network's one GlobalAveragePool, as a second
    float32 output FEATURES_NAME (N, C, h, w): what the out-of-distribution score and class activation maps read.
    Nothing is recomputed: the map exists in the graph anyway; ONNX Runtime only copies it out when asked.
    Works on fp32, fp16 (a Cast back to float32) and INT8 graphs, and on models exported before it existed."""
    if any(o.name == FEATURES_NAME for o in proto.graph.output):
        return proto
    pools = [n for n in proto.graph.node if n.op_type == "GlobalAveragePool"]
    if len(pools) != 1:
        raise MRI44Error(f"expected one GlobalAveragePool in the graph (a ResNet), found {len(pools)}")
    source = pools[0].input[0]
    inferred = onnx.shape_inference.infer_shapes(proto)
    info = {v.name: v for v in inferred.graph.value_info}
    if source not in info:
        raise MRI44Error(f"cannot infer the type and shape of {source}, the feature map")
    tensor = info[source].type.tensor_type
    dims = [d.dim_param or d.dim_value for d in tensor.shape.dim]
    if tensor.elem_type == onnx.TensorProto.FLOAT:
        node = onnx.helper.make_node("Identity", [source], [FEATURES_NAME], name="features_output")
    else:
        node = onnx.helper.make_node(
            "Cast", [source], [FEATURES_NAME], to=onnx.TensorProto.FLOAT, name="features_output"
        )
    proto.graph.node.append(node)
    proto.graph.output.append(
        onnx.helper.make_tensor_value_info(FEATURES_NAME, onnx.TensorProto.FLOAT, ["batch", *dims[1:]])
    )
    return proto


def export_onnx(
    checkpoint: Path,
    opset: int = DEFAULT_OPSET,
    fp16: bool = False,
    int8_calibration: list[Path] | None = None,
) -> tuple[onnx.ModelProto, torch.nn.Module, ModelMetadata]:
    """Build the ONNX model in memory; returns it with the eval-mode PyTorch model and the metadata."""
    ckpt_file = checkpoint_path(checkpoint)
    ckpt = Checkpoint.load(ckpt_file)
    model = ckpt.model().float().eval()
    spec = ckpt.preprocess
    dummy = torch.zeros(2, 3, spec.size, spec.size)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation on every call
        torch.onnx.export(
            model,
            (dummy,),
            buffer,  # type: ignore[arg-type]  # file objects work; the stub says paths only
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    if fp16:
        from onnxruntime.transformers.float16 import convert_float_to_float16
        from onnxruntime.transformers.onnx_model import OnnxModel

        proto = convert_float_to_float16(proto, keep_io_types=True)
        # The converter appends its input casts after the nodes that read them; ONNX requires topological order.
        graph = OnnxModel(proto)
        graph.topological_sort()
        proto = graph.model
    elif int8_calibration:
        from .int8 import quantize_int8

        proto = quantize_int8(proto, int8_calibration, spec)
    proto = add_feature_output(proto)
    meta = checkpoint_metadata(
        ckpt,
        file_sha256(ckpt_file),
        {
            "precision": "fp16" if fp16 else "int8" if int8_calibration else "fp32",
            "opset": opset,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "source": ckpt_file.name,
            "recipe": ckpt.recipe.get("name", "?"),
            "init": ckpt.init or "?",
        },
    )
    onnx.helper.set_model_props(proto, meta.to_props())
    proto.doc_string = f"mri44 {meta.arch}, {len(meta.classes)} classes, input {INPUT_NAME} float32 (N,3,{spec.size},{spec.size})"
    onnx.checker.check_model(proto, full_check=True)
    return proto, model, meta
