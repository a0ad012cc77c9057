"""Unit tests for the training loop's parts: split file loader, cache keys, LR schedule, optimiser groups,
augmentation, checkpoint resume validation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from mri44.errors import CheckpointError
from mri44.model import build_model
from mri44.preprocess import PreprocessSpec
from mri44.stages.train.augment import random_affine_intensity
from mri44.stages.train.data import load_split
from mri44.stages.train.dataset import load_or_scan
from mri44.stages.train.loop import lr_factor, make_optimizer
from mri44.stages.train.recipes import get_recipe


def _manifest(paths: list[str]) -> pl.DataFrame:
    return pl.DataFrame({"path": paths, "label": ["a"] * len(paths)})


def test_split_loader_joins_by_path_and_refuses_gaps_and_foreign_files(tmp_path: Path) -> None:
    given = pl.DataFrame({"path": ["x.png", "y.png", "z.png"], "split": ["val", "train", "test"]})
    given.write_csv(tmp_path / "split.csv")
    joined = load_split(tmp_path / "split.csv", _manifest(["z.png", "x.png"]))
    assert joined["split"].to_list() == ["test", "val"]  # the manifest's order, each file's own split
    assert joined["group"].to_list() == [-1, -1]  # no group column given: none invented
    with pytest.raises(ValueError, match="no split for 1 image.*new.png"):
        load_split(tmp_path / "split.csv", _manifest(["x.png", "new.png"]))
    pl.DataFrame({"file": ["x.png"]}).write_csv(tmp_path / "other.csv")
    with pytest.raises(ValueError, match="needs the columns path and split"):
        load_split(tmp_path / "other.csv", _manifest(["x.png"]))
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="cannot read split file"):
        load_split(tmp_path / "bad.parquet", _manifest(["x.png"]))


def test_cache_key_follows_the_spec_and_the_file_set(synthetic_data: Path, tmp_path: Path) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synthetic_data, data)
    cache = tmp_path / "cache"
    spec = PreprocessSpec(size=24)
    first = load_or_scan(data, spec, cache, workers=1)
    assert len(list(cache.glob("pixels-*.npy"))) == 1
    again = load_or_scan(data, spec, cache, workers=1)  # same files and spec: read back, not rescanned
    assert len(list(cache.glob("pixels-*.npy"))) == 1
    np.testing.assert_array_equal(first.pixels, again.pixels)
    load_or_scan(data, PreprocessSpec(size=24, resize="stretch"), cache, workers=1)  # other spec: new entry
    assert len(list(cache.glob("pixels-*.npy"))) == 2
    victim = next(p for p in sorted(data.rglob("*.png")))
    victim.unlink()  # a changed file set: a new entry, with one image fewer
    fewer = load_or_scan(data, spec, cache, workers=1)
    assert len(list(cache.glob("pixels-*.npy"))) == 3 and fewer.pixels.shape[0] == first.pixels.shape[0] - 1


def test_lr_schedule_warms_up_linearly_then_follows_the_cosine_to_zero() -> None:
    total, warmup = 100, 10
    factors = [lr_factor(s, total, warmup, "cosine") for s in range(total)]
    assert factors[:warmup] == pytest.approx([(s + 1) / warmup for s in range(warmup)])
    assert factors[warmup] == pytest.approx(1.0)
    mid = warmup + (total - warmup) // 2
    assert factors[mid] == pytest.approx(0.5, abs=1e-9)
    assert all(
        a >= b for a, b in zip(factors[warmup:], factors[warmup + 1 :], strict=False)
    )  # non-increasing
    assert lr_factor(total, total, warmup, "cosine") == pytest.approx(0.0)
    assert lr_factor(total + 50, total, warmup, "cosine") == pytest.approx(0.0)  # never rises again
    assert lr_factor(60, total, warmup, "constant") == 1.0
    # As the optimiser sees it, through LambdaLR: step k runs at peak * factor(k).
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, warmup, "cosine"))
    seen = []
    for _ in range(total):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.4 * f for f in factors])
    assert math.isclose(seen[-1], 0.4 * factors[-1])


def test_adamw_decays_weights_but_not_biases_or_norm_parameters() -> None:
    model = build_model(5)
    opt = make_optimizer(model, get_recipe("default"), lr=1e-3)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == get_recipe("default").weight_decay and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    undecayed = {names[id(p)] for p in no_decay["params"]}
    assert "conv1.weight" in decayed and "fc.weight" in decayed
    assert {"fc.bias", "bn1.weight", "bn1.bias"} <= undecayed
    assert decayed.isdisjoint(undecayed) and len(decayed) + len(undecayed) == len(names)
    sgd = make_optimizer(model, get_recipe("seed"), lr=1e-2)
    assert len(sgd.param_groups) == 1 and isinstance(sgd, torch.optim.SGD)


def test_augmentation_keeps_shape_and_range_is_seeded_and_changes_images() -> None:
    x = torch.rand(6, 1, 32, 32) * 255
    a = random_affine_intensity(x, generator=torch.Generator().manual_seed(3))
    b = random_affine_intensity(x, generator=torch.Generator().manual_seed(3))
    c = random_affine_intensity(x, generator=torch.Generator().manual_seed(4))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert float(a.min()) >= 0.0 and float(a.max()) <= 255.0
    torch.testing.assert_close(a, b)  # same generator state, same augmentation: resumable runs rely on it
    assert not torch.allclose(a, c) and not torch.allclose(a, x)
    # Mild by design: a blank image stays nearly blank (brightness shift at most 12 of 255).
    assert float(random_affine_intensity(torch.zeros(4, 1, 16, 16)).max()) <= 12.0 + 1e-4


def test_resume_refuses_a_checkpoint_without_training_state(trained_run: Path, tmp_path: Path) -> None:
    """best.pt holds the model only: resuming from it is refused with a line naming what is missing."""
    from mri44.stages.train.checkpoint import RunState
    from mri44.stages.train.config import TrainConfig
    from mri44.stages.train.loop import new_state

    model = build_model(5)
    cfg = TrainConfig(data=tmp_path, out=tmp_path, recipe=get_recipe("default"))
    state: RunState = new_state(cfg, model, steps_per_epoch=2, epochs=2, lr=1e-3)
    classes = torch.load(trained_run / "best.pt", weights_only=True)["classes"]
    with pytest.raises(ValueError, match="cannot be resumed: it lacks optimizer"):
        state.restore(trained_run / "best.pt", classes)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="cannot load checkpoint"):
        state.restore(tmp_path / "junk.pt", classes)


def test_precision_auto_uses_bf16_only_where_the_hardware_computes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import mri44.stages.train.config as config

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert config.use_bf16(cuda, "auto") and not config.use_bf16(cuda, "fp32")
    monkeypatch.setattr(config, "cpu_has_native_bf16", lambda: False)  # an AVX2-only CPU
    assert not config.use_bf16(cpu, "auto")
    with pytest.raises(ValueError, match="no native bf16"):
        config.use_bf16(cpu, "bf16")
    monkeypatch.setattr(config, "cpu_has_native_bf16", lambda: True)  # AVX-512 BF16 or AMX
    assert config.use_bf16(cpu, "auto") and config.use_bf16(cpu, "bf16")
    assert not config.use_bf16(cpu, "fp32")
    with pytest.raises(ValueError, match="unknown --precision"):
        config.use_bf16(cpu, "fp16")


def test_resume_takes_a_run_folder_by_any_name_of_its_own(tmp_path: Path) -> None:
    """A fold's settings hold its split file's path: the folder reached through a symlink is the same run."""
    from mri44.stages.train.config import TrainConfig, check_resume_settings
    from mri44.stages.train.split import SplitConfig

    real = tmp_path / "cv5-t50-l3-v4"
    (real / "fold-5").mkdir(parents=True)
    for name in ("fold-5-split.parquet", "fold-5/split.parquet"):
        (real / name).write_bytes(b"")
    recipe = get_recipe("default")

    def fold_config(root: Path) -> TrainConfig:
        return TrainConfig(
            data=tmp_path,
            out=root / "fold-5",
            recipe=recipe,
            split=SplitConfig(),
            split_file=root / "fold-5-split.parquet",
        )

    (real / "fold-5" / "config.json").write_text(fold_config(real).to_json())
    (tmp_path / "cv5-t50").symlink_to(real)
    check_resume_settings(tmp_path / "cv5-t50" / "fold-5", fold_config(tmp_path / "cv5-t50"))  # no error
    other = tmp_path / "elsewhere"
    with pytest.raises(ValueError, match="split_file"):  # a different file is still a different setting
        check_resume_settings(real / "fold-5", fold_config(other))


def test_soft_label_teachers_are_a_tuple_from_every_source_and_old_runs_still_resume(tmp_path: Path) -> None:
    """--soft-labels A --soft-labels B (an ensemble teacher) from the command line, a TOML file and a config.json;
    a config.json written before ensembles (one path, or null) reads as one teacher or none and resumes."""
    import json

    from mri44.errors import SettingError
    from mri44.stages.train.config import (
        TrainConfig,
        check_resume_settings,
        config_from_settings,
        read_toml_settings,
        same_setting,
    )

    cfg = config_from_settings(None, data=tmp_path, out=tmp_path / "run", soft_labels=["a", tmp_path / "b"])
    assert cfg.soft_labels == (Path("a"), tmp_path / "b")
    assert config_from_settings(None, data=tmp_path, out=tmp_path / "run").soft_labels == ()
    (tmp_path / "run.toml").write_text('soft-labels = ["t50", "/abs/s18"]\n')
    assert read_toml_settings(tmp_path / "run.toml")["soft_labels"] == (tmp_path / "t50", Path("/abs/s18"))
    for old, teachers in (("/x/t50", (Path("/x/t50"),)), (None, ())):
        saved = json.loads(cfg.to_json()) | {"soft_labels": old}
        (tmp_path / "config.json").write_text(json.dumps(saved))
        assert TrainConfig.read_json(tmp_path / "config.json").soft_labels == teachers
    assert same_setting("/x/t50", ["/x/t50"], is_path=True) and same_setting(None, [], is_path=True)
    # a run written before --leave-out and --cross-fit resumes: a missing setting is its default
    run = tmp_path / "old"
    run.mkdir()
    (run / "split.parquet").write_bytes(b"")
    old = config_from_settings(None, data=tmp_path, out=run)
    saved = {k: v for k, v in json.loads(old.to_json()).items() if k not in ("leave_out", "cross_fit")}
    (run / "config.json").write_text(json.dumps(saved))
    check_resume_settings(run, old)
    with pytest.raises(SettingError, match="cross_fit: False -> True"):
        check_resume_settings(run, config_from_settings(old, cross_fit=True))
    assert not same_setting(["/x/t50"], ["/x/t50", "/x/s18"], is_path=True)
    assert not same_setting("/x/t50", ["/x/s18"], is_path=True)


def test_an_ensemble_teacher_gives_the_geometric_mean_of_its_members_probabilities() -> None:
    from mri44.stages.train.augment import apply_params
    from mri44.stages.train.distill import Teacher
    from mri44.stages.train.soft_labels import compute_soft_labels

    spec = PreprocessSpec(size=16)
    scale, bias = (torch.as_tensor(v) for v in spec.scale_bias())

    def teacher(seed: int) -> Teacher:
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 5)).eval()
        return Teacher(net, spec, scale, bias, f"teacher {seed}", 5)

    members = [teacher(1), teacher(2)]
    pixels = (torch.rand(6, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    train_idx, temperature = np.arange(4), 2.0
    saved = compute_soft_labels(
        [(members, train_idx)], pixels, train_idx, np.arange(4, 6), 2, 5, temperature, seed=0
    )
    assert saved["teacher"] == "geometric mean of teacher 1 + teacher 2"
    for view in range(2):
        raw = apply_params(pixels[:4].float(), saved["params"][view, :4])
        probs = [torch.softmax(m.logits(raw) / temperature, 1) for m in members]
        geometric = (probs[0] * probs[1]).sqrt()
        geometric /= geometric.sum(1, keepdim=True)
        stored = torch.zeros(4, 5).scatter_(
            1, saved["top_index"][view, :4].long(), saved["top_prob"][view, :4].float()
        )
        torch.testing.assert_close(stored, geometric, atol=2e-3, rtol=0)  # stored as fp16
        assert (stored - probs[0]).abs().max() > 0.01  # not simply the first member
    single = compute_soft_labels(
        [(members[:1], train_idx)], pixels, train_idx, np.arange(4, 6), 2, 5, temperature, seed=0
    )
    assert single["teacher"] == "teacher 1"
    # --cross-fit: rows 0 and 2 by teacher 1, rows 1 and 3 by teacher 2; the same views as one teacher's run
    parts = [(members[:1], np.array([0, 2])), (members[1:], np.array([1, 3]))]
    split = compute_soft_labels(parts, pixels, train_idx, np.zeros(0, np.int64), 2, 5, temperature, seed=0)
    torch.testing.assert_close(split["params"], single["params"])
    assert split["teacher"] == "out of fold: 2 images by teacher 1; 2 images by teacher 2"
    for view in range(2):
        raw = apply_params(pixels[:4].float(), split["params"][view, :4])
        for member, rows in parts:
            probs = torch.softmax(member[0].logits(raw[rows]) / temperature, 1)
            stored = torch.zeros(2, 5).scatter_(
                1, split["top_index"][view, rows].long(), split["top_prob"][view, rows].float()
            )
            torch.testing.assert_close(stored, probs, atol=2e-3, rtol=0)
    with pytest.raises(ValueError, match="every training row once"):
        compute_soft_labels(parts[:1], pixels, train_idx, np.zeros(0, np.int64), 2, 5, temperature, seed=0)


def test_tumour_and_contrast_heads_learn_from_the_shared_features_and_never_leave_training() -> None:
    """The factored head's training-only heads (train/aux_heads.py): their loss reaches the body, their
    weights are kept out of the plain network's."""
    from mri44.stages.train.aux_heads import attach_aux_heads, aux_loss, without_aux

    classes = ["Carcinoma T1", "Carcinoma T1C+", "Meningioma T1C+", "_NORMAL T2"]
    torch.manual_seed(0)
    model = build_model(len(classes), "resnet18")
    heads = attach_aux_heads(model, classes)
    assert (
        heads.tumor.out_features == 3 and heads.contrast.out_features == 3
    )  # Carcinoma, Meningioma, _NORMAL
    assert heads.tumor_of.tolist() == [0, 0, 1, 2] and heads.contrast_of.tolist() == [0, 1, 1, 2]
    logits = model(torch.randn(4, 3, 32, 32))
    assert logits.shape == (4, 4) and heads.pooled is not None and heads.pooled.shape == (4, 512)
    loss = aux_loss(model, torch.tensor([0, 1, 2, 3]), 0.0)
    loss.backward()
    assert torch.isfinite(loss) and heads.tumor.weight.grad is not None
    assert model.layer4[1].conv2.weight.grad is not None and model.layer4[1].conv2.weight.grad.abs().sum() > 0
    assert model.fc.weight.grad is None  # the 44-way head plays no part in this loss
    plain = build_model(len(classes), "resnet18")
    plain.load_state_dict(without_aux(model.state_dict()))  # strict: exactly the plain network's weights
    assert any(k.startswith("aux.") for k in model.state_dict())


def test_a_mixup_view_is_taught_the_same_mix_of_its_two_soft_labels() -> None:
    from mri44.stages.train.distill import mix_log_probs

    rng = np.random.default_rng(0)
    p, q = (torch.softmax(torch.as_tensor(rng.normal(0, 3, (4, 6))), 1) for _ in range(2))
    for lam in (0.0, 0.3, 1.0):
        mixed = mix_log_probs(p.log(), q.log(), lam).exp()
        torch.testing.assert_close(mixed, lam * p + (1 - lam) * q)
        torch.testing.assert_close(mixed.sum(1), torch.ones(4, dtype=mixed.dtype))
