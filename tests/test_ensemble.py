"""Two exported models as one graph scoring their geometric mean (mri44/ensemble.py), shipped as a recipe."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from mri44.calibration import softmax
from mri44.cam import onnx_classifier_weights
from mri44.checkpoint import Checkpoint
from mri44.discover import find_images
from mri44.ensemble import EnsembleError, build_from_recipe, ensemble_onnx, write_recipe
from mri44.errors import SettingError
from mri44.onnx_meta import (
    FEATURES_NAME,
    INPUT_NAME,
    OUTPUT_NAME,
    ModelMetadata,
    read_metadata,
    write_with_metadata,
)
from mri44.preprocess import normalize
from mri44.runtime import make_session
from mri44.samples import decodable_pixels
from mri44.stages.export.ensemble import ensemble_parity
from mri44.stages.export.onnx_export import export_onnx


def restamped(source: Path, out: Path, **changes: object) -> Path:
    """The same network with other metadata: a second member that preprocesses differently."""
    proto = onnx.load(source)
    meta = ModelMetadata.from_proto(proto)
    write_with_metadata(proto, replace(meta, **changes), out)
    return out


def test_an_ensemble_of_a_model_with_itself_scores_like_the_model(
    exported_model: Path, synthetic_data: Path
) -> None:
    model, meta = ensemble_onnx(exported_model, exported_model, temperature=0.8)
    alone = ModelMetadata.from_proto(onnx.load(exported_model))
    assert meta.preprocess == alone.preprocess and meta.ood is not None and alone.ood is not None
    np.testing.assert_array_equal(meta.ood.reference, alone.ood.reference)
    assert meta.training is not None and alone.training is not None
    assert meta.training.sha256 == alone.training.sha256
    assert meta.arch == f"ensemble({alone.arch}+{alone.arch})" and meta.temperature == 0.8
    pixels, _ = decodable_pixels(find_images(synthetic_data)[:16], meta.preprocess)
    x = normalize(pixels, meta.preprocess)
    joint = make_session(model.SerializeToString(), "cpu").run(None, {INPUT_NAME: x})
    single = make_session(exported_model, "cpu").run(None, {INPUT_NAME: x})
    # mean of two equal log-softmaxes = the log-softmax: the same probabilities at any temperature, same features
    np.testing.assert_allclose(softmax(joint[0], 0.8), softmax(single[0], 0.8), atol=1e-5)
    np.testing.assert_allclose(joint[1], single[1], atol=1e-6)


def test_the_second_member_gets_its_own_normalisation_and_size_inside_the_graph(
    exported_model: Path, trained_run: Path, synthetic_data: Path, tmp_path: Path
) -> None:
    alone = ModelMetadata.from_proto(onnx.load(exported_model))
    spec = replace(
        alone.preprocess, size=alone.preprocess.size - 8, mean=(0.3, 0.3, 0.3), std=(0.2, 0.2, 0.2)
    )
    # The same network exported for a smaller input with other normalisation constants and a sharper classifier:
    # a second member whose outputs and class activation weights differ from the first's.
    ckpt = Checkpoint.load(trained_run)
    sharper = {**ckpt.weights, "fc.weight": ckpt.weights["fc.weight"] * 2.0}
    replace(ckpt, preprocess=spec, weights=sharper).save(tmp_path / "best.pt")
    proto, _, second_meta = export_onnx(tmp_path / "best.pt")
    second = tmp_path / "second.onnx"
    write_with_metadata(proto, second_meta, second)
    model, meta = ensemble_onnx(exported_model, second, temperature=1.0)
    # The graph, step by step: the first member on its input; the second on that input mapped back to pixels,
    # normalised with its own constants and resized linearly (half-pixel centres) to its side.
    pixels, _ = decodable_pixels(find_images(synthetic_data)[:40], alone.preprocess)
    x1 = normalize(pixels, alone.preprocess)
    (scale1, bias1), (scale2, bias2) = alone.preprocess.scale_bias(), spec.scale_bias()
    shape = (1, 3, 1, 1)
    raw = (x1 - bias1.reshape(shape)) / scale1.reshape(shape)
    x2 = F.interpolate(
        torch.from_numpy(raw * scale2.reshape(shape) + bias2.reshape(shape)),
        size=(spec.size, spec.size),
        mode="bilinear",
        align_corners=False,
    ).numpy()
    logits1 = make_session(exported_model, "cpu").run([OUTPUT_NAME], {INPUT_NAME: x1})[0]
    logits2, features2 = make_session(second, "cpu").run([OUTPUT_NAME, FEATURES_NAME], {INPUT_NAME: x2})
    expected = (np.log(softmax(logits1)) + np.log(softmax(logits2))) / 2
    joint, features = make_session(model.SerializeToString(), "cpu").run(
        [OUTPUT_NAME, FEATURES_NAME], {INPUT_NAME: x1}
    )
    np.testing.assert_allclose(joint, expected, atol=1e-4)
    # The features, and so the distance check and its probe, are the second member's; the image statistics'
    # limits are the first's, fitted on the input the graph receives.
    features1 = make_session(exported_model, "cpu").run([FEATURES_NAME], {INPUT_NAME: x1})[0]
    np.testing.assert_allclose(features, features2, atol=1e-3)
    assert features.shape != features1.shape or np.abs(features - features1).max() > 1e-2
    assert meta.ood is not None and second_meta.ood is not None and alone.ood is not None
    np.testing.assert_array_equal(meta.ood.reference, second_meta.ood.reference)
    assert meta.ood.threshold == second_meta.ood.threshold and meta.ood.detail == alone.ood.detail
    assert np.abs(softmax(logits2) - softmax(logits1)).max() > 0.05  # the members differ: the test can tell
    # Against the members scored separately, each from the file (area resizing): close, not identical.
    parity = ensemble_parity(model, meta, (exported_model, second), find_images(synthetic_data)[:40])
    assert parity["images"] == 40 and parity["top1_agreement"] >= 0.9
    # The class activation map uses the second member's classifier, whose features the graph outputs.
    path = tmp_path / "ensemble.onnx"
    write_with_metadata(model, meta, path)
    np.testing.assert_array_equal(onnx_classifier_weights(path), onnx_classifier_weights(second))
    assert not np.array_equal(onnx_classifier_weights(second), onnx_classifier_weights(exported_model))


def test_models_that_cannot_be_averaged_are_refused(exported_model: Path, tmp_path: Path) -> None:
    alone = ModelMetadata.from_proto(onnx.load(exported_model))
    other_classes = restamped(exported_model, tmp_path / "classes.onnx", classes=alone.classes[::-1])
    with pytest.raises(EnsembleError, match="different classes"):
        ensemble_onnx(exported_model, other_classes, 1.0)
    larger = replace(alone.preprocess, size=alone.preprocess.size + 16)
    bigger = restamped(exported_model, tmp_path / "bigger.onnx", preprocess=larger)
    with pytest.raises(EnsembleError, match="larger input first"):
        ensemble_onnx(exported_model, bigger, 1.0)
    rgb = restamped(
        exported_model, tmp_path / "rgb.onnx", preprocess=replace(alone.preprocess, channels="rgb")
    )
    with pytest.raises(EnsembleError, match="channels or resizing"):
        ensemble_onnx(exported_model, rgb, 1.0)


def test_a_recipe_builds_its_graph_once_into_the_cache_and_refuses_a_changed_member(
    exported_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    first = folder / "first.onnx"
    first.write_bytes(exported_model.read_bytes())
    second = restamped(exported_model, folder / "second.onnx", temperature=2.0)
    parity = {"images": 40.0, "top1_agreement": 1.0, "max_prob_diff": 0.0}
    recipe = folder / "ensemble.json"
    write_recipe(first, second, 0.7, "a test", parity, recipe)
    cache = tmp_path / "cache"
    monkeypatch.setenv("MRI44_CACHE_DIR", str(cache))
    built = build_from_recipe(recipe)
    assert built.parent == cache and read_metadata(built).temperature == 0.7
    direct, _ = ensemble_onnx(first, second, 0.7)
    assert onnx.load(built).graph == direct.graph
    stamp = built.stat().st_mtime_ns
    assert build_from_recipe(recipe) == built and built.stat().st_mtime_ns == stamp  # found, not rebuilt
    # A recipe names members beside it, and only the very files it was measured with.
    with pytest.raises(SettingError, match="not beside"):
        write_recipe(exported_model, second, 0.7, "a test", parity, folder / "other.json")
    restamped(exported_model, tmp_path / "changed.onnx", temperature=3.0).replace(second)
    with pytest.raises(EnsembleError, match="not the model the recipe"):
        build_from_recipe(recipe)
    (folder / "broken.json").write_text("{}")
    with pytest.raises(EnsembleError, match="not a readable ensemble recipe"):
        build_from_recipe(folder / "broken.json")


def test_an_unwritable_cache_says_which_setting_fixes_it(
    exported_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    member = folder / "m.onnx"
    member.write_bytes(exported_model.read_bytes())
    parity = {"images": 1.0, "top1_agreement": 1.0, "max_prob_diff": 0.0}
    write_recipe(member, member, 1.0, "a test", parity, folder / "e.json")
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("MRI44_CACHE_DIR", str(tmp_path / "a-file" / "cache"))
    with pytest.raises(SettingError, match="MRI44_CACHE_DIR"):
        build_from_recipe(folder / "e.json")
