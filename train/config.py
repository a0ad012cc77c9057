"""A training run's settings: one frozen-in-spirit record, saved as the run's config.json, checked on resume."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from mri44.model import ARCH
from train.recipes import Recipe
from train.split import SplitConfig

# Settings that decide the split, the inputs or the model: a resumed run must keep every one of them.
RESUME_FIXED = ("data", "seed", "split", "split_file", "all_data", "image_size", "arch", "recipe", "teacher")


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
    precision: str = "auto"  # auto: bf16 autocast where the hardware computes bf16 natively, else fp32
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
        values: dict[str, Any] = {
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


PRECISIONS = ("auto", "fp32", "bf16")


def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX: oneDNN then runs bf16 convolutions natively. Without them (AVX2-only CPUs) bf16 is
    emulated and slower than fp32."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def use_bf16(device: torch.device, precision: str) -> bool:
    """Whether to train and evaluate under bf16 autocast (with channels_last inputs).

    auto: on CUDA, and on CPUs with native bf16, where it gave 2.3x the fp32 training throughput of a ResNet-18
    at 160 px and 2.7x at 256 px on our 2-core AVX-512 BF16 CPU (benchmarks/train_precision.py)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown --precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return device.type == "cuda" or cpu_has_native_bf16()
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        raise ValueError(
            "--precision bf16: this CPU has no native bf16 (AVX-512 BF16 or AMX), where it is slower than fp32; "
            "use --precision fp32 or auto"
        )
    return precision == "bf16"


def check_resume_settings(out: Path, cfg: TrainConfig) -> None:
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
