"""The training run: data -> model -> train_one_epoch / evaluate per epoch -> the best checkpoint on test.
Plain and explicit, in the spirit of torchvision's references/classification/train.py.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from torchvision.models import ResNet
from tqdm import tqdm

from mri44.atomic import OutputExistsError, atomic_path, held, write_text_atomic
from mri44.calibration import fit_temperature, softmax
from mri44.checkpoint import Checkpoint
from mri44.detail import ImageLimit, fit_image_limits, input_statistics
from mri44.errors import SettingError
from mri44.files import checkpoint_path
from mri44.fingerprint import THUMB, TrainingManifest
from mri44.metrics import expected_calibration_error, metric_tables, write_tables
from mri44.model import (
    build_model,
    input_normalisation,
    logits_and_features,
)
from mri44.ood import (
    PASS_RATE,
    OodRows,
    OodSpec,
    fit_ood,
    held_out_rate_source,
    leave_one_out_pass_rate,
    normalised,
    reference_rows,
)
from mri44.orientation import QUARTER_TURNS, fit_orientation
from mri44.predictions import prediction_frame
from mri44.preprocess import PreprocessSpec
from mri44.run_folder import RunFolder
from mri44.torch_input import to_input

from .augment import apply_params, random_affine_intensity
from .aux_heads import AUX_PREFIX, attach_aux_heads, aux_loss
from .checkpoint import RunState
from .config import TrainConfig, check_resume_settings, resolve_device, use_bf16
from .cv import cross_fit_teachers, cv_calibration, is_cv_folder
from .data import IGNORE_LABEL, RunData, prepare_data
from .dataset import class_folders, load_or_scan
from .distill import Teacher, distillation_loss, load_teacher, mix_log_probs
from .distributed import Ranks, all_mean, barrier, finish, gather_rows, init_ranks, rank_device, wrap
from .frozen import (
    check_freeze_settings,
    compute_features,
    feature_batch,
    freeze,
    load_or_compute_features,
    trainable_part,
)
from .recipes import Recipe
from .soft_labels import FILE_NAME as SOFT_LABELS_FILE
from .soft_labels import SoftLabels, compute_soft_labels, describe_parts, load_or_compute
from .weights import init_weights

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
    """SGD (Nesterov when momentum > 0) or AdamW over the trainable parameters; AdamW leaves biases and norm
    parameters undecayed. The body (all but the classifier `fc`) learns at lr * recipe.backbone_lr_factor: a
    pretrained network's layers need a gentler step than its new head."""
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        group_lr = lr if name.startswith(("fc.", AUX_PREFIX)) else lr * recipe.backbone_lr_factor
        decay = recipe.weight_decay if recipe.optimizer == "sgd" or param.ndim > 1 else 0.0
        groups.setdefault((group_lr, decay), []).append(param)
    param_groups = [{"params": ps, "lr": g_lr, "weight_decay": wd} for (g_lr, wd), ps in groups.items()]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=recipe.momentum, nesterov=recipe.momentum > 0)
    return torch.optim.AdamW(param_groups, lr=lr)


EvalBatch = Callable[[torch.Tensor], torch.Tensor]  # row indices -> the network's input on the device
# (row indices, augmentation generator) -> (network input, the augmented uint8-valued pixels an on-the-fly
# teacher sees, the stored soft labels' log-probabilities for those views)
TrainBatch = Callable[
    [torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]
]


@dataclass(frozen=True)
class Route:
    """How batches reach the network: decoded pixels through the whole model, or cached frozen-part features
    through its late stages (train/frozen.py). `network` picks, from a full model, the part these batches feed."""

    train_batch: TrainBatch
    eval_batch: EvalBatch
    network: Callable[[torch.nn.Module], torch.nn.Module]


def pixel_route(data: RunData, augment: bool, device: torch.device, soft: SoftLabels | None = None) -> Route:
    """Decoded pixels, augmented on the device; with soft labels, each image as one of its stored views."""

    def train_batch(
        sel: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        raw = data.pixels[sel].to(device, non_blocking=True).float()
        if soft is not None:
            views = torch.randint(len(soft.params), (len(sel),), generator=generator, device=generator.device)
            params, target = soft.batch(sel.cpu(), views.cpu())
            return to_input(apply_params(raw, params), data.scale, data.bias), None, target.to(device)
        if augment:
            raw = random_affine_intensity(raw, generator=generator)
        return to_input(raw, data.scale, data.bias), raw, None

    def eval_batch(sel: torch.Tensor) -> torch.Tensor:
        return to_input(data.pixels[sel].to(device, non_blocking=True), data.scale, data.bias)

    return Route(train_batch, eval_batch, lambda model: model)


def feature_route(
    cfg: TrainConfig, model: torch.nn.Module, data: RunData, device: torch.device, bf16: bool
) -> Route:
    """Cache the frozen part's output once (RUN_DIR/cache, reused on resume), then batch from the cache."""
    through, views = cfg.freeze_through, cfg.feature_views
    cache_file = cfg.out / "cache" / f"features-{cfg.arch}-{through}-{cfg.image_size}px-{views}views.npy"
    features = load_or_compute_features(
        cache_file,
        lambda: compute_features(
            model, through, data.pixels, data.scale, data.bias, views, cfg.seed, device, bf16
        ),
    )

    def train_batch(
        sel: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        return feature_batch(features, sel, generator, cfg.recipe.augment, device), None, None

    def eval_batch(sel: torch.Tensor) -> torch.Tensor:
        return features[0, sel.cpu()].to(device).float()

    return Route(train_batch, eval_batch, lambda full: trainable_part(full, through))


@torch.no_grad()
def run_batched(
    forward: Callable[[torch.Tensor], tuple[torch.Tensor, ...]],
    batch_of: EvalBatch,
    idx: np.ndarray,
    device: torch.device,
    batch_size: int,
    bf16: bool,
) -> list[np.ndarray]:
    """forward's outputs for the rows at idx, batch by batch (under bf16 autocast and channels_last when bf16),
    concatenated as float32 arrays."""
    out: list[list[torch.Tensor]] = []
    for start in range(0, len(idx), batch_size):
        x = batch_of(torch.as_tensor(idx[start : start + batch_size]))
        x = x.contiguous(memory_format=torch.channels_last) if bf16 else x
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out.append([t.float().cpu() for t in forward(x)])
    return [torch.cat(parts).numpy() for parts in zip(*out, strict=True)] if out else []


def predict_logits(
    model: torch.nn.Module,
    batch_of: EvalBatch,
    idx: np.ndarray,
    device: torch.device,
    batch_size: int,
    bf16: bool,
) -> np.ndarray:
    """Logits (N, classes) for the rows at idx."""
    model.eval()
    result = run_batched(lambda x: (model(x),), batch_of, idx, device, batch_size, bf16)
    return result[0] if result else np.zeros((0, 0), np.float32)


def sampling_weights(data: RunData, recipe: Recipe) -> np.ndarray | None:
    """Per row of data.fit_idx: 1/sqrt(size of its class, or of its --extra-images folder),
    or None for a plain permutation (balance "none")."""
    if recipe.balance != "sqrt":
        return None
    groups = np.concatenate([data.labels[data.train_idx], len(data.classes) + data.extra_groups])
    counts = np.bincount(groups, minlength=len(data.classes)).astype(np.float64)
    return 1.0 / np.sqrt(counts[groups])


def epoch_draws(data: RunData, recipe: Recipe) -> int:
    """Images per epoch: the training images, plus as many extra images as their share of the sampling weight
    brings, so each labelled image is seen as often with --extra-images as without."""
    weights = sampling_weights(data, recipe)
    if weights is None or not len(data.extra_idx):
        return len(data.train_idx) + len(data.extra_idx)
    return round(len(data.train_idx) * weights.sum() / weights[: len(data.train_idx)].sum())


def epoch_order(state: RunState, data: RunData, recipe: Recipe) -> torch.Tensor:
    """This epoch's training indices: weighted by 1/sqrt(class size) with replacement, or a permutation."""
    rows = torch.as_tensor(data.fit_idx)
    weights = sampling_weights(data, recipe)
    if weights is not None:
        picked = torch.multinomial(
            torch.as_tensor(weights), epoch_draws(data, recipe), True, generator=state.sampler
        )
    else:
        picked = torch.randperm(len(rows), generator=state.sampler)
    return rows[picked].to(data.pixels.device)


def labelled_cross_entropy(logits: torch.Tensor, y: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Mean cross-entropy over the rows that have a class: an --extra-images row (IGNORE_LABEL) learns from its
    soft label alone; a batch of extra images only gives 0."""
    total = F.cross_entropy(logits, y, label_smoothing=smoothing, ignore_index=IGNORE_LABEL, reduction="sum")
    return total / (y != IGNORE_LABEL).sum().clamp(min=1)


def _duration(seconds: float) -> str:
    """'1 h 05 min', '12 min', '40 s': the training time left at the last epoch's pace."""
    if seconds >= 3600:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
    return f"{round(seconds / 60)} min" if seconds >= 90 else f"{round(seconds)} s"


def train_one_epoch(
    state: RunState,
    data: RunData,
    route: Route,
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
    steps = max(1, len(order) // batch_size)
    part = slice(ranks.rank * (batch_size // ranks.world), (ranks.rank + 1) * (batch_size // ranks.world))
    seen, loss_total, t0 = 0, torch.zeros((), device=device), time.perf_counter()
    shown = ranks.main and log.isEnabledFor(logging.INFO)  # --quiet: no bar
    bar = tqdm(range(steps), desc=desc, unit="batch", leave=False, disable=None if shown else True)
    for step in bar:
        sel = order[step * batch_size : (step + 1) * batch_size]
        x, raw, soft = route.train_batch(sel, state.augment)
        y = data.targets[sel].to(device, non_blocking=True)
        lam, y_partner = 1.0, None
        if recipe.mixup_alpha > 0:
            lam = float(state.mix_rng.beta(recipe.mixup_alpha, recipe.mixup_alpha))
            partner = torch.randperm(len(sel), device=device, generator=state.augment)
            x, y_partner = lam * x + (1.0 - lam) * x[partner], y[partner]
            # The distillation target of the mixed view: an on-the-fly teacher sees the mixed pixels themselves;
            # stored soft labels mix as probabilities.
            raw = None if raw is None else lam * raw + (1.0 - lam) * raw[partner]
            soft = None if soft is None else mix_log_probs(soft, soft[partner], lam)
        if ranks.active:  # this rank's share of the global batch
            x, y = x[part], y[part]
            raw = raw[part] if raw is not None else None
            soft = soft[part] if soft is not None else None
            y_partner = y_partner[part] if y_partner is not None else None
        if bf16:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x).float()
        loss = lam * labelled_cross_entropy(logits, y, recipe.label_smoothing)
        if y_partner is not None:
            loss = loss + (1.0 - lam) * labelled_cross_entropy(logits, y_partner, recipe.label_smoothing)
        if teacher is not None and raw is not None:
            soft = F.log_softmax(teacher.logits(raw) / recipe.kd_temperature, 1)
        if soft is not None:
            kd = distillation_loss(logits, soft, recipe.kd_temperature)
            loss = (1.0 - recipe.kd_weight) * loss + recipe.kd_weight * kd
        if recipe.aux_weight > 0:
            loss = loss + recipe.aux_weight * aux_loss(state.model, y, recipe.label_smoothing)
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
    batch_of: EvalBatch,
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
        predict_logits(model, batch_of, idx[ranks.rank :: ranks.world], device, batch_size, bf16)
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
    if cfg.folds:
        return cross_validate(cfg)
    device = resolve_device(cfg.device)
    ranks = init_ranks(device)
    made = not cfg.out.exists()
    try:
        # Rank 0 holds the run folder (mri44.atomic.held): a second run into it is refused, not interleaved.
        with held(cfg.out) if ranks.main else contextlib.nullcontext():
            return _train(cfg, rank_device(device, ranks), ranks)
    except BaseException:
        if made and ranks.main and cfg.out.is_dir() and not any(cfg.out.iterdir()):
            cfg.out.rmdir()  # a run refused before it wrote anything leaves no folder behind
        raise
    finally:
        finish(ranks)


def preprocess_spec(cfg: TrainConfig) -> PreprocessSpec:
    """The input a run's network sees: the recipe's resize and channels at --image-size, the arch's normalisation."""
    mean, std = input_normalisation(cfg.arch)
    return PreprocessSpec(
        size=cfg.image_size, resize=cfg.recipe.resize, channels=cfg.recipe.channels, mean=mean, std=std
    )


def cross_validate(cfg: TrainConfig) -> dict[str, Any]:
    """`--folds K`: scan once (the folds' shared cache), then train/cv.run_cv runs each fold as a run of its own."""
    from .cv import fold_runs, run_cv

    fold_runs(cfg.folds, cfg.leave_out)  # a wrong --leave-out fails before the scan
    if cfg.folds < 2 or cfg.all_data or cfg.split_file is not None:
        raise SettingError(
            "--folds K needs K >= 2 and makes its own splits: drop --all-data and --split-file"
        )
    class_folders(cfg.data)
    if RunFolder(cfg.out).config.is_file():
        if not cfg.resume:
            raise OutputExistsError(
                f"{cfg.out} already holds a run; pass --resume to continue it or choose another --out"
            )
        check_resume_settings(cfg.out, cfg)
    with held(cfg.out):  # each fold's run holds its own folder as well
        write_text_atomic(RunFolder(cfg.out).config, cfg.to_json())
        scanned = load_or_scan(cfg.data, preprocess_spec(cfg), cfg.out / "cache", cfg.workers)
        return run_cv(cfg, scanned.manifest, run_training)


def _train(cfg: TrainConfig, device: torch.device, ranks: Ranks) -> dict[str, Any]:
    last_path, best_path = RunFolder(cfg.out).last, RunFolder(cfg.out).best
    if not cfg.resume and last_path.exists():
        raise OutputExistsError(
            f"{cfg.out} already holds a run; pass --resume to continue it or choose another --out"
        )
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    hp = cfg.resolved()
    if hp["batch_size"] % ranks.world:
        raise SettingError(
            f"--batch-size {hp['batch_size']} must be a multiple of the {ranks.world} processes"
        )
    spec = preprocess_spec(cfg)
    resuming = cfg.resume and last_path.exists()
    if resuming:
        check_resume_settings(cfg.out, cfg)
    class_folders(cfg.data)  # a wrong --data fails here, before the run folder is made
    refuse_settings(cfg, ranks)
    bf16 = use_bf16(device, cfg.precision)  # and so does a --precision this machine cannot run
    if (
        ranks.main
    ):  # rank 0 writes the config, scans (filling the cache) and writes the split; then the others read
        with _undone_on_failure(cfg.out, resuming):
            cfg.out.mkdir(parents=True, exist_ok=True)
            write_text_atomic(RunFolder(cfg.out).config, cfg.to_json())
            data = prepare_data(cfg, spec, device, resuming)
    barrier(ranks)
    if not ranks.main:
        data = prepare_data(cfg, spec, device, resuming, write=False)
    model = build_model(len(data.classes), cfg.arch)
    init_note = init_weights(model, cfg.weights, cfg.allow_random_init, cfg.arch)
    if (
        cfg.recipe.aux_weight > 0
    ):  # training-only heads (train/aux_heads.py), before the optimiser sees the model
        attach_aux_heads(model, data.classes)
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
    if cfg.freeze_through != "none":
        freeze(model, cfg.freeze_through)
    model.to(device)
    if bf16:
        model = model.to(memory_format=torch.channels_last)
    route = (
        pixel_route(data, cfg.recipe.augment, device, _soft_labels_for(cfg, data, spec, device, bf16))
        if cfg.freeze_through == "none"
        else feature_route(cfg, model, data, device, bf16)
    )
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    state = new_state(
        cfg, model, max(1, epoch_draws(data, cfg.recipe) // hp["batch_size"]), hp["epochs"], hp["lr"]
    )
    state.network = route.network(wrap(model, device, ranks))
    if resuming:
        state.restore(last_path, data.classes)
        log.info("resumed from %s after epoch %d", last_path, state.epoch + 1)
    card = Checkpoint(
        weights={},
        classes=data.classes,
        preprocess=spec,
        arch=cfg.arch,
        recipe=cfg.recipe.to_dict(),
        init=init_note,
        teacher=teacher.description if teacher else "",
        config=json.loads(cfg.to_json()),
    )
    fit(state, data, route, cfg, device, bf16, teacher, card, ranks)
    barrier(ranks)
    return evaluate_best(best_path, data, cfg, device, bf16) if ranks.main else {}


@contextlib.contextmanager
def _undone_on_failure(out: Path, resuming: bool) -> Iterator[None]:
    """A new run whose data cannot be prepared (one image per class leaves val empty; a split file that does not
    fit) leaves nothing behind: the entries it made in its run folder, and the folder if it made it, are removed.
    A resumed run's folder is never touched; an empty folder the run made goes with its lock (run_training)."""
    before = {p.name for p in out.iterdir()} if out.is_dir() else set()
    try:
        yield
    except BaseException:
        if not resuming and out.is_dir():
            for entry in out.iterdir():
                if entry.name not in before:
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        raise


def refuse_settings(cfg: TrainConfig, ranks: Ranks) -> None:
    """Settings that cannot go together, refused before the run folder is made or any image is decoded."""
    check_freeze_settings(cfg.freeze_through, cfg.feature_views, cfg.arch, cfg.weights)
    if cfg.holdout is not None and not (cfg.all_data or cfg.folds):
        raise SettingError(
            "--holdout is for --all-data and --folds runs (other runs have their own test part)"
        )
    if cfg.temperature_from is not None:  # a typo found now, not after the last epoch
        choose_temperature(cfg, None, np.zeros(0, np.int64))
    if cfg.freeze_through != "none" and (ranks.active or cfg.teacher or cfg.soft_labels):
        # The cached features carry no pixels for a teacher to see and no stored views to replay.
        raise SettingError(
            "--freeze-through trains in one process without distillation: drop torchrun, --teacher or "
            "--soft-labels"
        )
    if cfg.recipe.aux_weight > 0 and (ranks.active or cfg.freeze_through != "none" or cfg.recipe.mixup_alpha):
        raise SettingError(
            "a recipe with tumour-type and contrast heads (aux_weight > 0) trains the whole network in one "
            "process without mixup: drop torchrun, --freeze-through or the mixup recipe"
        )
    if cfg.extra_images is not None and (not cfg.soft_labels or cfg.recipe.aux_weight > 0):
        # Their only target is the teacher's soft label; they have no tumour type or contrast of the 44 classes.
        raise SettingError(
            "--extra-images needs --soft-labels (their only target) and a recipe without tumour-type and "
            "contrast heads (aux_weight 0), e.g. --recipe distill"
        )
    if cfg.leave_out != 1 and not cfg.folds:
        raise SettingError("--leave-out is for --folds K runs")
    if cfg.cross_fit and (not cfg.soft_labels or cfg.extra_images is not None):
        # Out-of-fold labels exist for the teacher CV's own images only; --extra-images have no fold.
        raise SettingError("--cross-fit needs --soft-labels CV_FOLDER and no --extra-images")


def fit(
    state: RunState,
    data: RunData,
    route: Route,
    cfg: TrainConfig,
    device: torch.device,
    bf16: bool,
    teacher: Teacher | None,
    card: Checkpoint,
    ranks: Ranks,
) -> None:
    """The epochs from where state stands: train, validate, keep best.pt and last.pt (rank 0 writes)."""
    hp = cfg.resolved()
    for epoch in range(state.epoch + 1, hp["epochs"]):
        desc = f"epoch {epoch + 1}/{hp['epochs']}"
        row = train_one_epoch(
            state, data, route, cfg.recipe, hp["batch_size"], device, bf16, teacher, desc, ranks
        )
        summary = evaluate(
            route.network(state.eval_model),
            data,
            route.eval_batch,
            data.val_idx,
            device,
            cfg.eval_batch_size,
            bf16,
            ranks,
        )
        state.epoch = epoch
        state.history.append(
            {"epoch": epoch + 1, **row, "lr": state.scheduler.get_last_lr()[0]}
            | {f"val_{k}": v for k, v in summary.items()}
        )
        improved = (
            not summary or summary["macro_f1"] > state.best_f1
        )  # all-data: the latest epoch is the model
        log.info(
            "%s: loss %.3f, %.0f img/s, %.1fs; %s%s; about %s left",
            desc,
            row["train_loss"],
            row["train_images_per_s"],
            row["epoch_s"],
            f"val acc {summary['accuracy']:.4f}, macro-F1 {summary['macro_f1']:.4f}" if summary else "no val",
            " (best)" if improved and summary else "",
            _duration(row["epoch_s"] * (hp["epochs"] - epoch - 1)),
        )
        if improved:
            state.best_f1 = summary.get("macro_f1", -1.0)
        if not ranks.main:
            continue
        if improved:
            state.save_best(RunFolder(cfg.out).best, card, summary)
        with atomic_path(RunFolder(cfg.out).history) as tmp:
            pl.DataFrame(state.history).write_csv(tmp)
        state.save_last(RunFolder(cfg.out).last, card)


def _teacher_for(
    cfg: TrainConfig, classes: list[str], spec: PreprocessSpec, device: torch.device
) -> Teacher | None:
    """The frozen on-the-fly teacher when the run distils with --teacher, after checking that the distillation
    source (--teacher or --soft-labels, one of them) and the recipe go together."""
    sources = (cfg.teacher is not None) + bool(cfg.soft_labels)
    if sources > 1 or (sources == 1) != (cfg.recipe.kd_weight > 0):
        raise SettingError(
            "distillation needs one of --teacher RUN_DIR or --soft-labels RUN_DIR and a recipe with "
            "kd_weight > 0 (e.g. --recipe distill)"
        )
    if cfg.teacher is None:
        return None
    teacher = load_teacher(cfg.teacher, classes, spec, device)
    log.info("teacher: %s", teacher.description)
    return teacher


def _soft_labels_for(
    cfg: TrainConfig, data: RunData, spec: PreprocessSpec, device: torch.device, bf16: bool
) -> SoftLabels | None:
    """With --soft-labels TEACHER (once, or more for an ensemble): the teacher's soft labels on this run's training
    views, computed once into RUN_DIR/soft_labels.pt (train/soft_labels.py); the teachers are released before
    training starts. With --cross-fit, each training image's teacher is the CV teacher's run that never saw it
    (train/cv.cross_fit_teachers)."""
    if not cfg.soft_labels:
        return None
    fit_idx = data.fit_idx
    if cfg.cross_fit:
        if len(data.val_idx):
            raise SettingError(
                "--cross-fit labels training images only: use it in a --folds or --all-data run (no validation part)"
            )
        paths = data.split["path"].to_list()
        sources = cross_fit_teachers(
            cfg.soft_labels,
            [paths[i] for i in fit_idx],
            cfg.left_out,
            [paths[i] for i in data.test_idx],
        )
        runs = [(teachers, fit_idx[rows]) for teachers, rows in sources]
    else:
        runs = [(cfg.soft_labels, fit_idx)]
    loaded: dict[Path, Teacher] = {}
    parts = []
    for teacher_paths, rows in runs:
        for path in teacher_paths:
            if path not in loaded:
                loaded[path] = load_teacher(path, data.classes, spec, device)
        parts.append(([loaded[path] for path in teacher_paths], rows))
    description = describe_parts(parts)
    log.info("soft labels from teacher %s", description)
    return load_or_compute(
        cfg.out / SOFT_LABELS_FILE,
        lambda: compute_soft_labels(
            parts,
            data.pixels,
            fit_idx,
            data.val_idx,
            cfg.soft_label_views,
            SOFT_LABEL_TOP_K,
            cfg.recipe.kd_temperature,
            cfg.seed,
            bf16,
        ),
        description,
        cfg.recipe.kd_temperature,
    )


# FKD keeps the top 10 of 1,000 ImageNet classes; for 44 classes the top 10 hold nearly all the mass.
SOFT_LABEL_TOP_K = 10
# The ood_score is the distance to the k-th nearest reference image; k = 1 measured best (docs/ood.md).
OOD_K = 1


def choose_temperature(
    cfg: TrainConfig, val_logits: np.ndarray | None, val_labels: np.ndarray
) -> tuple[float, str]:
    """(temperature, where it came from): given, another run's, fitted on val, or 1 when there is no val."""
    if cfg.temperature is not None:
        return cfg.temperature, "given with --temperature"
    if cfg.temperature_from is not None and is_cv_folder(cfg.temperature_from):
        return cv_calibration(cfg.temperature_from)[
            0
        ], f"fitted on the out-of-fold logits of {cfg.temperature_from}"
    if cfg.temperature_from is not None:
        temperature = Checkpoint.load(cfg.temperature_from).temperature
        if temperature is None:
            raise SettingError(
                f"--temperature-from {cfg.temperature_from}: its checkpoint has no temperature"
            )
        return temperature, f"fitted on the val split of {checkpoint_path(cfg.temperature_from)}"
    if val_logits is not None:
        return fit_temperature(val_logits, val_labels), "fitted on this run's val split"
    return 1.0, "none (no val split and no --temperature)"


def _loo_pass_rate(cfg: TrainConfig) -> tuple[float, str]:
    """For a run without validation images: the selection run's (--temperature-from) leave-one-out pass rate,
    so the all-data fit's out-of-distribution threshold is calibrated like its selection run's (mri44.ood); from
    a cross-validation folder, the rate that let mri44.ood.HELD_OUT_PASS of its out-of-fold images through.
    Returns the rate and where it came from."""
    if cfg.temperature_from is None:
        return PASS_RATE, "default rate"
    if is_cv_folder(cfg.temperature_from):  # measured on unseen images, fold by fold
        rate = cv_calibration(cfg.temperature_from)[1]
        if rate is None:
            return PASS_RATE, "default rate"
        return (
            rate,
            held_out_rate_source(cfg.temperature_from.name),
        )
    spec = Checkpoint.load(cfg.temperature_from).ood
    if spec is None:
        return PASS_RATE, "default rate"
    return leave_one_out_pass_rate(spec), f"the rate of selection run {cfg.temperature_from.name}"


def predict_with_features(
    model: ResNet, batch_of: EvalBatch, idx: np.ndarray, device: torch.device, batch_size: int, bf16: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Logits (N, classes) and pooled last-stage features (N, C) of the rows at idx, from one forward pass."""
    model.eval()

    def forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, features = logits_and_features(model, x)
        return logits, features.mean((2, 3))

    logits, pooled = run_batched(forward, batch_of, idx, device, batch_size, bf16)
    return logits, pooled


def write_split_results(
    name: str,
    idx: np.ndarray,
    outputs: tuple[np.ndarray, np.ndarray],
    temperature: float,
    ood: OodSpec,
    data: RunData,
    out: Path,
    classes: list[str],
) -> dict[str, Any]:
    """{name}_predictions.parquet (the scorer's rows: paths relative to --data, labels from their class folders,
    so mri-report reads them) and {name}_metrics/; returns the summary row."""
    logits, pooled = outputs
    names = np.asarray(classes)
    raw, probs = softmax(logits), softmax(logits, temperature)
    correct = probs.argmax(1) == data.labels[idx]
    evidence = OodRows.empty(len(idx), ood)
    for start in range(0, len(idx), 256):  # pooled features: a 1 x 1 feature map; the detail check's pixels
        rows = np.arange(start, min(start + 256, len(idx)))
        ood.fill(evidence, rows, pooled[rows, :, None, None], data.pixels[idx[rows]])
    preds = prediction_frame(
        data.split["path"][idx].to_list(),
        probs,
        np.ones(len(idx), bool),
        [None] * len(idx),
        classes,
        3,
        evidence,
    )
    with atomic_path(RunFolder(out).predictions(name)) as tmp:
        preds.write_parquet(tmp)
    # The raw logits too: cross-validation pools them across folds (train/cv.py) before fitting a temperature.
    with atomic_path(RunFolder(out).logits(name)) as tmp:
        pl.DataFrame(
            {"path": preds["path"], "label": names[data.labels[idx]], "logits": logits.astype(np.float32)}
        ).write_parquet(tmp)
    tables = metric_tables(names[data.labels[idx]].tolist(), preds["pred_class"].to_list())
    tables["summary"] = tables["summary"].with_columns(
        ece=pl.lit(expected_calibration_error(probs.max(1), correct)),
        ece_before_temperature=pl.lit(expected_calibration_error(raw.max(1), correct)),
        ood_flagged=pl.lit(int(preds["ood"].sum())),
    )
    write_tables(tables, RunFolder(out).metric_tables(name), classes)
    return tables["summary"].row(0, named=True)


def trained_rows(data: RunData) -> pl.DataFrame:
    """The scan rows (sha256, phash, thumb) of every image the model trained on, --extra-images included."""
    columns = ["sha256", "phash", "thumb"]
    rows = data.split[data.train_idx].select(columns)
    return rows if data.extra_rows is None else pl.concat([rows, data.extra_rows.select(columns)])


def training_manifest(rows: pl.DataFrame) -> TrainingManifest:
    """The model's training images (their bytes' SHA-256, perceptual hash and thumbnail, from the scan), carried
    in the checkpoint and its exports so predictions can say seen_in_training / near_training."""
    return TrainingManifest(
        sha256=frozenset(rows["sha256"].to_list()),
        hashes=rows["phash"].cast(pl.UInt64).to_numpy(),
        thumbs=np.frombuffer(b"".join(rows["thumb"].to_list()), np.uint8).reshape(rows.height, THUMB, THUMB),
    )


def turned_features(
    model: ResNet, batch_of: EvalBatch, idx: np.ndarray, device: torch.device, cfg: TrainConfig, bf16: bool
) -> list[np.ndarray]:
    """Pooled last-stage features of the rows at idx turned 90, 180 and 270 degrees: what the orientation probe
    (mri44.orientation) learns beside the upright features."""

    def forward(turn: int) -> Callable[[torch.Tensor], tuple[torch.Tensor]]:
        return lambda x: (logits_and_features(model, torch.rot90(x, turn, dims=(2, 3)))[1].mean((2, 3)),)

    return [
        run_batched(forward(k), batch_of, idx, device, cfg.eval_batch_size, bf16)[0]
        for k in QUARTER_TURNS[1:]
    ]


def image_limits(data: RunData) -> tuple[ImageLimit, ImageLimit]:
    """The detail floor and border ceiling (mri44.detail) of the training images, for the model's OodSpec."""
    idx = data.train_idx
    return fit_image_limits(input_statistics(data.pixels[idx[s : s + 256]]) for s in range(0, len(idx), 256))


def evaluate_best(
    best_path: Path, data: RunData, cfg: TrainConfig, device: torch.device, bf16: bool
) -> dict[str, Any]:
    """Best checkpoint -> temperature and out-of-distribution reference (stored in it) -> predictions and tables
    for val and test. The whole saved network runs on pixels here, whatever route trained it."""
    best = Checkpoint.load(best_path)
    model = best.model().to(device)
    if bf16:
        model = model.to(memory_format=torch.channels_last)
    reference = data.train_idx[reference_rows(len(data.train_idx))]
    parts = {"reference": reference, "val": data.val_idx, "test": data.test_idx}
    batch_of = pixel_route(data, False, device).eval_batch
    outputs = {
        name: predict_with_features(model, batch_of, idx, device, cfg.eval_batch_size, bf16)
        for name, idx in parts.items()
        if len(idx)
    }
    val = outputs.get("val")
    temperature, source = choose_temperature(cfg, val[0] if val else None, data.labels[data.val_idx])
    rate, rate_source = _loo_pass_rate(cfg)
    ood = fit_ood(
        outputs["reference"][1], val[1] if val else None, OOD_K, loo_pass_rate=rate, rate_source=rate_source
    )
    groups = data.split["group"].to_numpy()[reference]
    # A pair run (--leave-out 2) only teaches a cross-fitting student and is never exported: no orientation
    # probe, whose three turned passes over the reference images were 4-5 of a ResNet-50 pair run's 14 minutes.
    teacher_only = len(cfg.left_out) > 1
    if len(np.unique(groups)) >= 2 and not teacher_only:  # the probe's threshold is set on held-out groups
        pooled_by_turn = [
            outputs["reference"][1],
            *turned_features(model, batch_of, reference, device, cfg, bf16),
        ]
        probe = fit_orientation([normalised(x) for x in pooled_by_turn], groups)
        turned_threshold = (
            cv_calibration(cfg.temperature_from)[2]
            if cfg.temperature_from is not None and is_cv_folder(cfg.temperature_from)
            else None
        )
        if turned_threshold is not None:  # measured on unseen slices (train/cv.held_out_ood)
            probe = replace(
                probe,
                threshold=turned_threshold,
                source=f"{probe.source}; threshold from the out-of-fold turned scores of {cfg.temperature_from}",
            )
        ood = replace(ood, orientation=probe)
    floor, ceiling = image_limits(data)
    ood = replace(ood, detail=floor, border=ceiling)
    training = training_manifest(trained_rows(data))
    best = best.with_fit(temperature, source, ood, training)
    best.save(best_path)
    result: dict[str, Any] = {"best_epoch": best.epoch + 1, "temperature": temperature}
    log.info(
        "temperature %.3f (%s); ood threshold %.4f (%s); detail floor %.4f (%s); border ceiling %.4f",
        temperature,
        source,
        ood.threshold,
        ood.source,
        ood.detail.threshold if ood.detail else float("nan"),
        ood.detail.source if ood.detail else "",
        ood.border.threshold if ood.border else float("nan"),
    )
    for name in ("val", "test"):
        if name in outputs:
            result[name] = write_split_results(
                name, parts[name], outputs[name], temperature, ood, data, cfg.out, best.classes
            )
    test = result.get("test")
    log.info(
        "best epoch %d; test: %s",
        result["best_epoch"],
        ", ".join(f"{k} {v:.4f}" for k, v in test.items() if isinstance(v, float))
        if test
        else "no test split",
    )
    write_text_atomic(RunFolder(cfg.out).result, json.dumps(result, indent=2))
    return result
