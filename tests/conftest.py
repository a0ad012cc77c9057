"""Shared fixtures: a synthetic data set, one tiny trained run and its ONNX export, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Graphs built from shipped recipes (the ensemble) go to the session's temporary folder, not the user's."""
    os.environ["MRI44_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from synthetic import make_dataset

    return make_dataset(tmp_path_factory.mktemp("data"), per_class=24, size=64)


@pytest.fixture(scope="session")
def trained_run(synthetic_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short CPU training run at 48 px; its folder holds best.pt, split, metrics and test tables."""
    from synthetic import tiny_run_config

    from mri44.stages.train.loop import run_training

    out = tmp_path_factory.mktemp("run") / "run"
    cfg = tiny_run_config(synthetic_data, out)
    run_training(cfg)
    return out


@pytest.fixture(scope="session")
def exported_model(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mri44.stages.export.onnx_export import export_onnx

    proto, _, _ = export_onnx(trained_run)
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    path.write_bytes(proto.SerializeToString())
    return path
