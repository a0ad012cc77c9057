"""mri44/checkpoint.py: the one place checkpoints are written and read."""

from pathlib import Path

import pytest
import torch

from mri44.checkpoint import CHECKPOINT_FORMAT, FORMAT_KEY, Checkpoint
from mri44.errors import CheckpointError


def test_checkpoint_round_trips_and_refuses_a_newer_format(tmp_path: Path) -> None:
    from mri44.model import build_model
    from mri44.preprocess import PreprocessSpec

    card = Checkpoint(
        weights=build_model(3).state_dict(), classes=["a", "b", "c"], preprocess=PreprocessSpec(size=32),
        recipe={"name": "default"}, config={"data": "/data", "epochs": 2}, epoch=1, temperature=0.8,
        resume={"history": "[]"},
    )  # fmt: skip
    card.save(tmp_path / "c.pt")
    back = Checkpoint.load(tmp_path / "c.pt")
    assert (back.classes, back.preprocess, back.recipe, back.config, back.epoch, back.temperature) == (
        card.classes, card.preprocess, card.recipe, card.config, card.epoch, card.temperature,
    )  # fmt: skip
    assert back.resume == {"history": "[]"} and back.data == "/data" and back.ood is None
    torch.testing.assert_close(back.weights, card.weights)
    raw = card.to_dict()
    del raw[FORMAT_KEY]  # a file from before the format field: format 1
    torch.save(raw, tmp_path / "old.pt")
    assert Checkpoint.load(tmp_path / "old.pt").version == 1
    torch.save({**raw, FORMAT_KEY: CHECKPOINT_FORMAT + 1}, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="upgrade mri44"):
        Checkpoint.load(tmp_path / "new.pt")
    torch.save({**raw, "config": "{not json"}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="unreadable mri44 fields"):
        Checkpoint.load(tmp_path / "bad.pt")


def test_corrupt_checkpoint_gives_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "best.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot load"):
        Checkpoint.load(bad)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        Checkpoint.load(tmp_path / "missing.pt")
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="not an mri44 checkpoint"):
        Checkpoint.load(tmp_path / "bare.pt")
