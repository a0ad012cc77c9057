"""The out-of-distribution flag (issue 23): a k-NN cosine distance on pooled last-stage features, with its
reference set and threshold carried by the model."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import onnx
import polars as pl
import pytest
from typer.testing import CliRunner

import mri44
from mri44.onnx_meta import FEATURES_NAME, read_metadata
from mri44.ood import OodSpec, OodSpecError, fit_ood, knn_distance, leave_one_out_pass_rate, normalised
from mri44.orientation import QUARTER_TURNS, OrientationProbe, fit_orientation
from mri44.stages.score.cli import app as score_app


def _cluster(rng: np.random.Generator, n: int, centre: np.ndarray) -> np.ndarray:
    return centre + 0.3 * rng.normal(size=(n, len(centre)))


def test_threshold_passes_95_percent_of_validation_and_far_points_are_flagged() -> None:
    rng = np.random.default_rng(0)
    centre = rng.normal(size=16)
    spec = fit_ood(_cluster(rng, 300, centre), _cluster(rng, 200, centre), k=5)
    val = knn_distance(normalised(_cluster(rng, 200, centre)), spec.reference, spec.k)
    assert 0.90 <= float((val <= spec.threshold).mean()) <= 0.99  # fresh images of the same kind
    far = knn_distance(normalised(_cluster(rng, 50, -centre)), spec.reference, spec.k)
    assert (far > spec.threshold).all()
    again = OodSpec.from_json(spec.to_json())
    assert again.k == 5 and again.threshold == spec.threshold
    np.testing.assert_array_equal(again.reference, spec.reference)
    # A feature map (N, C, h, w) is pooled over space before the distance.
    maps = np.repeat(_cluster(rng, 4, -centre)[:, :, None, None], 3, axis=2).repeat(3, axis=3)
    assert (spec.scores(maps) > spec.threshold).all()


def test_without_validation_the_threshold_comes_from_leave_one_out_and_says_so() -> None:
    rng = np.random.default_rng(1)
    spec = fit_ood(_cluster(rng, 100, rng.normal(size=8)), None, k=3)
    assert "leave-one-out" in spec.source and spec.threshold > 0  # no image counts as its own neighbour


def test_an_all_data_fit_takes_its_selection_runs_leave_one_out_pass_rate() -> None:
    """Training sets hold near-duplicate neighbouring slices (a fifth of the images here), so leave-one-out scores
    run small and their 95th percentile flags too many unseen images; the selection run's rate puts the threshold
    where its validation images put it."""
    rng = np.random.default_rng(3)
    centre = rng.normal(size=16)
    base = _cluster(rng, 2000, centre)
    train = np.concatenate([base, base[:500] + 0.01 * rng.normal(size=(500, 16))])
    selection = fit_ood(train, _cluster(rng, 2000, centre), k=1, max_reference=len(train))
    rate = leave_one_out_pass_rate(selection)
    assert 0.95 < rate < 1.0
    fresh = _cluster(rng, 2000, centre)
    plain = fit_ood(train, None, k=1, max_reference=len(train))
    calibrated = fit_ood(train, None, k=1, max_reference=len(train), loo_pass_rate=rate)
    flagged = {
        name: float((knn_distance(normalised(fresh), s.reference, 1) > s.threshold).mean())
        for name, s in (("plain", plain), ("calibrated", calibrated))
    }
    assert flagged["calibrated"] == pytest.approx(0.05, abs=0.02)  # like its selection run: 95 % pass
    assert flagged["plain"] > flagged["calibrated"] + 0.02  # plain 95 % leave-one-out is stricter


@pytest.mark.parametrize(
    "change",
    [{"method": "energy"}, {"k": 0}, {"shape": [3]}, {"reference_fp16_b64": "!!"}, {"threshold": "nan"}],
)
def test_unusable_settings_in_a_model_are_refused(change: dict) -> None:
    import json

    data = json.loads(OodSpec(np.ones((4, 2), np.float16), 2, 0.1).to_json())
    with pytest.raises(OodSpecError):
        OodSpec.from_json(json.dumps({**data, **change}))


def _unlike_mri(folder: Path) -> Path:
    """Images nothing like the training set: noise, a page of text, a gradient, a blank and a saturated frame."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(folder / "noise.png"), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    text = np.full((64, 64), 255, np.uint8)
    for row in range(8, 64, 12):
        cv2.putText(text, "lorem ipsum", (1, row), cv2.FONT_HERSHEY_PLAIN, 0.6, 0, 1)
    cv2.imwrite(str(folder / "text.png"), text)
    cv2.imwrite(str(folder / "gradient.png"), np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1)))
    cv2.imwrite(str(folder / "blank.png"), np.zeros((64, 64), np.uint8))
    cv2.imwrite(str(folder / "saturated.png"), np.full((64, 64), 255, np.uint8))
    return folder


def test_exported_model_flags_images_unlike_its_training_set(
    exported_model: Path, trained_run: Path, synthetic_data: Path, tmp_path: Path
) -> None:
    meta = read_metadata(exported_model)
    assert meta.ood is not None and "validation" in meta.ood.source
    assert FEATURES_NAME in [o.name for o in onnx.load(str(exported_model)).graph.output]
    model = mri44.load_model(exported_model)
    odd = model.predict(_unlike_mri(tmp_path / "odd"))
    known = model.predict(synthetic_data)
    assert known["ood_score"].null_count() == 0
    assert float(known["ood"].mean()) <= 0.15  # training, val and test images: few flagged
    assert int(odd["ood"].sum()) >= 4, odd.select("path", "pred_class", "confidence", "ood_score")
    assert float(odd["ood_score"].min()) > float(known["ood_score"].median())
    # The PyTorch checkpoint computes the same score from the same features.
    torch_rows = mri44.load_model(trained_run).predict(_unlike_mri(tmp_path / "odd2"))
    np.testing.assert_allclose(torch_rows["ood_score"].to_numpy(), odd["ood_score"].to_numpy(), atol=1e-3)


def test_ood_off_and_threshold_override(exported_model: Path, synthetic_data: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    off = runner.invoke(
        score_app,
        [
            str(synthetic_data),
            "--out",
            str(tmp_path / "off.parquet"),
            "--model",
            str(exported_model),
            "--ood",
            "off",
        ],
    )
    assert off.exit_code == 0, off.output
    import polars as pl

    rows = pl.read_parquet(tmp_path / "off.parquet")
    assert rows["ood_score"].null_count() == rows["ood"].null_count() == rows.height
    result = mri44.score(synthetic_data, model=exported_model, ood_threshold=10.0)
    assert result.predictions is not None and result.tables is not None
    # The threshold moves the feature distance only; the other checks flag what they flag on their own.
    reasons = result.predictions["ood_reason"].drop_nulls()
    assert not reasons.str.contains("feature distance").any()
    assert result.tables["summary"]["ood_flagged"][0] == reasons.len() == result.predictions["ood"].sum()
    strict = mri44.score(synthetic_data, model=exported_model, ood_threshold=-1.0)
    summary = strict.tables["summary"]  # type: ignore[index]
    assert summary["ood_flagged"][0] == summary["n"][0] and summary["accuracy_without_ood"][0] is None


def test_a_reference_of_the_wrong_width_or_with_nan_is_a_one_line_error() -> None:
    """Both gave a traceback or a silently null ood column (issue 30)."""
    import json

    from mri44.ood import OodSpec, OodSpecError

    spec = OodSpec(reference=np.eye(4, 8, dtype=np.float16), k=1, threshold=0.2)
    with pytest.raises(
        OodSpecError, match="feature map has 16 channels, its out-of-distribution reference 8"
    ):
        spec.scores(np.ones((2, 16, 3, 3), np.float32))
    broken = json.loads(spec.to_json())
    broken["reference_fp16_b64"] = (
        OodSpec(reference=np.full((4, 8), np.nan, np.float16), k=1, threshold=0.2)
        .to_json()
        .split('"reference_fp16_b64": "')[1]
        .split('"')[0]
    )
    with pytest.raises(OodSpecError, match="NaN or infinite"):
        OodSpec.from_json(json.dumps(broken))


def test_every_flagged_row_is_counted_labelled_or_not(
    tmp_path: Path, synthetic_data: Path, exported_model: Path
) -> None:
    """ood_flagged counted the labelled rows only (issue 33): it counts every scored row now, the labelled ones
    apart; and ood_score stays in [0, 2] (1 - a cosine similarity)."""
    import shutil

    folder = tmp_path / "in"
    shutil.copytree(synthetic_data, folder / "labelled")
    unlabelled = folder / "unlabelled"
    unlabelled.mkdir()
    for source in sorted(synthetic_data.rglob("*.png"))[:3]:
        shutil.copy(source, unlabelled / f"{source.parent.name.replace(' ', '_')}-{source.name}")
    result = mri44.score(folder, model=exported_model, ood_threshold=-1.0)  # every row flagged
    assert result.predictions is not None and result.tables is not None
    summary = result.tables["summary"]
    assert summary["ood_flagged"][0] == result.predictions.height == summary["n"][0] + 3
    assert summary["ood_flagged_labelled"][0] == summary["n"][0]
    scores = result.predictions["ood_score"]
    assert scores.min() >= 0.0 and scores.max() <= 2.0


def _probe(channels: int, upright_bias: float) -> OrientationProbe:
    """A probe that calls every image upright (bias > 0) or turned (bias < 0), whatever its features."""
    bias = np.array([upright_bias, 0.0, 0.0, 0.0], np.float32)
    return OrientationProbe(np.zeros((4, channels), np.float32), bias, threshold=0.5, source="test")


def test_orientation_probe_learns_turns_and_sets_its_threshold_on_held_out_groups() -> None:
    rng = np.random.default_rng(0)
    n, channels = 400, 32
    base = rng.normal(size=(n, channels))
    by_turn = [normalised(base + 4.0 * np.eye(channels)[k]) for k in QUARTER_TURNS]  # a direction per turn
    groups = np.arange(n) // 4  # four neighbouring slices per group
    probe = fit_orientation(by_turn, groups)
    assert 0.0 < probe.threshold < 1.0 and "grouped 5-fold" in probe.source
    fresh = rng.normal(size=(200, channels))
    upright = probe.turned_scores(normalised(fresh + 4.0 * np.eye(channels)[0]))
    turned = probe.turned_scores(normalised(fresh + 4.0 * np.eye(channels)[2]))
    assert (upright > probe.threshold).mean() <= 0.05 and (turned > probe.threshold).mean() >= 0.9
    spec = replace(fit_ood(fresh, None, 1), orientation=probe)
    back = OodSpec.from_json(spec.to_json())
    assert back.orientation is not None and back.orientation.threshold == probe.threshold
    np.testing.assert_array_equal(back.orientation.weights, probe.weights)
    narrow = replace(spec, orientation=_probe(channels - 1, 1.0))
    with pytest.raises(OodSpecError, match="orientation probe of 31 channels"):
        OodSpec.from_json(narrow.to_json())


def test_a_turned_flag_reaches_every_row_with_its_reason(
    exported_model: Path, synthetic_data: Path, tmp_path: Path
) -> None:
    from mri44.onnx_meta import ModelMetadata, write_with_metadata

    proto = onnx.load(str(exported_model))
    meta = ModelMetadata.from_proto(proto)
    assert meta.ood is not None
    channels = meta.ood.reference.shape[1]
    for name, bias in (("turned", -5.0), ("upright", 5.0)):
        write_with_metadata(
            proto,
            replace(
                meta, ood=replace(meta.ood, orientation=_probe(channels, bias), detail=None, border=None)
            ),
            tmp_path / f"{name}.onnx",
        )
    # --ood-threshold moves the feature distance's threshold only: here no row is flagged by distance.
    turned = mri44.score(synthetic_data, model=tmp_path / "turned.onnx", ood_threshold=10.0).predictions
    upright = mri44.score(synthetic_data, model=tmp_path / "upright.onnx", ood_threshold=10.0).predictions
    assert turned is not None and upright is not None
    assert turned["turned_score"].min() > 0.99 and turned["ood"].all()
    assert set(turned["ood_reason"]) == {"turned"}
    assert (
        upright["turned_score"].max() < 0.05
        and not upright["ood"].any()
        and upright["ood_reason"].null_count() == upright.height
    )
    both = mri44.score(synthetic_data, model=tmp_path / "turned.onnx", ood_threshold=-1.0).predictions
    assert both is not None and set(both["ood_reason"]) == {"feature distance; turned"}
    write_with_metadata(
        proto, replace(meta, ood=replace(meta.ood, orientation=None)), tmp_path / "plain.onnx"
    )
    plain = mri44.score(synthetic_data, model=tmp_path / "plain.onnx").predictions  # a model without a probe
    assert plain is not None and plain["turned_score"].null_count() == plain.height
    # Training fits the probe (evaluate_best), and the export carries it: upright training images pass it.
    own = mri44.score(synthetic_data, model=exported_model).predictions
    assert meta.ood.orientation is not None and "grouped" in meta.ood.orientation.source
    assert own is not None and own["turned_score"].null_count() == 0


def test_an_image_without_fine_detail_is_flagged_by_every_entry_point(
    exported_model: Path, synthetic_data: Path, tmp_path: Path
) -> None:
    """A slice shrunk to a thumbnail and scaled back, or a tiny image, has no fine detail (mri44.detail): flagged
    "low detail" from files and from arrays alike, while the training images pass the floor fitted on them."""
    from mri44.detail import DETAIL_PASS, detail_scores
    from mri44.onnx_meta import ModelMetadata, write_with_metadata

    proto = onnx.load(str(exported_model))
    meta = ModelMetadata.from_proto(proto)
    assert meta.ood is not None and meta.ood.detail is not None  # training fitted it (evaluate_best)
    assert f"{DETAIL_PASS:.1%}" in meta.ood.detail.source
    write_with_metadata(
        proto, replace(meta, ood=replace(meta.ood, orientation=None, border=None)), tmp_path / "plain.onnx"
    )
    folder = tmp_path / "in"
    folder.mkdir()
    sources = sorted(synthetic_data.rglob("*.png"))[::12]
    for i, source in enumerate(sources):
        image = cv2.imread(str(source), cv2.IMREAD_GRAYSCALE)
        h, w = image.shape
        cv2.imwrite(str(folder / f"{i:02d}-plain.png"), image)
        shrunk = cv2.resize(cv2.resize(image, (6, 6), interpolation=cv2.INTER_AREA), (w, h))
        cv2.imwrite(str(folder / f"{i:02d}-shrunk.png"), shrunk)
        cv2.imwrite(
            str(folder / f"{i:02d}-tiny.png"), cv2.resize(image, (6, 6), interpolation=cv2.INTER_AREA)
        )
    rows = mri44.score(folder, model=tmp_path / "plain.onnx", ood_threshold=10.0).predictions
    assert rows is not None and rows["detail_score"].null_count() == 0
    altered = rows.filter(~pl.col("path").str.contains("plain"))
    assert set(altered["ood_reason"]) == {"low detail"} and altered["ood"].all()
    plain = rows.filter(pl.col("path").str.contains("plain"))
    assert plain["detail_score"].min() > altered["detail_score"].max()
    assert plain["ood"].sum() <= 1  # training images: at most the 0.5 % under the floor, of 10
    both = mri44.score(folder, model=tmp_path / "plain.onnx", ood_threshold=-1.0).predictions
    assert both is not None and set(both.filter(pl.col("path").str.contains("tiny"))["ood_reason"]) == {
        "feature distance; low detail"
    }
    model = mri44.load_model(tmp_path / "plain.onnx")
    image = cv2.imread(str(sources[0]), cv2.IMREAD_GRAYSCALE)
    arrays = model.predict(
        [cv2.resize(image, (6, 6), interpolation=cv2.INTER_AREA), image], ood_threshold=10.0
    )
    assert arrays["ood_reason"][0] == "low detail" and arrays["detail_score"][1] > arrays["detail_score"][0]
    off = mri44.score(folder, model=tmp_path / "plain.onnx", ood="off").predictions
    assert off is not None and off["ood"].null_count() == off.height  # --ood off: no check speaks
    # The statistic itself: blind to a per-channel affine scaling, zero for a flat image.
    x = np.random.default_rng(0).random((2, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(detail_scores(x), detail_scores(3.0 * x - 7.0), rtol=1e-5)
    assert detail_scores(np.full((1, 32, 32), 9.0))[0] == 0.0


def test_an_image_with_a_bright_border_is_flagged_by_every_entry_point(
    exported_model: Path, synthetic_data: Path, tmp_path: Path
) -> None:
    """An MRI slice sits on dark air: the same slice inverted, or shown on a bright viewer page, is flagged
    "bright border" from files and from arrays alike, while the training images pass the ceiling fitted on them."""
    from mri44.detail import BORDER_PASS, border_scores
    from mri44.onnx_meta import ModelMetadata, write_with_metadata

    proto = onnx.load(str(exported_model))
    meta = ModelMetadata.from_proto(proto)
    assert meta.ood is not None and meta.ood.border is not None  # training fitted it (evaluate_best)
    assert f"{BORDER_PASS:.1%}" in meta.ood.border.source
    only_border = replace(meta.ood, orientation=None, detail=None)
    write_with_metadata(proto, replace(meta, ood=only_border), tmp_path / "border.onnx")
    folder = tmp_path / "in"
    folder.mkdir()
    sources = sorted(synthetic_data.rglob("*.png"))[::3]
    for i, source in enumerate(sources):
        image = cv2.imread(str(source), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(folder / f"{i:02d}-plain.png"), image)
        cv2.imwrite(str(folder / f"{i:02d}-inverted.png"), 255 - image)
        page = np.full((image.shape[0] * 2, image.shape[1] * 3), 230, np.uint8)
        page[10 : 10 + image.shape[0], 10 : 10 + image.shape[1]] = image
        cv2.imwrite(str(folder / f"{i:02d}-page.png"), page)
    rows = mri44.score(folder, model=tmp_path / "border.onnx", ood_threshold=10.0).predictions
    assert rows is not None and rows["border_score"].null_count() == 0
    altered = rows.filter(~pl.col("path").str.contains("plain"))
    assert set(altered["ood_reason"]) == {"bright border"} and altered["ood"].all()
    plain = rows.filter(pl.col("path").str.contains("plain"))
    assert plain["border_score"].max() < altered["border_score"].min()
    assert plain["ood"].sum() <= 1  # training and held-out synthetic slices: the ceiling is their 99.9 %
    model = mri44.load_model(tmp_path / "border.onnx")
    image = cv2.imread(str(sources[0]), cv2.IMREAD_GRAYSCALE)
    arrays = model.predict([255 - image, image], ood_threshold=10.0)
    assert arrays["ood_reason"].to_list() == ["bright border", None]
    # The statistic itself: blind to a per-channel affine scaling, 0 for a flat image, 0 / 1 for a dark / bright
    # frame around a different middle.
    x = np.random.default_rng(0).random((2, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(border_scores(x), border_scores(3.0 * x - 7.0), rtol=1e-5)
    assert border_scores(np.full((1, 32, 32), 9.0))[0] == 0.0
    framed = np.zeros((2, 32, 32), np.float32)
    framed[0, 4:-4, 4:-4] = 1.0
    framed[1] = 1.0 - framed[0]
    np.testing.assert_array_equal(border_scores(framed), [0.0, 1.0])
