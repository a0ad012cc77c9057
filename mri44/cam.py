"""Class activation maps from any model, ONNX included: where in the slice the evidence for a class lies.

For a ResNet (global average pool, then one linear layer) Grad-CAM at the last stage *is* CAM (Zhou et al. 2016):
the gradient of class k's score with respect to the feature map A is W[k] / (h * w) at every position, so
Grad-CAM's map ReLU(sum_c mean(dS_k/dA_c) A_c) is ReLU(W[k] . A) up to a positive factor, which the min-max
normalisation removes. So no gradients are needed: the last stage's feature map (the ONNX `features` output,
computed anyway and copied out only when asked) and the linear layer's weights give the map, on any runtime.

The weights are read from the model itself: a checkpoint's fc.weight, or the ONNX graph's one classifier Gemm
(its weight an initializer in fp32/fp16 graphs, or dequantized from the INT8 graph's DequantizeLinear), so every
exported model, those made before this module included, can be explained.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mri44.errors import MRI44Error
from mri44.onnx_meta import ENSEMBLE_SECOND


def onnx_classifier_weights(path: str | os.PathLike[str]) -> np.ndarray:
    """The classifier's weight matrix (classes, channels) as float32, from an ONNX model made by onnx-export."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {i.name: i for i in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    # An ensemble graph holds two classifiers: the map is the second member's, whose features the graph outputs.
    gemms = [n for n in graph.node if n.op_type == "Gemm"]
    if len(gemms) == 2:
        gemms = [n for n in gemms if n.input[1].startswith(ENSEMBLE_SECOND)]
    if len(gemms) != 1:
        raise MRI44Error(
            f"{path}: expected one classifier layer (Gemm), found {len(gemms)}; not a ResNet export?"
        )
    gemm = gemms[0]
    trans_b = next((a.i for a in gemm.attribute if a.name == "transB"), 0)

    def value(name: str) -> np.ndarray:
        if name in inits:
            return np.asarray(numpy_helper.to_array(inits[name]))
        node = producers.get(name)
        if node is not None and node.op_type == "DequantizeLinear":  # INT8: (q - zero_point) * scale
            q, scale = value(node.input[0]).astype(np.float32), value(node.input[1]).astype(np.float32)
            zero = value(node.input[2]).astype(np.float32) if len(node.input) > 2 else np.float32(0)
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            if scale.ndim == 1 and scale.size > 1:  # per-channel along axis
                shape = [1] * q.ndim
                shape[axis] = scale.size
                scale, zero = scale.reshape(shape), np.reshape(zero, shape) if np.ndim(zero) else zero
            return (q - zero) * scale
        if node is not None and node.op_type in ("Cast", "Identity"):
            return value(node.input[0])
        raise MRI44Error(
            f"{path}: cannot read the classifier weights ({name} comes from {node and node.op_type})"
        )

    weights = value(gemm.input[1]).astype(np.float32)
    return weights if trans_b else weights.T


def checkpoint_classifier_weights(path: str | os.PathLike[str]) -> np.ndarray:
    from mri44.checkpoint import Checkpoint

    return Checkpoint.load(path).weights["fc.weight"].float().numpy()


def classifier_weights(model: Path) -> np.ndarray:
    """(classes, channels) float32 of a checkpoint, run folder or ONNX model."""
    from mri44.onnx_meta import is_checkpoint

    return checkpoint_classifier_weights(model) if is_checkpoint(model) else onnx_classifier_weights(model)


def class_activation_map(
    features: np.ndarray, weights: np.ndarray, class_index: int, size: int
) -> np.ndarray:
    """The map (size, size) in 0..1 of class_index for one image's last-stage feature map (C, h, w)."""
    import cv2

    cam = np.maximum(np.tensordot(weights[class_index], features.astype(np.float32), axes=1), 0.0)
    heat = np.asarray(
        cv2.resize(cam.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR), np.float32
    )
    return (heat - heat.min()) / max(float(heat.max() - heat.min()), 1e-8)
