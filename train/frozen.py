"""Fine-tuning the late stages of an ImageNet ResNet on features computed once: `--freeze-through layer3`.

On a 2-core CPU a full ResNet-50 fine-tune affords a handful of epochs. Freezing the network through a stage and
caching that stage's output for every image once (the frozen part never changes, so neither does its output)
leaves only the late stages and the classifier to run per step: many epochs and several seeds become affordable.
Augmentation survives the cache in two ways: K cached views per image (view 0 plain, views 1..K-1 through the
training augmentation, each drawn from its own seed) and a horizontal flip of the cached feature map.

The split is only in how training runs. The frozen and trainable parts share the full model's modules, so the
checkpoints hold an ordinary full network that export and scoring read like any other.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torchvision.models import ResNet

from mri44.atomic import atomic_path
from mri44.errors import SettingError
from mri44.torch_input import to_input

from .augment import random_affine_intensity

log = logging.getLogger(__name__)

FREEZE_POINTS = ("none", "layer1", "layer2", "layer3")
_STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")


def _stage_modules(model: ResNet) -> dict[str, torch.nn.Module]:
    stem = torch.nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
    return {"stem": stem} | {name: getattr(model, name) for name in _STAGES[1:]}


def frozen_part(model: ResNet, through: str) -> torch.nn.Sequential:
    """The stem and the stages up to and including `through`, sharing the model's modules."""
    stages = _stage_modules(model)
    return torch.nn.Sequential(*(stages[name] for name in _STAGES[: _STAGES.index(through) + 1]))


def trainable_part(model: ResNet, through: str) -> torch.nn.Sequential:
    """The stages after `through`, the pooling and the classifier: what trains on cached features."""
    stages = _stage_modules(model)
    late = [stages[name] for name in _STAGES[_STAGES.index(through) + 1 :]]
    return torch.nn.Sequential(*late, model.avgpool, torch.nn.Flatten(1), model.fc)


def freeze(model: ResNet, through: str) -> None:
    """No gradients for the frozen part; its batch norms keep their ImageNet statistics (eval mode at every
    forward pass through it, which happens only while caching)."""
    for param in frozen_part(model, through).parameters():
        param.requires_grad_(False)


def check_freeze_settings(through: str, views: int, arch: str, weights: str) -> None:
    """Refuse combinations that cannot mean what they say, before any work."""
    if through not in FREEZE_POINTS:
        raise SettingError(f"unknown --freeze-through {through!r}: choose one of {', '.join(FREEZE_POINTS)}")
    if views < 1:
        raise SettingError(f"--feature-views must be at least 1, got {views}")
    if through == "none":
        if views != 1:
            raise SettingError("--feature-views needs --freeze-through layer1|layer2|layer3")
        return
    if weights == "none":
        raise SettingError(
            f"--freeze-through {through} with --weights none would freeze random layers; use --weights "
            "imagenet (or a checkpoint path)"
        )


@torch.no_grad()
def compute_features(
    model: ResNet,
    through: str,
    pixels: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    views: int,
    seed: int,
    device: torch.device,
    bf16: bool,
    batch_size: int = 64,
) -> np.ndarray:
    """float16 (views, N, C, h, w): the frozen part's output for every image, view 0 plain, view v > 0 through
    the training augmentation drawn from seed + 1000 + v (the same views on every rerun and resume)."""
    part = frozen_part(model, through).to(device).eval()
    if bf16:
        part = part.to(memory_format=torch.channels_last)
    probe = part(to_input(pixels[:1].to(device), scale, bias))
    out = np.empty((views, len(pixels), *probe.shape[1:]), np.float16)
    t0 = time.perf_counter()
    for view in range(views):
        generator = torch.Generator(device=device).manual_seed(seed + 1000 + view)
        for start in range(0, len(pixels), batch_size):
            raw = pixels[start : start + batch_size].to(device).float()
            if view:
                raw = random_affine_intensity(raw, generator=generator)
            x = to_input(raw, scale, bias)
            x = x.contiguous(memory_format=torch.channels_last) if bf16 else x
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                out[view, start : start + len(raw)] = part(x).float().cpu().numpy()
        log.info(
            "cached %s features, view %d/%d: %d images, %.0fs so far",
            through,
            view + 1,
            views,
            len(pixels),
            time.perf_counter() - t0,
        )
    return out


def load_or_compute_features(cache_file: Path, compute: Callable[[], np.ndarray]) -> torch.Tensor:
    """The run's feature cache: read back on resume (it depends only on the run's fixed settings), else
    computed and written once."""
    if cache_file.is_file():
        log.info("feature cache: %s", cache_file)
        return torch.from_numpy(np.load(cache_file))
    features = compute()
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(cache_file) as tmp, open(tmp, "wb") as handle:
        np.save(handle, features)
    return torch.from_numpy(features)


def feature_batch(
    features: torch.Tensor, sel: torch.Tensor, generator: torch.Generator, flip: bool, device: torch.device
) -> torch.Tensor:
    """A training batch from the cache: one random view per image, each map flipped left-right with p = 0.5."""
    view = torch.randint(features.shape[0], (len(sel),), generator=generator, device=generator.device)
    x = features[view.cpu(), sel.cpu()].to(device).float()
    if flip:
        mirror = torch.rand(len(sel), generator=generator, device=generator.device).to(device) < 0.5
        x = torch.where(mirror.view(-1, 1, 1, 1), x.flip(-1), x)
    return x
