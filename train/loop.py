"""The training run: data -> model -> train_one_epoch / evaluate per epoch -> the best checkpoint on test.
Plain and explicit, in the spirit of torchvision's references/classification/train.py.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from tqdm import tqdm

from mri44.atomic import atomic_path, write_text_atomic
from mri44.calibration import fit_temperature, softmax
from mri44.metrics import expected_calibration_error, metric_tables, write_tables
from mri44.model import (
    build_model,
    checkpoint_path,
    input_normalisation,
    load_checkpoint,
    model_from_checkpoint,
)
from mri44.preprocess import PreprocessSpec
from mri44.torch_input import to_input
from train.augment import random_affine_intensity
from train.checkpoint import RunState, save
from train.config import TrainConfig, check_resume_settings, resolve_device, use_bf16
from train.data import RunData, prepare_data
from train.dataset import class_folders
from train.distill import Teacher, distillation_loss, load_teacher
from train.distributed import Ranks, all_mean, barrier, finish, gather_rows, init_ranks, rank_device, wrap
from train.recipes import Recipe
from train.weights import init_weights

log = logging.getLogger(__name__)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warm-up over `warmup` steps, then constant or cosine decay to 0 at `total` steps.

    A LambdaLR of this function rather than torch's LinearLR + CosineAnnealingLR in a SequentialLR: the latter
    computes the cosine recursively (rounding drifts) and steps its milestone one call late.
    """
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model: torch.nn.Module, recipe: Recipe, lr: float) -> torch.optim.Optimizer:
    """SGD (Nesterov when momentum > 0) or AdamW; AdamW leaves biases and norm parameters undecayed."""
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=lr,
            momentum=recipe.momentum,
            weight_decay=recipe.weight_decay,
            nesterov=recipe.momentum > 0,
        )
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": recipe.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr)


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module, data: RunData, idx: np.ndarray, device: torch.device, batch_size: int, bf16: bool
) -> np.ndarray:
    """Logits (N, classes) for the cached images at idx (under bf16 autocast when bf16)."""
    model.eval()
    out = []
    for start in range(0, len(idx), batch_size):
        sel = torch.as_tensor(idx[start : start + batch_size], device=data.pixels.device)
        x = to_input(data.pixels[sel].to(device, non_blocking=True), data.scale, data.bias)
        x = x.contiguous(memory_format=torch.channels_last) if bf16 else x
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        out.append(logits.float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def epoch_order(state: RunState, data: RunData, recipe: Recipe) -> torch.Tensor:
    """This epoch's training indices: weighted by 1/sqrt(class size) with replacement, or a permutation."""
    train_idx = torch.as_tensor(data.train_idx)
    if recipe.balance == "sqrt":
        counts = np.bincount(data.labels[data.train_idx], minlength=len(data.classes)).astype(np.float64)
        weights = torch.as_tensor(1.0 / np.sqrt(counts[data.labels[data.train_idx]]))
        picked = torch.multinomial(weights, len(train_idx), True, generator=state.sampler)
    else:
        picked = torch.randperm(len(train_idx), generator=state.sampler)
    return train_idx[picked].to(data.pixels.device)


def train_one_epoch(
    state: RunState,
    data: RunData,
    recipe: Recipe,
    batch_size: int,
    device: torch.device,
    bf16: bool,
    teacher: Teacher | None,
    desc: str,
    ranks: Ranks = Ranks(),
) -> dict[str, float]:
    """One pass over the epoch's sampled training images; returns loss, images/s and seconds.

    batch_size is the global batch: under torchrun every rank augments the same global batch and trains on its
    slice (train/distributed.py), so the updates are the single-process run's."""
    model = state.trainer.train()
    order = epoch_order(state, data, recipe)
    steps = max(1, len(data.train_idx) // batch_size)
    part = slice(ranks.rank * (batch_size // ranks.world), (ranks.rank + 1) * (batch_size // ranks.world))
    seen, loss_total, t0 = 0, torch.zeros((), device=device), time.perf_counter()
    bar = tqdm(range(steps), desc=desc, unit="batch", leave=False, disable=None if ranks.main else True)
    for step in bar:
        sel = order[step * batch_size : (step + 1) * batch_size]
        raw = data.pixels[sel].to(device, non_blocking=True).float()
        if recipe.augment:
            raw = random_affine_intensity(raw, generator=state.augment)
        x = to_input(raw, data.scale, data.bias)
        y = data.targets[sel].to(device, non_blocking=True)
        lam, y_partner = 1.0, None
        if recipe.mixup_alpha > 0:
            lam = float(state.mix_rng.beta(recipe.mixup_alpha, recipe.mixup_alpha))
            partner = torch.randperm(len(sel), device=device, generator=state.augment)
            x, y_partner = lam * x + (1.0 - lam) * x[partner], y[partner]
        if ranks.active:  # this rank's share of the global batch
            raw, x, y = raw[part], x[part], y[part]
            y_partner = y_partner[part] if y_partner is not None else None
        if bf16:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x).float()
        loss = lam * F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing)
        if teacher is not None:
            soft = distillation_loss(logits, teacher.logits(raw), recipe.kd_temperature)
            loss = (1.0 - recipe.kd_weight) * loss + recipe.kd_weight * soft
        if y_partner is not None:
            loss = loss + (1.0 - lam) * F.cross_entropy(
                logits, y_partner, label_smoothing=recipe.label_smoothing
            )
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        state.optimizer.step()
        state.scheduler.step()
        if state.ema is not None:
            state.ema.update_parameters(state.model)
        seen += len(sel)
        loss_total += loss.detach()  # summed on the device: no synchronisation per step
        if bar.disable is False and (step % 10 == 0 or step == steps - 1):
            bar.set_postfix(loss=f"{float(loss):.3f}", img_s=f"{seen / (time.perf_counter() - t0):.0f}")
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    loss_mean = float(all_mean(loss_total, ranks)) / steps
    return {"train_loss": loss_mean, "train_images_per_s": seen / seconds, "epoch_s": seconds}


def evaluate(
    model: torch.nn.Module,
    data: RunData,
    idx: np.ndarray,
    device: torch.device,
    batch_size: int,
    bf16: bool,
    ranks: Ranks = Ranks(),
) -> dict:
    """The summary metrics (accuracy, macro-F1, ...) of model on the images at idx; {} when idx is empty. Under
    torchrun each rank predicts every world-th image and the logits are gathered, so every rank gets the same
    summary."""
    if not len(idx):
        return {}
    own = torch.as_tensor(
        predict_logits(model, data, idx[ranks.rank :: ranks.world], device, batch_size, bf16)
    )
    logits = np.zeros((len(idx), len(data.classes)), np.float32)
    for r, part in enumerate(gather_rows(own, ranks)):
        if len(part):
            logits[r :: ranks.world] = part.numpy()
    names = np.asarray(data.classes)
    return metric_tables(list(names[data.labels[idx]]), list(names[logits.argmax(1)]))["summary"].row(
        0, named=True
    )


def new_state(
    cfg: TrainConfig, model: torch.nn.Module, steps_per_epoch: int, epochs: int, lr: float
) -> RunState:
    """Optimiser, warm-up + cosine schedule, seeded generators and the optional weight average of a fresh run."""
    recipe = cfg.recipe
    optimizer = make_optimizer(model, recipe, lr)
    total, warmup = steps_per_epoch * epochs, int(recipe.warmup_epochs * steps_per_epoch)
    ema = None
    if recipe.ema_decay > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(recipe.ema_decay), use_buffers=True)
    device = next(model.parameters()).device
    return RunState(
        model=model,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, total, warmup, recipe.schedule)
        ),
        sampler=torch.Generator().manual_seed(cfg.seed),
        augment=torch.Generator(device=device).manual_seed(cfg.seed + 1),
        mix_rng=np.random.default_rng(cfg.seed + 2),
        ema=ema,
    )


def run_training(cfg: TrainConfig) -> dict[str, Any]:
    """Train, validate every epoch, keep the best checkpoint by validation macro-F1, evaluate it on test.
    Under torchrun, every rank runs this; rank 0 writes the run folder and returns the result, the others {}."""
    device = resolve_device(cfg.device)
    ranks = init_ranks(device)
    try:
        return _train(cfg, rank_device(device, ranks), ranks)
    finally:
        finish(ranks)


def _train(cfg: TrainConfig, device: torch.device, ranks: Ranks) -> dict[str, Any]:
    last_path, best_path = cfg.out / "last.pt", cfg.out / "best.pt"
    if not cfg.resume and last_path.exists():
        raise FileExistsError(
            f"{cfg.out} already holds a run; pass --resume to continue it or choose another --out"
        )
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    hp = cfg.resolved()
    if hp["batch_size"] % ranks.world:
        raise ValueError(f"--batch-size {hp['batch_size']} must be a multiple of the {ranks.world} processes")
    mean, std = input_normalisation(cfg.arch)
    spec = PreprocessSpec(
        size=cfg.image_size, resize=cfg.recipe.resize, channels=cfg.recipe.channels, mean=mean, std=std
    )
    resuming = cfg.resume and last_path.exists()
    if resuming:
        check_resume_settings(cfg.out, cfg)
    class_folders(cfg.data)  # a wrong --data fails here, before the run folder is made
    bf16 = use_bf16(device, cfg.precision)  # and so does a --precision this machine cannot run
    if (
        ranks.main
    ):  # rank 0 writes the config, scans (filling the cache) and writes the split; then the others read
        cfg.out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(cfg.out / "config.json", cfg.to_json())
        data = prepare_data(cfg, spec, device, resuming)
    barrier(ranks)
    if not ranks.main:
        data = prepare_data(cfg, spec, device, resuming, write=False)
    model = build_model(len(data.classes), cfg.arch)
    init_note = init_weights(model, cfg.weights, cfg.allow_random_init, cfg.arch)
    log.info(
        "model: %s, %d classes, %s; device %s x %d, %s",
        cfg.arch,
        len(data.classes),
        init_note,
        device,
        ranks.world,
        "bf16 autocast" if bf16 else "fp32",
    )
    teacher = _teacher_for(cfg, data.classes, spec, device)
    model.to(device)
    if bf16:
        model = model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    state = new_state(cfg, model, max(1, len(data.train_idx) // hp["batch_size"]), hp["epochs"], hp["lr"])
    state.network = wrap(model, device, ranks)
    if resuming:
        state.restore(last_path, data.classes)
        log.info("resumed from %s after epoch %d", last_path, state.epoch + 1)
    common = {
        "arch": cfg.arch,
        "classes": data.classes,
        "preprocess": spec.to_dict(),
        "recipe": cfg.recipe.to_dict(),
        "init": init_note,
        "teacher": teacher.description if teacher else "",
        "config": cfg.to_json(),
    }
    fit(state, data, cfg, device, bf16, teacher, common, ranks)
    barrier(ranks)
    return evaluate_best(best_path, data, cfg, device, bf16) if ranks.main else {}


def fit(
    state: RunState,
    data: RunData,
    cfg: TrainConfig,
    device: torch.device,
    bf16: bool,
    teacher: Teacher | None,
    common: dict[str, Any],
    ranks: Ranks,
) -> None:
    """The epochs from where state stands: train, validate, keep best.pt and last.pt (rank 0 writes)."""
    hp = cfg.resolved()
    for epoch in range(state.epoch + 1, hp["epochs"]):
        desc = f"epoch {epoch + 1}/{hp['epochs']}"
        row = train_one_epoch(state, data, cfg.recipe, hp["batch_size"], device, bf16, teacher, desc, ranks)
        summary = evaluate(state.eval_model, data, data.val_idx, device, cfg.eval_batch_size, bf16, ranks)
        state.epoch = epoch
        state.history.append(
            {"epoch": epoch + 1, **row, "lr": state.scheduler.get_last_lr()[0]}
            | {f"val_{k}": v for k, v in summary.items()}
        )
        improved = (
            not summary or summary["macro_f1"] > state.best_f1
        )  # all-data: the latest epoch is the model
        log.info(
            "%s: loss %.3f, %.0f img/s, %.1fs; %s%s",
            desc,
            row["train_loss"],
            row["train_images_per_s"],
            row["epoch_s"],
            f"val acc {summary['accuracy']:.4f}, macro-F1 {summary['macro_f1']:.4f}" if summary else "no val",
            " (best)" if improved and summary else "",
        )
        if improved:
            state.best_f1 = summary.get("macro_f1", -1.0)
        if not ranks.main:
            continue
        if improved:
            state.save_best(cfg.out / "best.pt", common, summary)
        with atomic_path(cfg.out / "metrics.csv") as tmp:
            pl.DataFrame(state.history).write_csv(tmp)
        state.save_last(cfg.out / "last.pt", common)


def _teacher_for(
    cfg: TrainConfig, classes: list[str], spec: PreprocessSpec, device: torch.device
) -> Teacher | None:
    """The frozen teacher when the run distils, after checking that teacher and recipe go together."""
    if (cfg.teacher is None) != (cfg.recipe.kd_weight == 0):
        raise ValueError(
            "distillation needs both --teacher RUN_DIR and a recipe with kd_weight > 0 (e.g. --recipe distill)"
        )
    if cfg.teacher is None:
        return None
    if cfg.recipe.mixup_alpha > 0:
        raise ValueError("distillation and mixup do not combine: choose a recipe without mixup")
    teacher = load_teacher(cfg.teacher, classes, spec, device)
    log.info("teacher: %s", teacher.description)
    return teacher


def choose_temperature(
    cfg: TrainConfig, val_logits: np.ndarray | None, val_labels: np.ndarray
) -> tuple[float, str]:
    """(temperature, where it came from): given, another run's, fitted on val, or 1 when there is no val."""
    if cfg.temperature is not None:
        return cfg.temperature, "given with --temperature"
    if cfg.temperature_from is not None:
        temperature = float(load_checkpoint(cfg.temperature_from).get("temperature", 0.0))
        if temperature <= 0:
            raise ValueError(f"--temperature-from {cfg.temperature_from}: its checkpoint has no temperature")
        return temperature, f"fitted on the val split of {checkpoint_path(cfg.temperature_from)}"
    if val_logits is not None:
        return fit_temperature(val_logits, val_labels), "fitted on this run's val split"
    return 1.0, "none (no val split and no --temperature)"


def evaluate_best(
    best_path: Path, data: RunData, cfg: TrainConfig, device: torch.device, bf16: bool
) -> dict[str, Any]:
    """Best checkpoint -> temperature (stored in it) -> predictions and tables for val and test."""
    best = load_checkpoint(best_path)
    names = np.asarray(best["classes"])
    model = model_from_checkpoint(best).to(device)
    if bf16:
        model = model.to(memory_format=torch.channels_last)
    parts = {name: idx for name, idx in (("val", data.val_idx), ("test", data.test_idx)) if len(idx)}
    logits = {
        name: predict_logits(model, data, idx, device, cfg.eval_batch_size, bf16)
        for name, idx in parts.items()
    }
    temperature, source = choose_temperature(cfg, logits.get("val"), data.labels[data.val_idx])
    save({**best, "temperature": temperature, "temperature_source": source}, best_path)
    result: dict[str, Any] = {"best_epoch": best["epoch"] + 1, "temperature": temperature}
    log.info("temperature %.3f (%s)", temperature, source)
    for name, idx in parts.items():
        raw, probs = softmax(logits[name]), softmax(logits[name], temperature)
        correct = probs.argmax(1) == data.labels[idx]
        preds = (
            data.split[idx]
            .select("path", "label")
            .with_columns(pred_class=pl.Series(names[probs.argmax(1)]), confidence=pl.Series(probs.max(1)))
        )
        with atomic_path(cfg.out / f"{name}_predictions.parquet") as tmp:
            preds.write_parquet(tmp)
        tables = metric_tables(names[data.labels[idx]].tolist(), preds["pred_class"].to_list())
        tables["summary"] = tables["summary"].with_columns(
            ece=pl.lit(expected_calibration_error(probs.max(1), correct)),
            ece_before_temperature=pl.lit(expected_calibration_error(raw.max(1), correct)),
        )
        write_tables(tables, cfg.out / f"{name}_metrics", best["classes"])
        result[name] = tables["summary"].row(0, named=True)
    test = result.get("test")
    log.info(
        "best epoch %d; test: %s",
        result["best_epoch"],
        ", ".join(f"{k} {v:.4f}" for k, v in test.items() if isinstance(v, float))
        if test
        else "no test split",
    )
    write_text_atomic(cfg.out / "result.json", json.dumps(result, indent=2))
    return result
