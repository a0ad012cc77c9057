"""The CPU routes of the model issue: late stages trained on cached frozen features (--freeze-through), and a
student trained on soft labels computed once (--soft-labels, FKD)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F
from synthetic import tiny_run_config

from mri44.checkpoint import Checkpoint
from mri44.errors import SettingError
from mri44.labels import parse_label
from mri44.model import build_model
from mri44.stages.train.augment import apply_params, draw_params
from mri44.stages.train.loop import run_training
from mri44.stages.train.recipes import get_recipe
from mri44.stages.train.soft_labels import SoftLabels

FROZEN = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.")


def _pretrained(tmp_path: Path) -> Path:
    """A fixed ResNet-18 state dict standing in for ImageNet weights (none can be downloaded here)."""
    torch.manual_seed(0)
    path = tmp_path / "init.pt"
    torch.save(build_model(5, "resnet18").state_dict(), path)
    return path


def _frozen(data: Path, out: Path, init: Path, epochs: int, resume: bool = False):  # -> TrainConfig
    # Two warm-up epochs: a run stopped after epoch 1 followed the same schedule as the 2-epoch run.
    recipe = replace(get_recipe("cached"), warmup_epochs=2.0)
    return tiny_run_config(
        data, out, recipe=recipe, weights=str(init), freeze_through="layer3", feature_views=2,
        image_size=32, epochs=epochs, resume=resume,
    )  # fmt: skip


@pytest.mark.slow
def test_frozen_route_trains_only_the_late_stages_and_resumes_exactly(
    synthetic_data: Path, tmp_path: Path
) -> None:
    init = _pretrained(tmp_path)
    result = run_training(_frozen(synthetic_data, tmp_path / "straight", init, epochs=2))
    run_training(_frozen(synthetic_data, tmp_path / "interrupted", init, epochs=1))
    run_training(_frozen(synthetic_data, tmp_path / "interrupted", init, epochs=2, resume=True))
    start = torch.load(init, weights_only=True)
    straight = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["model"]
    resumed = torch.load(tmp_path / "interrupted" / "last.pt", weights_only=True)["model"]
    for key, value in start.items():
        if key.startswith(FROZEN):  # weights and batch-norm statistics alike: the frozen part never changes
            torch.testing.assert_close(straight[key], value, rtol=0, atol=0, msg=key)
    assert not torch.equal(straight["layer4.0.conv1.weight"], start["layer4.0.conv1.weight"])
    for key, value in straight.items():
        torch.testing.assert_close(resumed[key], value, msg=key)
    cache = np.load(tmp_path / "straight" / "cache" / "features-resnet18-layer3-32px-2views.npy")
    images = pl.read_parquet(tmp_path / "straight" / "split.parquet").height
    assert cache.shape[:3] == (2, images, 256) and cache.dtype == np.float16
    assert not np.array_equal(cache[0], cache[1])  # view 1 is augmented
    # Validation during training ran the late stages on cached view-0 features; the final evaluation runs the
    # whole saved network on pixels. They agree: the cache is exactly the frozen part's output.
    history = pl.read_csv(tmp_path / "straight" / "metrics.csv")
    best = history.filter(pl.col("epoch") == result["best_epoch"])
    assert best["val_accuracy"][0] == pytest.approx(result["val"]["accuracy"])


def test_frozen_route_refuses_what_it_cannot_mean(synthetic_data: Path, tmp_path: Path) -> None:
    with pytest.raises(SettingError, match="freeze random layers"):
        run_training(tiny_run_config(synthetic_data, tmp_path / "a", freeze_through="layer3"))
    with pytest.raises(SettingError, match="needs --freeze-through"):
        run_training(tiny_run_config(synthetic_data, tmp_path / "b", feature_views=3))
    with pytest.raises(SettingError, match="without distillation"):  # would silently train without the labels
        run_training(
            tiny_run_config(
                synthetic_data,
                tmp_path / "d",
                freeze_through="layer3",
                weights="x",
                soft_labels=(tmp_path,),
                recipe=get_recipe("distill"),
            )  # fmt: skip
        )
    with pytest.raises(SettingError, match="unknown --freeze-through"):
        run_training(tiny_run_config(synthetic_data, tmp_path / "c", freeze_through="layer9", weights="x"))


def test_augmentation_parameters_replay_a_view_at_any_size() -> None:
    """A stored view means the same geometry at the teacher's and the student's input size."""
    torch.manual_seed(0)
    big = F.interpolate(torch.rand(4, 1, 8, 8) * 255, size=64, mode="bilinear")
    small = F.avg_pool2d(big, 2)
    params = draw_params(4, torch.Generator().manual_seed(1))
    replayed = F.avg_pool2d(apply_params(big, params), 2)
    assert (replayed - apply_params(small, params)).abs().mean() < 4.0  # grey levels, of 255
    other = draw_params(4, torch.Generator().manual_seed(2))
    assert (replayed - apply_params(small, other)).abs().mean() > 10.0


@pytest.mark.slow
def test_student_trains_on_soft_labels_computed_once(
    synthetic_data: Path, trained_run: Path, tmp_path: Path
) -> None:
    cfg = tiny_run_config(
        synthetic_data, tmp_path / "student", recipe=get_recipe("distill"), image_size=32, epochs=6,
        soft_labels=(trained_run,), soft_label_views=3, split_file=trained_run / "split.parquet",
    )  # fmt: skip
    result = run_training(cfg)
    assert result["val"]["accuracy"] >= 0.7
    saved = torch.load(tmp_path / "student" / "soft_labels.pt", weights_only=True)
    train, images = saved["train_idx"], pl.read_parquet(trained_run / "split.parquet").height
    assert saved["params"].shape == (3, images, 8) and saved["top_index"].shape == (3, images, 5)
    assert saved["params"][:, train].abs().sum(-1).min() > 0  # every training image has its views
    others = torch.ones(images, dtype=torch.bool)
    others[train] = False
    assert saved["params"][:, others].abs().sum() == 0  # val and test images are never trained on
    top = saved["top_prob"][:, train].float().sum(-1)
    assert float(top.min()) > 0.99 and float(top.max()) < 1.01  # 5 classes: the top 5 hold all the mass
    # The teacher on the plain validation images, kept for the record, agrees with its own val accuracy.
    labels = pl.read_parquet(trained_run / "split.parquet")["label"].to_numpy()[saved["val_idx"].numpy()]
    classes = Checkpoint.load(trained_run).classes
    teacher_acc = float((np.asarray(classes)[saved["val_probs"].float().argmax(1).numpy()] == labels).mean())
    assert teacher_acc == pytest.approx(
        json.loads((trained_run / "result.json").read_text())["val"]["accuracy"], abs=0.05
    )

    soft = SoftLabels(saved["params"], saved["top_index"].long(), saved["top_prob"].float(), 2.0, 5)
    _, log_probs = soft.batch(train[:4], torch.tensor([0, 1, 2, 0]))
    torch.testing.assert_close(log_probs.exp().sum(1), torch.ones(4), atol=1e-3, rtol=0)
    # Mixed views (recipe distill-mix): the stored labels mixed as probabilities still teach the student.
    mixed = run_training(replace(cfg, out=tmp_path / "mixed", recipe=get_recipe("distill-mix")))
    assert (
        mixed["val"]["accuracy"] >= 0.5
    )  # 5 classes, chance 0.2; mixup learns slower in 6 epochs (0.65 seen)
    with pytest.raises(SettingError, match="one of --teacher RUN_DIR or --soft-labels"):
        run_training(replace(cfg, out=tmp_path / "both", teacher=trained_run))
    with pytest.raises(SettingError, match="kd_weight"):
        run_training(replace(cfg, out=tmp_path / "no-kd", recipe=get_recipe("default")))


def test_an_exported_model_teaches_like_its_checkpoint(trained_run: Path, exported_model: Path) -> None:
    """A shipped ONNX model is a teacher (metadata gives classes and pixels) with the checkpoint's own logits."""
    from mri44.files import file_sha256
    from mri44.stages.train.distill import load_teacher

    ckpt = Checkpoint.load(trained_run)
    spec = ckpt.preprocess
    cpu = torch.device("cpu")
    raw = torch.rand(3, 3, spec.size, spec.size, generator=torch.Generator().manual_seed(0)) * 255
    from_onnx = load_teacher(exported_model, ckpt.classes, spec, cpu)
    from_run = load_teacher(trained_run, ckpt.classes, spec, cpu)
    torch.testing.assert_close(from_onnx.logits(raw), from_run.logits(raw), atol=1e-3, rtol=1e-3)
    assert from_onnx.num_classes == len(ckpt.classes)
    assert from_onnx.description.endswith(file_sha256(exported_model))
    with pytest.raises(SettingError, match="other classes"):
        load_teacher(exported_model, ckpt.classes[::-1], spec, cpu)


@pytest.mark.slow
def test_a_run_with_tumour_and_contrast_heads_keeps_them_in_last_pt_only_and_resumes(
    synthetic_data: Path, tmp_path: Path
) -> None:
    # The heads without a teacher; two warm-up epochs, so a run stopped after epoch 1 followed the 2-epoch schedule.
    recipe = replace(get_recipe("distill-aux"), name="aux", kd_weight=0.0, warmup_epochs=2.0)
    cfg = tiny_run_config(synthetic_data, tmp_path / "straight", recipe=recipe, image_size=32, epochs=2)
    run_training(cfg)
    last = Checkpoint.load(tmp_path / "straight" / "last.pt")
    types = {parse_label(name).tumor_type for name in last.classes}
    assert last.weights["aux.tumor.weight"].shape == (len(types), 512)
    best = Checkpoint.load(tmp_path / "straight" / "best.pt")
    assert not any(k.startswith("aux.") for k in best.weights)
    best.model()  # the plain network loads strictly: export and scoring never see the heads
    stopped = replace(cfg, out=tmp_path / "stopped")
    run_training(replace(stopped, epochs=1))
    run_training(replace(stopped, resume=True))
    resumed = Checkpoint.load(tmp_path / "stopped" / "last.pt").weights
    for key in ("aux.tumor.weight", "aux.contrast.bias", "fc.weight", "layer4.1.conv2.weight"):
        torch.testing.assert_close(resumed[key], last.weights[key], msg=key)
    with pytest.raises(SettingError, match="aux_weight"):
        run_training(replace(cfg, out=tmp_path / "frozen", freeze_through="layer3", weights="x"))


@pytest.mark.slow
def test_extra_images_teach_through_soft_labels_alone(
    synthetic_data: Path, trained_run: Path, tmp_path: Path
) -> None:
    """--extra-images: images of another label set join training with the teacher's soft labels as their only
    target, sampled as classes of their own, counted as trained on, never validated or tested."""
    from synthetic import make_dataset

    extra = make_dataset(
        tmp_path / "extra", per_class=10, size=64, seed=7, classes=("Circloma T1", "Squaroma T2")
    )
    for folder, new in (("Circloma T1", "round"), ("Squaroma T2", "square")):  # another label set's names
        (extra / folder).rename(extra / new)
    copied = next((synthetic_data / "Circloma T1").iterdir())  # a --data image: left out of the extras
    (extra / "round" / "copy.png").write_bytes(copied.read_bytes())
    cfg = tiny_run_config(
        synthetic_data, tmp_path / "student", recipe=get_recipe("distill"), image_size=32, epochs=2,
        soft_labels=(trained_run,), soft_label_views=2, split_file=trained_run / "split.parquet",
        extra_images=extra,
    )  # fmt: skip
    run_training(cfg)
    split = pl.read_parquet(trained_run / "split.parquet")
    images, trained = split.height, split.filter(split="train").height
    saved = torch.load(tmp_path / "student" / "soft_labels.pt", weights_only=True)
    assert saved["params"].shape[1] == images + 20  # the copy is not an extra row
    extra_rows = torch.arange(images, images + 20)
    assert bool(torch.isin(extra_rows, saved["train_idx"]).all())
    assert saved["params"][:, extra_rows].abs().sum(-1).min() > 0  # each extra image has its views
    best = Checkpoint.load(tmp_path / "student" / "best.pt")
    assert best.classes == Checkpoint.load(trained_run).classes  # no class of the extras
    assert best.training is not None and len(best.training.sha256) == trained + 20
    assert json.loads((tmp_path / "student" / "config.json").read_text())["extra_images"] == str(extra)
    with pytest.raises(SettingError, match="--extra-images needs --soft-labels"):
        run_training(
            tiny_run_config(synthetic_data, tmp_path / "alone", image_size=32, epochs=1, extra_images=extra)
        )


def test_extra_images_add_draws_by_their_share_of_the_balance() -> None:
    """Each labelled image is drawn as often per epoch with extra images as without: the epoch grows by the
    extras' share of the square-root weights (two classes of 16 and 4, one extra folder of 64)."""
    from mri44.stages.train.data import RunData
    from mri44.stages.train.loop import epoch_draws, sampling_weights

    labels = np.array([0] * 16 + [1] * 4)
    data = RunData(
        split=pl.DataFrame(), classes=["a", "b"], labels=np.concatenate([labels, np.full(64, -100)]),
        pixels=torch.zeros(84, 1, 2, 2), targets=torch.zeros(84), train_idx=np.arange(20),
        val_idx=np.zeros(0, np.int64), test_idx=np.zeros(0, np.int64), scale=torch.ones(1), bias=torch.zeros(1),
        extra_idx=np.arange(20, 84), extra_groups=np.zeros(64, np.int64),
    )  # fmt: skip
    weights = sampling_weights(data, get_recipe("distill"))
    assert weights is not None
    np.testing.assert_allclose(weights, [1 / 4] * 16 + [1 / 2] * 4 + [1 / 8] * 64)
    assert epoch_draws(data, get_recipe("distill")) == 47  # 20 x (4 + 2 + 8) / (4 + 2) = 46.7
    assert epoch_draws(data, replace(get_recipe("distill"), balance="none")) == 84
    plain = replace(data, labels=labels, extra_idx=np.zeros(0, np.int64), extra_groups=np.zeros(0, np.int64))
    assert epoch_draws(plain, get_recipe("distill")) == 20
