import json
from pathlib import Path

import polars as pl
import pytest
import torch
from synthetic import tiny_run_config

from mri44.checkpoint import CHECKPOINT_FORMAT, FORMAT_KEY, Checkpoint
from mri44.errors import CheckpointError, MRI44Error
from mri44.stages.train.config import TrainConfig, cpu_has_native_bf16
from mri44.stages.train.loop import run_training
from mri44.stages.train.recipes import get_recipe
from mri44.stages.train.split import SplitConfig
from mri44.stages.train.weights import init_weights


def test_short_cpu_run_beats_chance_by_far(trained_run: Path) -> None:
    result = json.loads((trained_run / "result.json").read_text())
    chance = 1 / 5
    assert result["val"]["accuracy"] >= 0.8 > 3 * chance
    assert result["test"]["accuracy"] >= 0.7


def test_run_folder_holds_everything(trained_run: Path) -> None:
    for name in (
        "best.pt",
        "last.pt",
        "config.json",
        "split.parquet",
        "split.csv",
        "metrics.csv",
        "result.json",
    ):
        assert (trained_run / name).is_file(), name
    split = pl.read_csv(trained_run / "split.csv")
    assert {"path", "label", "split"} <= set(split.columns)
    assert set(split["split"]) == {"train", "val", "test"}
    history = pl.read_csv(trained_run / "metrics.csv")
    assert history["epoch"].to_list() == list(range(1, 9))
    assert {"val_accuracy", "val_macro_f1", "val_weighted_f1", "train_images_per_s"} <= set(history.columns)
    for table in ("summary", "per_class", "per_contrast", "per_tumor_type", "confusion"):
        assert (trained_run / "test_metrics" / f"{table}.csv").is_file()


def test_checkpoint_loads_with_weights_only(trained_run: Path) -> None:
    raw = torch.load(trained_run / "best.pt", weights_only=True)  # plain tensors and strings on disk
    assert raw[FORMAT_KEY] == CHECKPOINT_FORMAT and raw["arch"] == "resnet18"
    ckpt = Checkpoint.load(trained_run)
    assert ckpt.arch == "resnet18" and len(ckpt.classes) == 5 and ckpt.preprocess.size == 48
    assert ckpt.data and ckpt.ood is not None and ckpt.training is not None and ckpt.resume == {}


def _cfg(data: Path, out: Path, epochs: int, resume: bool = False) -> TrainConfig:
    return TrainConfig(
        data=data,
        out=out,
        recipe=get_recipe("adamw-ema-mixup"),
        image_size=32,
        epochs=epochs,
        batch_size=16,
        device="cpu",
        split=SplitConfig(phash_distance=-1),
        workers=2,
        resume=resume,
    )


@pytest.mark.slow
def test_resume_continues_exactly_where_it_stopped(synthetic_data: Path, tmp_path: Path) -> None:
    run_training(_cfg(synthetic_data, tmp_path / "straight", epochs=2))
    run_training(_cfg(synthetic_data, tmp_path / "interrupted", epochs=1))  # "killed" after epoch 1
    with pytest.raises(FileExistsError):
        run_training(_cfg(synthetic_data, tmp_path / "interrupted", epochs=2))
    run_training(_cfg(synthetic_data, tmp_path / "interrupted", epochs=2, resume=True))
    straight = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    resumed = torch.load(tmp_path / "interrupted" / "last.pt", weights_only=True)
    assert resumed["epoch"] == straight["epoch"] == 1
    for key, value in straight["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, msg=key)
    history = pl.read_csv(tmp_path / "interrupted" / "metrics.csv")
    assert history["epoch"].to_list() == [1, 2]


def test_weights_from_file_and_clear_errors(tmp_path: Path, trained_run: Path) -> None:
    from mri44.model import build_model

    model = build_model(7)  # other class count: the classifier is re-initialised, the rest is loaded
    note = init_weights(model, str(trained_run / "best.pt"), allow_random_init=False)
    assert "fc.weight" in note
    source = Checkpoint.load(trained_run / "best.pt").weights
    torch.testing.assert_close(model.state_dict()["conv1.weight"], source["conv1.weight"])
    with pytest.raises(FileNotFoundError):
        init_weights(model, str(tmp_path / "nope.pth"), allow_random_init=False)
    (tmp_path / "junk.pth").write_bytes(b"\x80\x02junk")
    with pytest.raises(ValueError, match="--weights: cannot load .*junk.pth"):
        init_weights(model, str(tmp_path / "junk.pth"), allow_random_init=False)


def test_imagenet_without_network_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision

    from mri44.model import build_model

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(
        torchvision.models.ResNet18_Weights.IMAGENET1K_V1.__class__, "get_state_dict", offline
    )
    with pytest.raises(MRI44Error, match="--weights none"):
        init_weights(build_model(3), "imagenet", allow_random_init=False)
    assert "random" in init_weights(build_model(3), "imagenet", allow_random_init=True)


def test_best_checkpoint_carries_a_fitted_temperature(trained_run: Path) -> None:
    ckpt = Checkpoint.load(trained_run)
    assert ckpt.temperature is not None and 0.05 < ckpt.temperature < 20 and "val" in ckpt.temperature_source
    summary = pl.read_csv(trained_run / "val_metrics" / "summary.csv").row(0, named=True)
    # Fitted on val by likelihood: on val, the calibration error does not get worse by more than noise.
    assert summary["ece"] <= summary["ece_before_temperature"] + 0.02


@pytest.mark.slow
def test_distillation_from_a_teacher_run(synthetic_data: Path, trained_run: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(
        data=synthetic_data,
        out=tmp_path / "student",
        recipe=get_recipe("distill"),
        image_size=32,  # the teacher reads 48 px: the student's batch is resized for it
        epochs=6,
        batch_size=16,
        device="cpu",
        precision="fp32",
        split_file=trained_run / "split.parquet",
        workers=2,
        teacher=trained_run,
    )
    result = run_training(cfg)
    assert result["val"]["accuracy"] >= 0.7
    assert "best.pt" in Checkpoint.load(tmp_path / "student").teacher
    with pytest.raises(ValueError, match="kd_weight"):
        run_training(TrainConfig(**{**cfg.__dict__, "out": tmp_path / "no-teacher", "teacher": None}))


@pytest.mark.slow
def test_all_data_run_trains_on_every_image(synthetic_data: Path, trained_run: Path, tmp_path: Path) -> None:
    expected = Checkpoint.load(trained_run).temperature
    cfg = TrainConfig(
        data=synthetic_data,
        out=tmp_path / "all",
        recipe=get_recipe("default"),
        image_size=32,
        epochs=1,
        batch_size=16,
        device="cpu",
        workers=2,
        all_data=True,
        temperature_from=trained_run,
    )
    result = run_training(cfg)
    assert set(pl.read_parquet(tmp_path / "all" / "split.parquet")["split"]) == {"train"}
    ckpt = Checkpoint.load(tmp_path / "all")
    assert ckpt.epoch == 0 and ckpt.temperature == expected  # the last epoch is the model
    assert str(trained_run) in ckpt.temperature_source
    assert "test" not in result


@pytest.mark.parametrize("field", ["epochs", "batch_size", "lr"])
def test_zero_settings_are_refused_not_replaced(synthetic_data: Path, tmp_path: Path, field: str) -> None:
    cfg = TrainConfig(data=synthetic_data, out=tmp_path / "r", recipe=get_recipe("default"), **{field: 0})
    with pytest.raises(ValueError, match="must be positive"):
        run_training(cfg)
    assert not (tmp_path / "r" / "last.pt").exists()


@pytest.mark.slow
def test_resume_refuses_changed_settings_and_keeps_its_split(synthetic_data: Path, tmp_path: Path) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synthetic_data, data)
    run_training(_cfg(data, tmp_path / "run", epochs=1))
    saved = pl.read_parquet(tmp_path / "run" / "split.parquet")
    resume = _cfg(data, tmp_path / "run", epochs=2, resume=True)
    with pytest.raises(ValueError, match="seed: 0 -> 5"):
        run_training(TrainConfig(**{**resume.__dict__, "seed": 5}))
    # A file added since: the saved split has no row for it, so resuming refuses instead of re-splitting.
    new = data / "Circloma T1" / "new.png"
    new.write_bytes((data / "Circloma T1" / "slice (3).png").read_bytes())
    with pytest.raises(ValueError, match="no split for 1 image"):
        run_training(resume)
    new.unlink()
    last = tmp_path / "run" / "last.pt"
    intact = last.read_bytes()
    last.write_bytes(intact[: len(intact) // 2])  # a truncated last.pt: one line naming it, no traceback
    with pytest.raises(CheckpointError, match="cannot load checkpoint .*last.pt"):
        run_training(resume)
    last.write_bytes(intact)
    run_training(resume)
    assert pl.read_parquet(tmp_path / "run" / "split.parquet")["split"].to_list() == saved["split"].to_list()


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bf16 (AVX-512 BF16 or AMX)")
@pytest.mark.slow
def test_bf16_cpu_training_learns_like_fp32(synthetic_data: Path, trained_run: Path, tmp_path: Path) -> None:
    # The trained_run fixture's settings and split, under bf16 autocast: what `--precision auto` picks on such CPUs.
    cfg = tiny_run_config(
        synthetic_data, tmp_path / "bf16", precision="bf16", split_file=trained_run / "split.parquet"
    )
    result = run_training(cfg)
    fp32 = json.loads((trained_run / "result.json").read_text())
    assert result["test"]["accuracy"] >= 0.5  # 5 classes: far above chance (0.2)
    assert abs(result["test"]["accuracy"] - fp32["test"]["accuracy"]) <= 0.15  # 20 test images: within noise
    assert Checkpoint.load(tmp_path / "bf16").config["precision"] == "bf16"


def test_a_temperature_from_typo_is_refused_before_training(synthetic_data: Path, tmp_path: Path) -> None:
    from synthetic import tiny_run_config

    cfg = tiny_run_config(synthetic_data, tmp_path / "run", all_data=True, temperature_from=tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        run_training(cfg)
    assert not (tmp_path / "run" / "last.pt").exists()  # refused before any epoch


def test_a_run_whose_data_cannot_be_split_leaves_nothing_behind(synthetic_data: Path, tmp_path: Path) -> None:
    """One image per class leaves val empty: refused, and neither a half run folder (config, cache, split
    files) nor any file in a folder the user made is left; the user's own files there stay."""
    import shutil

    data = tmp_path / "one-each"
    for cls in sorted(d for d in synthetic_data.iterdir() if d.is_dir()):
        (data / cls.name).mkdir(parents=True)
        shutil.copy(sorted(cls.glob("*.png"))[0], data / cls.name)
    with pytest.raises(MRI44Error, match="left train or val empty"):
        run_training(tiny_run_config(data, tmp_path / "new-run"))
    assert not (tmp_path / "new-run").exists()
    mine = tmp_path / "my-folder"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(MRI44Error, match="left train or val empty"):
        run_training(tiny_run_config(data, mine))
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_a_run_folder_another_run_holds_is_refused_untouched(synthetic_data: Path, tmp_path: Path) -> None:
    """Two trainings into one --out (a resumed nohup run and a second start, say) never interleave checkpoints."""
    import os
    import socket

    from mri44.atomic import LOCK_FILE, FolderBusyError

    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_FILE).write_text(f"{os.getppid()} {socket.gethostname()}")  # a live process holds it
    with pytest.raises(FolderBusyError, match="another run"):
        run_training(tiny_run_config(synthetic_data, out))
    assert [p.name for p in out.iterdir()] == [LOCK_FILE]
    with pytest.raises(FolderBusyError):
        run_training(tiny_run_config(synthetic_data, out, folds=2))
    assert [p.name for p in out.iterdir()] == [LOCK_FILE]
