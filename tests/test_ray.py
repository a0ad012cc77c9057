"""Scoring on Ray (a local cluster the test starts): the local scorer's rows, bad files included; resumable."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from mri44.stages.score.cli import app

ray = pytest.importorskip("ray", reason="the Ray engine is an extra: pip install -e '.[ray]'")
runner = CliRunner()


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _folder_with_bad_files(synthetic_data: Path, tmp_path: Path) -> Path:
    data = tmp_path / "in"
    shutil.copytree(synthetic_data, data)
    cls = next(d for d in sorted(data.iterdir()) if d.is_dir())
    (cls / "junk.jpg").write_bytes(b"not an image")
    (cls / "empty.png").write_bytes(b"")
    (cls / "notes.txt").write_text("not an image type: skipped, not a row")
    return data


def test_ray_engine_gives_the_local_rows_and_resumes(
    local_ray, synthetic_data: Path, exported_model: Path, tmp_path: Path
) -> None:
    data = _folder_with_bad_files(synthetic_data, tmp_path)
    local = runner.invoke(
        app, [str(data), "--out", str(tmp_path / "local.parquet"), "--model", str(exported_model)]
    )
    assert local.exit_code == 0, local.output
    reference = pl.read_parquet(tmp_path / "local.parquet")

    # First run on part of the input, as if it had died; then --resume scores only the rest.
    late = sorted(data.rglob("*.png"))[-10:]
    held = tmp_path / "held"
    held.mkdir()
    for path in late:
        shutil.move(path, held / f"{path.parent.name}__{path.name}")
    out = tmp_path / "ray-out"
    args = ["--out", str(out), "--model", str(exported_model), "--engine", "ray", "--batch-size", "16"]
    first = runner.invoke(app, [str(data), *args])
    assert first.exit_code == 0, first.output
    (out / ".part-crashed.parquet.x.tmp").write_bytes(b"half a part")  # an interrupted write: never a part
    foreign = out / "part-00000.parquet"  # another tool's part (pyarrow's default name), another schema
    pl.DataFrame({"x": [1, 2]}).write_parquet(foreign)
    again = runner.invoke(app, [str(data), *args])
    assert again.exit_code == 2 and "--resume" in again.output
    for path in late:
        shutil.move(held / f"{path.parent.name}__{path.name}", path)
    resumed = runner.invoke(app, [str(data), *args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "scored 10 file(s) now" in resumed.output

    rows = pl.read_parquet(sorted(out.glob("mri44-part-*.parquet"))).sort("path")
    assert rows.columns == reference.columns
    assert rows["path"].to_list() == reference["path"].to_list()
    assert rows["status"].to_list() == reference["status"].to_list()
    assert rows["error"].to_list() == reference["error"].to_list()
    assert rows["pred_class"].to_list() == reference["pred_class"].to_list()
    assert rows["true_class"].to_list() == reference["true_class"].to_list()
    ok = reference["status"] == "ok"
    diff = (rows.filter(ok)["confidence"] - reference.filter(ok)["confidence"]).abs().max()
    assert diff is not None and diff <= 1e-5
    assert (out / "metrics" / "summary.csv").exists() == reference["true_class"].is_not_null().any()
    fresh = runner.invoke(app, [str(data), *args, "--overwrite"])  # starts over: the old parts go
    assert fresh.exit_code == 0, fresh.output
    assert pl.read_parquet(sorted(out.glob("mri44-part-*.parquet"))).height == reference.height
    assert pl.read_parquet(foreign)["x"].to_list() == [1, 2]  # neither --resume nor --overwrite touched it
    if importlib.util.find_spec("matplotlib") is not None:  # the report reads a parts folder too
        from mri44.stages.score.report_cli import app as report_app

        made = runner.invoke(report_app, [str(out)])
        assert made.exit_code == 0, made.output
        assert 'id="confident-errors"' in (out / "report.html").read_text()


def test_ray_engine_reads_urls_and_refuses_local_only_options(
    local_ray, synthetic_data: Path, exported_model: Path, tmp_path: Path
) -> None:
    """A URL input goes through pyarrow's file systems (file:// here; s3:// and gs:// take the same path)."""
    out = tmp_path / "url-out"
    args = ["--out", str(out), "--model", str(exported_model), "--engine", "ray"]
    result = runner.invoke(app, [synthetic_data.resolve().as_uri(), *args])
    assert result.exit_code == 0, result.output
    rows = pl.read_parquet(sorted(out.glob("mri44-part-*.parquet")))
    files = sorted(p.relative_to(synthetic_data).as_posix() for p in synthetic_data.rglob("*") if p.is_file())
    assert sorted(rows["path"].to_list()) == files and set(rows["status"]) == {"ok"}
    assert rows["true_class"].is_not_null().all()
    refused = runner.invoke(
        app, [str(synthetic_data), *args[:-2], "--engine", "ray", "--decode", "device", "--report", "r.html"]
    )
    assert refused.exit_code == 2 and "--decode, --report apply to the local engine only" in refused.output
