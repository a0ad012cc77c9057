"""torchrun data parallelism on the CPU (gloo): two processes train the tiny synthetic set with the same global
batches as one process, rank 0 alone writes the run, and the checkpoint exports and scores like any other."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytestmark = pytest.mark.slow  # starts Ray or torchrun: seconds per test


def test_torchrun_two_processes_train_like_one(
    synthetic_data: Path, trained_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ddp"
    # The same settings as the trained_run fixture (tests/conftest.py), which is the single-process reference.
    args = ["--data", synthetic_data, "--out", out, "--image-size", 48, "--epochs", 8, "--batch-size", 16]
    args += ["--lr", 2e-3, "--device", "cpu", "--precision", "fp32", "--phash-distance", -1, "--workers", 2]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "train"]
    proc = subprocess.run([*launcher, *map(str, args)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("best epoch") == 1  # one rank reports, one writes
    ddp, single = (json.loads((run / "result.json").read_text()) for run in (out, trained_run))
    assert (out / "split.csv").read_text() == (trained_run / "split.csv").read_text()
    assert abs(ddp["test"]["accuracy"] - single["test"]["accuracy"]) <= 0.15  # 20 test images: within noise
    assert ddp["test"]["accuracy"] >= 0.5  # 5 classes: far above chance (0.2)

    from mri44.stages.score.cli import app

    scored = CliRunner().invoke(
        app, [str(synthetic_data), "--out", str(tmp_path / "p.parquet"), "--model", str(out)]
    )
    assert scored.exit_code == 0, scored.output
    from mri44.stages.export.checked import ExportRequest, export_checked

    exported = export_checked(ExportRequest(checkpoint=out, images=synthetic_data, max_images=16))
    assert exported.passed, exported.checks
    assert exported.meta.classes == sorted(d.name for d in synthetic_data.iterdir() if d.is_dir())
