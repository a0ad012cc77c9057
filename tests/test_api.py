"""The Python API (mri44.load_model, mri44.score, mri44.train): the same rows, tables and runs as the commands."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from synthetic import tiny_run_config
from typer.testing import CliRunner

import mri44
from mri44.errors import MRI44Error, SettingError
from mri44.readers import read_image
from mri44.stages.score.cli import app as score_app
from mri44.stages.train.cli import app as train_app

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_readme_api_example_runs(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """README's Python API block, executed as written from the repository root, on the shipped model."""
    block = re.search(r"## Python API.*?```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert block, "README has no Python API example"
    monkeypatch.chdir(REPO)
    exec(compile(block.group(1), "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "44 " in printed and "accuracy" in printed and "pred_class" in printed


def test_predict_gives_the_cli_rows(exported_model: Path, synthetic_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "preds.parquet"
    done = CliRunner().invoke(
        score_app, [str(synthetic_data), "--out", str(out), "--model", str(exported_model)]
    )
    assert done.exit_code == 0, done.output
    cli = pl.read_parquet(out)
    model = mri44.load_model(exported_model)
    api = model.predict(synthetic_data)
    assert api.columns == cli.columns and api.height == cli.height
    assert api["path"].to_list() == cli["path"].to_list()
    assert api["pred_class"].to_list() == cli["pred_class"].to_list()
    assert api["true_class"].to_list() == cli["true_class"].to_list()
    np.testing.assert_allclose(api["confidence"].to_numpy(), cli["confidence"].to_numpy(), rtol=1e-6)
    assert model.classes == sorted(set(cli["true_class"].to_list()))
    assert model.spec.size == 48


def test_predict_takes_paths_and_arrays_alike(exported_model: Path, synthetic_data: Path) -> None:
    model = mri44.load_model(exported_model)
    files = sorted(synthetic_data.rglob("*.png"))[:6]
    by_path = model.predict([str(f) for f in files])
    assert by_path["path"].to_list() == [str(f) for f in files]
    assert by_path["true_class"].to_list() == [f.parent.name for f in files]  # labels from the class folders
    by_array = model.predict([read_image(f) for f in files])
    assert by_array["path"].to_list() == [f"array[{i}]" for i in range(len(files))]
    assert by_array["pred_class"].to_list() == by_path["pred_class"].to_list()
    np.testing.assert_allclose(by_array["confidence"].to_numpy(), by_path["confidence"].to_numpy(), rtol=1e-5)
    # One array alone, and a 16-bit one: rescaled by its range like a 16-bit file.
    one = model.predict(read_image(files[0]))
    assert one.height == 1 and one["pred_class"][0] == by_path["pred_class"][0]
    deep = model.predict(read_image(files[0]).astype(np.uint16) * 257)
    assert deep["status"][0] == "ok"
    with pytest.raises(SettingError, match="expected H x W"):
        model.predict(np.zeros((2, 3, 4, 5), np.uint8))


def test_predict_keeps_a_bad_file_as_an_error_row(exported_model: Path, tmp_path: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    rows = mri44.load_model(exported_model).predict([bad])
    assert rows["status"].to_list() == ["error"] and rows["pred_class"][0] is None


def test_score_returns_tables_and_writes_only_when_asked(
    exported_model: Path, synthetic_data: Path, tmp_path: Path
) -> None:
    before = set(os.listdir(tmp_path))
    result = mri44.score(synthetic_data, model=exported_model)
    assert set(os.listdir(tmp_path)) == before  # out=None writes nothing
    assert result.predictions is not None and result.tables is not None
    summary = result.tables["summary"]
    assert summary["n"][0] == result.predictions.height == summary["files"][0]
    out = tmp_path / "p.csv"
    written = mri44.score(synthetic_data, out, model=exported_model)
    assert (
        out.is_file() and written.metrics_dir is not None and (written.metrics_dir / "summary.csv").is_file()
    )
    with pytest.raises(MRI44Error, match="exists; pass --overwrite"):
        mri44.score(synthetic_data, out, model=exported_model)
    with pytest.raises(SettingError, match="unknown scoring option"):
        mri44.score(synthetic_data, model=exported_model, batchsize=3)


@pytest.mark.slow
def test_train_api_and_config_rerun(synthetic_data: Path, tmp_path: Path) -> None:
    """mri44.train with a config object; then a rerun from its config.json, through the API and the CLI, with
    only the given settings changed."""
    base = tiny_run_config(synthetic_data, tmp_path / "a", epochs=1, image_size=32)
    result = mri44.train(base)
    assert result["best_epoch"] == 1 and "test" in result
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    assert Path(saved["data"]).is_absolute()  # export and reruns find the data from any folder
    assert saved["provenance"]["torch"] and saved["provenance"]["mri44"] == mri44.__version__
    assert "git_commit" in saved["provenance"]

    again = mri44.train(tmp_path / "a" / "config.json", out=tmp_path / "b", lr=1e-3)
    assert again["best_epoch"] == 1
    b = json.loads((tmp_path / "b" / "config.json").read_text())
    assert b["lr"] == 1e-3 and b["image_size"] == 32 and b["split"] == saved["split"]
    assert b["recipe"] == saved["recipe"] and b["data"] == saved["data"]

    done = CliRunner().invoke(
        train_app,
        ["--config", str(tmp_path / "a" / "config.json"), "--out", str(tmp_path / "c"), "--seed", "3"],
    )
    assert done.exit_code == 0, done.output
    c = json.loads((tmp_path / "c" / "config.json").read_text())
    assert c["seed"] == 3 and c["split"]["seed"] == 3  # the flag given overrides, the rest is the saved run's
    assert c["image_size"] == 32 and c["epochs"] == 1 and c["precision"] == "fp32"

    with pytest.raises(SettingError, match="unknown training setting"):
        mri44.train(base, epoch=3)
    with pytest.raises(SettingError, match="not a readable run config"):
        mri44.train(tmp_path / "missing.json", out=tmp_path / "d")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"top_k": 0}, "--top-k must be a whole number of at least 1, got 0"),
        ({"top_k": -1}, "--top-k must be a whole number of at least 1, got -1"),
        ({"batch_size": 0}, "--batch-size must be a whole number of at least 1, got 0"),
        ({"max_pixels": 0}, "--max-pixels must be a whole number of at least 1, got 0"),
        ({"ood_threshold": float("nan")}, "--ood-threshold must be a finite number, got nan"),
    ],
)
def test_predict_refuses_what_mri_score_refuses(exported_model: Path, options: dict, message: str) -> None:
    """The API had none of the CLI's checks (issue 30): top_k=0 raised IndexError, -1 gave 43 columns, a NaN
    threshold turned every flag off silently."""
    import mri44
    from mri44.errors import SettingError

    model = mri44.load_model(exported_model)
    with pytest.raises(SettingError, match=re.escape(message)):
        model.predict(np.zeros((8, 8), np.uint8), **options)


def test_predict_names_what_it_takes_when_given_a_pil_image(exported_model: Path) -> None:
    from PIL import Image

    import mri44
    from mri44.errors import SettingError

    with pytest.raises(SettingError, match=r"not a Image \(a PIL image: numpy.asarray\(image\)\)"):
        mri44.load_model(exported_model).predict(Image.new("L", (8, 8)))


def test_mri_score_refuses_a_nan_threshold(tmp_path: Path, exported_model: Path) -> None:
    import mri44
    from mri44.errors import SettingError

    with pytest.raises(SettingError, match="--ood-threshold must be a finite number"):
        mri44.score(tmp_path, out=None, model=str(exported_model), ood_threshold=float("nan"))
