"""The checkpoint contract: what a training run's best.pt and last.pt hold, written and read only here.

On disk a checkpoint is a dict of tensors, numbers and strings saved with torch.save and always loaded with
weights_only=True, so loading one never runs pickled code. In memory it is a `Checkpoint`: typed fields instead
of string keys, so the trainer, the exporter, the scorer and the distiller cannot disagree on a key or its type.
`CHECKPOINT_FORMAT` is written into every file; files from before it existed (no format key) are format 1, and a
newer format than this code knows is refused with a message rather than half read.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torchvision.models import ResNet

from mri44.atomic import atomic_path
from mri44.errors import CheckpointError
from mri44.files import checkpoint_path
from mri44.fingerprint import TrainingManifest
from mri44.model import ARCH, build_model
from mri44.ood import OodSpec
from mri44.preprocess import PreprocessSpec

CHECKPOINT_FORMAT = 1
FORMAT_KEY = "mri44_checkpoint_format"
# What last.pt holds beyond the model card to resume a run exactly (train/checkpoint.RunState).
RESUME_KEYS = (
    "optimizer", "scheduler", "generator", "aug_generator", "mix_rng", "history", "ema", "best_val_macro_f1",
)  # fmt: skip


@dataclass(frozen=True)
class Checkpoint:
    """A trained network and its card: the classes and preprocessing it was trained with (the one source of
    truth that export and scoring copy), how it was trained, and what evaluation fitted after training."""

    weights: dict[str, torch.Tensor]
    classes: list[str]
    preprocess: PreprocessSpec
    arch: str = ARCH
    recipe: dict[str, Any] = field(default_factory=dict)  # train/recipes.Recipe.to_dict()
    init: str = ""  # where the weights started from
    teacher: str = ""  # the distillation teacher, by path and sha256; "" when none
    config: dict[str, Any] = field(default_factory=dict)  # the run's TrainConfig as JSON values
    epoch: int = -1  # the epoch these weights are from, counted from 0
    val_summary: dict[str, Any] = field(default_factory=dict)  # best.pt: validation figures of that epoch
    temperature: float | None = None  # fitted after training (best.pt); None: not yet
    temperature_source: str = ""
    ood: OodSpec | None = None  # out-of-distribution reference and threshold, fitted after training
    training: TrainingManifest | None = None  # the images it trained on (mri44.fingerprint)
    resume: dict[str, Any] = field(default_factory=dict)  # last.pt only: RESUME_KEYS
    version: int = CHECKPOINT_FORMAT

    @property
    def data(self) -> str:
        """The training data folder the run read ('' when not recorded)."""
        return str(self.config.get("data", ""))

    def model(self) -> ResNet:
        """The network with these weights, in eval mode."""
        model = build_model(len(self.classes), self.arch)
        try:
            model.load_state_dict(self.weights)
        except RuntimeError as exc:
            raise CheckpointError(
                f"checkpoint weights do not match a {self.arch} with {len(self.classes)} classes: {exc}"
            ) from exc
        return model.eval()

    def to_dict(self) -> dict[str, Any]:
        """The on-disk layout (plain keys, JSON strings for nested settings)."""
        optional = {
            "temperature": self.temperature,
            "ood": self.ood.to_json() if self.ood is not None else None,
            "training_manifest": self.training.to_json() if self.training is not None else None,
        }
        return {
            FORMAT_KEY: self.version,
            "model": self.weights,
            "classes": list(self.classes),
            "preprocess": self.preprocess.to_dict(),
            "arch": self.arch,
            "recipe": self.recipe,
            "init": self.init,
            "teacher": self.teacher,
            "config": json.dumps(self.config, sort_keys=True),
            "epoch": self.epoch,
            "val_summary": json.dumps(self.val_summary),
            "temperature_source": self.temperature_source,
            **{k: v for k, v in optional.items() if v is not None},
            **self.resume,
        }

    @classmethod
    def from_dict(cls, raw: Any, source: str = "checkpoint") -> Checkpoint:
        if not isinstance(raw, dict) or not {"model", "classes", "preprocess"} <= raw.keys():
            raise CheckpointError(
                f"{source} is not an mri44 checkpoint (expected keys 'model', 'classes', 'preprocess'); "
                "a bare torchvision state dict can be fine-tuned with `python -m train --weights PATH`"
            )
        version = int(raw.get(FORMAT_KEY, 1))
        if version > CHECKPOINT_FORMAT:
            raise CheckpointError(
                f"{source} is checkpoint format {version}; this mri44 reads up to {CHECKPOINT_FORMAT}: upgrade mri44"
            )
        try:
            ood, training = raw.get("ood"), raw.get("training_manifest")
            temperature = raw.get("temperature")
            return cls(
                weights=raw["model"],
                classes=list(raw["classes"]),
                preprocess=PreprocessSpec.from_dict(raw["preprocess"]),
                arch=str(raw.get("arch", ARCH)),
                recipe=dict(raw.get("recipe") or {}),
                init=str(raw.get("init", "")),
                teacher=str(raw.get("teacher", "")),
                config=json.loads(raw.get("config") or "{}"),
                epoch=int(raw.get("epoch", -1)),
                val_summary=json.loads(raw.get("val_summary") or "{}"),
                temperature=float(temperature) if temperature is not None else None,
                temperature_source=str(raw.get("temperature_source", "")),
                ood=OodSpec.from_json(ood, source) if isinstance(ood, str) else None,
                training=TrainingManifest.from_json(training, source) if isinstance(training, str) else None,
                resume={k: raw[k] for k in RESUME_KEYS if k in raw},
                version=version,
            )
        except (TypeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{source} has unreadable mri44 fields: {exc}") from exc

    def save(self, path: Path) -> None:
        """Written atomically: a reader (or a crash) never sees half a checkpoint."""
        with atomic_path(path) as tmp:
            torch.save(self.to_dict(), tmp)

    @classmethod
    def load(cls, source: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> Checkpoint:
        """A .pt file or a run folder (its best.pt), loaded with weights_only=True."""
        path = checkpoint_path(source)
        if not path.is_file():
            raise CheckpointError(
                f"no checkpoint at {path}: pass a .pt file written by `python -m train` or its run folder"
            )
        try:
            raw = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as exc:  # torch raises several types for truncated or foreign files
            raise CheckpointError(
                f"cannot load checkpoint {path}: {exc.__class__.__name__}: {exc}".strip()
            ) from exc
        return cls.from_dict(raw, str(path))

    def with_fit(
        self, temperature: float, source: str, ood: OodSpec, training: TrainingManifest
    ) -> Checkpoint:
        """This checkpoint with what evaluation fits after training (best.pt is rewritten with it)."""
        return replace(self, temperature=temperature, temperature_source=source, ood=ood, training=training)
