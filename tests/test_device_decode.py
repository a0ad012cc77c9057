"""The on-device JPEG path (nvJPEG on CUDA; torchvision's CPU decoder here): same pixels within one grey level as
the OpenCV path, the same predictions, and the same per-file error rows."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import polars as pl
import pytest
import torch
from typer.testing import CliRunner

from mri44.preprocess import PreprocessSpec, load_pixels
from mri44.stages.export.parity import compare_predictions
from mri44.stages.score.cli import app
from mri44.torch_input import resize, to_model_pixels

runner = CliRunner()


@pytest.mark.parametrize(
    ("shape", "target"),
    [
        ((512, 512), (256, 256)),
        ((630, 630), (256, 256)),
        ((300, 417), (256, 184)),
        ((200, 150), (256, 192)),
        ((512, 380), (160, 160)),
        ((100, 100), (160, 160)),
    ],
)
@pytest.mark.parametrize(("interpolation", "flag"), [("area", cv2.INTER_AREA), ("linear", cv2.INTER_LINEAR)])
def test_tensor_resize_is_opencvs_within_one_grey_level(shape, target, interpolation, flag) -> None:
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 256, shape, dtype=np.uint8), (5, 5), 2)
    reference = cv2.resize(image, target[::-1], interpolation=flag).astype(int)
    ours = resize(torch.from_numpy(image)[None], *target, interpolation)[0].numpy().astype(int)
    assert np.abs(reference - ours).max() <= 1


def test_tensor_preprocessing_matches_the_core_on_colour_and_grey(tmp_path: Path) -> None:
    from torchvision.io import ImageReadMode, decode_jpeg

    rng = np.random.default_rng(1)
    colour = cv2.GaussianBlur(rng.integers(0, 256, (181, 240, 3), dtype=np.uint8), (7, 7), 3)
    for name, image in (("colour.png", colour), ("grey.png", colour[..., 0])):
        cv2.imwrite(str(tmp_path / name), image)
        data = torch.from_numpy(np.fromfile(tmp_path / name, np.uint8))
        from torchvision.io import decode_png

        decoded = decode_png(data, mode=ImageReadMode.UNCHANGED)
        for spec in (PreprocessSpec(size=64), PreprocessSpec(size=96, resize="stretch", channels="rgb")):
            core = load_pixels(tmp_path / name, spec).transpose(2, 0, 1).astype(int)
            ours = to_model_pixels(decoded, spec).numpy().astype(int)
            assert ours.shape == core.shape and np.abs(core - ours).max() <= 1, (name, spec)
    assert decode_jpeg  # the JPEG decoder itself is exercised end to end below


def test_device_decoding_scores_like_the_cpu_path_with_the_same_error_rows(
    tmp_path: Path, synthetic_data: Path, exported_model: Path
) -> None:
    data = tmp_path / "in"
    for k, png in enumerate(sorted(synthetic_data.rglob("*.png"))[:40]):
        target = data / png.parent.name / f"{png.stem}.{'jpg' if k % 4 else 'png'}"  # mostly JPEG, some PNG
        target.parent.mkdir(parents=True, exist_ok=True)
        image = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(
            str(target), image, *([[cv2.IMWRITE_JPEG_QUALITY, 90]] if target.suffix == ".jpg" else [])
        )
    first = next(data.rglob("*.jpg"))
    (first.parent / "truncated.jpg").write_bytes(first.read_bytes()[:300])
    (first.parent / "junk.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all \xff\xda\x00\xff\xd9")
    (first.parent / "empty.jpg").write_bytes(b"")
    tables = {}
    for decode in ("cpu", "device"):
        out = tmp_path / f"{decode}.parquet"
        result = runner.invoke(
            app, [str(data), "--out", str(out), "--model", str(exported_model), "--decode", decode]
        )
        assert result.exit_code == 0, result.output
        tables[decode] = pl.read_parquet(out)
    cpu, device = tables["cpu"], tables["device"]
    assert cpu.select("path", "status").equals(device.select("path", "status"))
    assert cpu.filter(pl.col("status") == "error").height == 3
    # Inputs differ by at most one grey level, so the bound is the fp16 export's, not fp32's rounding-level one.
    row = compare_predictions("real device decode", cpu, device, "fp16")
    assert row.passed and row.top1_agreement == 1.0, row
    # The training-set flags hold on the device path too. The JPEGs re-encode the synthetic set, whose training
    # part is in the model's manifest: those are near (not seen); the PNGs are the files themselves.
    flags = ["path", "seen_in_training", "near_training"]
    assert cpu.select(flags).equals(device.select(flags))
    jpegs = device.filter(pl.col("path").str.ends_with(".jpg") & (pl.col("status") == "ok"))
    assert jpegs["near_training"].sum() >= 5 and not jpegs["seen_in_training"].any()
    assert device.filter(pl.col("path").str.ends_with(".png"))["seen_in_training"].any()
