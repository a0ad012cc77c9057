"""Soft labels computed once (FKD: Shen & Xing, "A Fast Knowledge Distillation Framework for Visual
Recognition", ECCV 2022): `python -m train --soft-labels TEACHER_RUN`.

On-the-fly distillation runs the teacher (a ResNet-50) on every student batch, which cost 1.8x per epoch on our
CPU. Here the teacher runs once, before training: for every training image, K augmented views, each stored as
its augmentation parameters (train/augment.PARAMS, in normalised coordinates, so a view replays alike at the
teacher's and the student's input size) with the teacher's top-k probabilities at the distillation temperature.
The student then trains on exactly those views at no teacher cost per step. The file lives in the student's run
folder (soft_labels.pt, reused on resume) and also holds the teacher's plain-view probabilities on the
validation images, for the record.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mri44.atomic import atomic_path
from mri44.errors import SettingError

from .augment import apply_params, draw_params
from .distill import Teacher, ensemble_description, ensemble_logits

log = logging.getLogger(__name__)

FILE_NAME = "soft_labels.pt"


@dataclass(frozen=True)
class SoftLabels:
    params: (
        torch.Tensor
    )  # float32 (K, N, len(PARAMS)): view k of image i; rows of images not trained on are 0
    top_index: torch.Tensor  # int64 (K, N, k): the teacher's k most probable classes for that view
    top_prob: torch.Tensor  # float32 (K, N, k): their probabilities at `temperature`
    temperature: float
    num_classes: int

    def batch(self, sel: torch.Tensor, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(augmentation params (B, P), teacher log-probabilities (B, classes)) for image sel[j] seen as view
        views[j]. The probability mass outside the top k is spread evenly over the other classes."""
        index, prob = self.top_index[views, sel], self.top_prob[views, sel]
        rest = (1.0 - prob.sum(1, keepdim=True)).clamp(min=0.0) / max(1, self.num_classes - prob.shape[1])
        dense = rest.expand(-1, self.num_classes).clone().scatter_(1, index, prob)
        return self.params[views, sel], dense.clamp(min=1e-8).log()


@torch.no_grad()
def compute_soft_labels(
    parts: Sequence[tuple[Sequence[Teacher], np.ndarray]],
    pixels: torch.Tensor,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    views: int,
    top_k: int,
    temperature: float,
    seed: int,
    bf16: bool = False,
    batch_size: int = 64,
) -> dict:
    """The soft-label file's content: K seeded views of every training image through its teacher, or its
    teachers' geometric mean (under bf16 autocast when the run trains in bf16: 2-3x faster on CPUs with native
    bf16). parts pairs teachers with the rows of train_idx they label: one part for the usual run, one per fold
    of the teacher CV with --cross-fit. The validation images (the first part's teachers) are for the record."""
    n, device, classes = len(pixels), parts[0][0][0].scale.device, parts[0][0][0].num_classes
    if sorted(np.concatenate([rows for _, rows in parts]).tolist()) != sorted(train_idx.tolist()):
        raise ValueError("the parts must label every training row once")
    if bf16:
        for teachers, _ in parts:
            for teacher in teachers:
                teacher.model.to(memory_format=torch.channels_last)

    def logits(teachers: Sequence[Teacher], raw: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return ensemble_logits(teachers, raw).float()

    top_k = min(top_k, classes)
    generator = torch.Generator().manual_seed(seed + 2000)
    params = torch.zeros(views, n, len(draw_params(1)[0]))
    params[:, train_idx] = draw_params(views * len(train_idx), generator).view(views, len(train_idx), -1)
    top_index = torch.zeros(views, n, top_k, dtype=torch.int16)
    top_prob = torch.zeros(views, n, top_k, dtype=torch.float16)
    t0 = time.perf_counter()
    for view in range(views):
        for teachers, part_rows in parts:
            for start in range(0, len(part_rows), batch_size):
                rows = torch.as_tensor(part_rows[start : start + batch_size])
                raw = apply_params(pixels[rows].to(device).float(), params[view, rows])
                probs = F.softmax(logits(teachers, raw) / temperature, 1).cpu()
                best = probs.topk(top_k, 1)
                top_index[view, rows], top_prob[view, rows] = best.indices.short(), best.values.half()
        log.info(
            "soft labels: view %d/%d of %d images, %.0fs",
            view + 1,
            views,
            len(train_idx),
            time.perf_counter() - t0,
        )
    val_probs = torch.zeros(len(val_idx), classes)
    for start in range(0, len(val_idx), batch_size):
        rows = torch.as_tensor(val_idx[start : start + batch_size])
        val_probs[start : start + len(rows)] = F.softmax(
            logits(parts[0][0], pixels[rows].to(device).float()), 1
        ).cpu()
    return {
        "params": params,
        "top_index": top_index,
        "top_prob": top_prob,
        "temperature": temperature,
        "num_classes": classes,
        "teacher": describe_parts(parts),
        "train_idx": torch.as_tensor(train_idx),
        "val_idx": torch.as_tensor(val_idx),
        "val_probs": val_probs.half(),
        "seconds": time.perf_counter() - t0,
    }


def describe_parts(parts: Sequence[tuple[Sequence[Teacher], np.ndarray]]) -> str:
    """Which teachers labelled which images, by content: the one teacher (or ensemble) of a usual run; out of
    fold, each part's teachers and its number of images."""
    if len(parts) == 1:
        return ensemble_description(parts[0][0])
    return "out of fold: " + "; ".join(
        f"{len(rows)} images by {ensemble_description(teachers)}" for teachers, rows in parts
    )


def load_or_compute(
    path: Path, compute: Callable[[], dict], teacher_description: str, temperature: float
) -> SoftLabels:
    """The run's soft labels: read back (weights only) when the file exists and matches the teacher and the
    temperature, else computed and written once."""
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("teacher") != teacher_description or saved.get("temperature") != temperature:
            raise SettingError(
                f"{path} holds soft labels of another teacher or temperature ({saved.get('teacher')}, "
                f"T={saved.get('temperature')}); move it away to compute them anew"
            )
        log.info("soft labels: %s", path)
    else:
        saved = compute()
        with atomic_path(path) as tmp:
            torch.save(saved, tmp)
        log.info("soft labels written to %s in %.0fs", path, saved["seconds"])
    return SoftLabels(
        params=saved["params"].float(),
        top_index=saved["top_index"].long(),
        top_prob=saved["top_prob"].float(),
        temperature=float(saved["temperature"]),
        num_classes=int(saved["num_classes"]),
    )
