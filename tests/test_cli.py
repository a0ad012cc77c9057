"""The `mri44` command: every stage under one name, with the stages' own options and one-line errors."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from mri44 import __version__
from mri44.cli import app

runner = CliRunner()


def test_mri44_lists_the_stages_and_its_version() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for stage in ("train", "export", "score", "weights"):
        assert stage in result.output
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and __version__ in version.output
    train_help = runner.invoke(app, ["train", "--help"])
    assert train_help.exit_code == 0 and "--teacher" in train_help.output


def test_subcommands_run_the_stages_with_one_line_errors(
    tmp_path: Path, synthetic_data: Path, exported_model: Path
) -> None:
    out = tmp_path / "p.parquet"
    ok = runner.invoke(app, ["score", str(synthetic_data), "--out", str(out), "--model", str(exported_model)])
    assert ok.exit_code == 0, ok.output
    assert pl.read_parquet(out).height == sum(1 for p in synthetic_data.rglob("*") if p.is_file())
    missing = runner.invoke(app, ["export", str(tmp_path / "nope"), "--out", str(tmp_path / "m.onnx")])
    assert missing.exit_code == 2 and "no checkpoint at" in missing.output
    assert "Traceback" not in missing.output
    train = runner.invoke(app, ["train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "run")])
    assert train.exit_code == 2 and "does not exist" in train.output
    assert not (tmp_path / "run").exists()  # no run folder for a run that could not start
    precision = runner.invoke(
        app, ["train", "--data", str(synthetic_data), "--out", str(tmp_path / "run"), "--precision", "fp16"]
    )
    assert precision.exit_code == 2 and "unknown --precision 'fp16'" in precision.output
    assert not (tmp_path / "run").exists()


def test_help_keeps_the_extras_names_in_brackets() -> None:
    """Rich markup ate '[ray]' from `mri-score --help`, leaving `pip install -e '.'` (issue 33)."""
    from typer.testing import CliRunner

    from mri44.stages.score.cli import app

    shown = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"}).output
    assert "pip install -e '.[ray]'" in shown


@pytest.mark.slow
def test_training_reports_progress_on_stderr_and_its_result_on_stdout(
    tmp_path: Path, synthetic_data: Path
) -> None:
    """One line per epoch with the time left, the outcome on stdout; --quiet keeps only the outcome (issue 33)."""
    args = [
        "train",
        "--data",
        str(synthetic_data),
        "--image-size",
        "32",
        "--epochs",
        "2",
        "--batch-size",
        "16",
    ]
    args += ["--phash-distance", "-1", "--device", "cpu", "--precision", "fp32", "--workers", "1"]
    loud = runner.invoke(app, [*args, "--out", str(tmp_path / "loud")])
    assert loud.exit_code == 0, loud.output
    assert "epoch 1/2: loss" in loud.stderr and "left" in loud.stderr and "epoch 1/2" not in loud.stdout
    assert loud.stdout.startswith(f"{tmp_path / 'loud'}: best epoch") and "test accuracy" in loud.stdout
    from mri44.console import setup_logging

    try:
        quiet = runner.invoke(app, [*args, "--out", str(tmp_path / "quiet"), "--quiet"])
    finally:
        setup_logging()  # --quiet lowered our loggers for this process; later tests expect them as commands set them
    assert quiet.exit_code == 0, quiet.output
    assert quiet.stderr == "" and quiet.stdout.startswith(f"{tmp_path / 'quiet'}: best epoch")


def test_the_printed_tables_are_whole_and_name_what_they_leave_out(tmp_path: Path) -> None:
    """The summary was cut with '...' at 12 columns and the per-type tables were not printed (issue 33)."""
    from mri44.metrics import metric_tables
    from mri44.stages.score.cli import WEAKEST_CLASSES, tables_text

    classes = [
        f"{t} {c}" for t in ("Glioma", "Meningioma", "Normal", "Schwannoma") for c in ("T1", "T1C+", "T2")
    ]
    truth = classes * 3
    tables = metric_tables(truth, truth[1:] + truth[:1])
    text = tables_text(tables, tmp_path)
    assert "…" not in text and "..." not in text.replace("... and", "")
    for name in tables["summary"].columns:
        assert f"  {name} " in text
    assert "per contrast" in text and "per tumor type" in text and "Schwannoma" in text
    assert f"... and {len(classes) - WEAKEST_CLASSES} more classes in {tmp_path / 'per_class.csv'}" in text


def test_library_warnings_become_one_counted_line(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """pydicom warns once per odd file: a folder of them filled stderr (issue 33). Decoder threads' warnings too."""
    import logging
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    from mri44.console import library_warnings_counted

    def read(i: int) -> None:
        message = "Expected explicit VR, but found implicit VR" if i % 3 else "odd header"
        warnings.warn(message, UserWarning, stacklevel=2)

    counted = library_warnings_counted(logging.getLogger("tests.warnings"))
    with caplog.at_level(logging.INFO, logger="tests.warnings"), counted, ThreadPoolExecutor(2) as pool:
        list(pool.map(read, range(9)))
    assert capsys.readouterr().err == ""
    assert (
        "9 warning(s) from the libraries that read the files, 2 kind(s); most often (6x): UserWarning: Expected"
        in caplog.text
    )


@pytest.mark.slow
def test_training_settings_from_a_toml_file_with_flags_over_them(
    tmp_path: Path, synthetic_data: Path
) -> None:
    """`python -m train --config run.toml` (issue 31): option names as keys, paths relative to the file, and the
    flags given on the command line win."""
    import json

    (tmp_path / "data").symlink_to(synthetic_data, target_is_directory=True)
    (tmp_path / "run.toml").write_text(
        'data = "data"\nimage-size = 32\nepochs = 1\nbatch_size = 16\nphash-distance = -1\n'
        'device = "cpu"\nprecision = "fp32"\nworkers = 1\nrecipe = "adamw"\n'
    )
    args = ["train", "--config", str(tmp_path / "run.toml"), "--out", str(tmp_path / "run"), "--epochs", "2"]
    done = runner.invoke(app, args)
    assert done.exit_code == 0, done.output
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["epochs"] == 2 and saved["image_size"] == 32 and saved["recipe"]["name"] == "adamw"
    assert saved["data"] == str((tmp_path / "data").absolute())
    (tmp_path / "bad.toml").write_text("epochs = [")
    bad = runner.invoke(app, ["train", "--config", str(tmp_path / "bad.toml"), "--out", str(tmp_path / "r2")])
    assert bad.exit_code == 2 and "not a readable TOML file" in bad.output
