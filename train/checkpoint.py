"""A run's two checkpoints: best.pt (the model that export and scoring read) and last.pt (all a resume needs).

Both are mri44.checkpoint.Checkpoint values: the run's card (architecture, classes, preprocessing spec, recipe,
init, teacher, config) with the weights of one epoch, and for last.pt the training state beside them; written
and read back only through that type, so a resumed run is validated like any other load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel

from mri44.checkpoint import Checkpoint
from mri44.errors import SettingError

from .aux_heads import without_aux

# What last.pt must hold beyond the card to resume a run exactly ("ema" too when the recipe averages weights).
NEEDED_TO_RESUME = ("optimizer", "scheduler", "generator", "aug_generator", "mix_rng", "history")


@dataclass
class RunState:
    """Everything that changes while a run trains; saved together in last.pt and restored together on resume."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    sampler: torch.Generator  # draws each epoch's training order
    augment: torch.Generator  # draws augmentations and mixup partners, on the training device
    mix_rng: np.random.Generator  # draws mixup's lambda
    ema: AveragedModel | None
    epoch: int = -1  # the last finished epoch, counted from 0
    best_f1: float = -1.0  # best validation macro-F1 so far
    history: list[dict[str, Any]] = field(default_factory=list)
    network: torch.nn.Module | None = (
        None  # what training calls: DistributedDataParallel(model) under torchrun
    )

    @property
    def trainer(self) -> torch.nn.Module:
        return self.network if self.network is not None else self.model

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights that are validated and kept: the moving average when the recipe has one."""
        return self.ema.module if self.ema is not None else self.model

    def save_last(self, path: Path, card: Checkpoint) -> None:
        resume = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.sampler.get_state(),
            "aug_generator": self.augment.get_state().cpu(),
            "mix_rng": json.dumps(self.mix_rng.bit_generator.state),
            **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
            "best_val_macro_f1": self.best_f1,
            "history": json.dumps(self.history),
        }
        replace(card, weights=self.model.state_dict(), epoch=self.epoch, resume=resume).save(path)

    def save_best(self, path: Path, card: Checkpoint, summary: dict[str, Any]) -> None:
        # the plain network: training-only heads (train/aux_heads.py) stay in last.pt
        weights = {k: v.detach().cpu() for k, v in without_aux(self.eval_model.state_dict()).items()}
        replace(card, weights=weights, epoch=self.epoch, val_summary=summary).save(path)

    def restore(self, path: Path, classes: list[str]) -> None:
        """Continue from last.pt: every state as it was after its epoch, or a one-line error."""
        last = Checkpoint.load(path)
        state = last.resume
        missing = [k for k in NEEDED_TO_RESUME if k not in state] + (
            ["ema"] if self.ema is not None and "ema" not in state else []
        )
        if missing:
            raise SettingError(f"{path} cannot be resumed: it lacks {', '.join(missing)}")
        if last.classes != classes:
            raise SettingError(f"{path} was trained on other classes; cannot resume it on these data")
        self.model.load_state_dict(last.weights)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.set_state(state["generator"])
        self.augment.set_state(state["aug_generator"].to(self.augment.get_state().device))
        self.mix_rng.bit_generator.state = json.loads(state["mix_rng"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.epoch, self.best_f1 = last.epoch, float(state.get("best_val_macro_f1", -1.0))
        self.history = json.loads(state["history"])
