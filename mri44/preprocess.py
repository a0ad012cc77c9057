"""Preprocessing as a small, serialisable spec stored in every checkpoint and every exported model.

Two stages, split so training can cache the expensive one:
1. `to_model_pixels`: decoded image -> uint8 square of `size` (channel handling, resize or letterbox). This is
   what the training cache holds, and what the scorer computes per file.
2. `normalize`: uint8 pixels -> float32 NCHW, three channels, `x * scale + bias` with the spec's mean/std.
Training applies augmentation between the two on uint8-valued tensors; nothing else differs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal

import cv2
import numpy as np

from mri44.errors import SettingError
from mri44.limits import Limits

if TYPE_CHECKING:
    from mri44.readers import Item, Tags

ResizePolicy = Literal["pad", "stretch"]
Channels = Literal["grey", "rgb"]
Interpolation = Literal["area", "linear", "cubic"]

_INTERP = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Bumped when a spec field is added or a field's meaning changes; a reader refuses specs newer than it knows.
SPEC_VERSION = 1


@dataclass(frozen=True)
class PreprocessSpec:
    """How a decoded image becomes a model input.

    size: side of the square input. resize: "pad" keeps the aspect ratio and letterboxes with black (MRI
    background), "stretch" resizes to the square as the published baseline did. channels: "grey" converts to one
    luminance channel (replicated to the model's three), so RGB and greyscale copies of a slice look the same;
    "rgb" keeps colour. mean/std: per model channel, on the 0..1 scale.
    """

    size: int = 224
    resize: ResizePolicy = "pad"
    interpolation: Interpolation = "area"
    channels: Channels = "grey"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    version: int = SPEC_VERSION

    def __post_init__(self) -> None:
        if self.version > SPEC_VERSION:
            raise SettingError(
                f"preprocessing spec version {self.version} is newer than this mri44 knows ({SPEC_VERSION}): "
                "upgrade mri44 to use this model"
            )
        if self.size < 8:
            raise SettingError(f"image size must be at least 8, got {self.size}")
        if self.resize not in ("pad", "stretch"):
            raise SettingError(f"unknown resize policy {self.resize!r}")
        if self.channels not in ("grey", "rgb"):
            raise SettingError(f"unknown channel handling {self.channels!r}")
        if self.interpolation not in _INTERP:
            raise SettingError(f"unknown interpolation {self.interpolation!r}")
        try:
            mean, std = tuple(float(m) for m in self.mean), tuple(float(s) for s in self.std)
        except (TypeError, ValueError) as exc:
            raise SettingError(f"preprocessing mean and std must be numbers: {exc}") from exc
        if len(mean) != 3 or len(std) != 3:
            raise SettingError(
                f"preprocessing mean and std need 3 values each, got {len(mean)} and {len(std)}"
            )
        if not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
            raise SettingError(f"preprocessing std must be positive and finite, got mean {mean}, std {std}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @property
    def cache_channels(self) -> int:
        return 1 if self.channels == "grey" else 3

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> PreprocessSpec:
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:  # a step we do not know would be silently skipped: refuse instead
            raise SettingError(
                f"preprocessing spec has fields this mri44 does not know: {', '.join(unknown)}"
            )
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> PreprocessSpec:
        return cls.from_dict(json.loads(text))

    def digest(self) -> str:
        """Short stable id, used to key on-disk caches of resized pixels."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:12]

    def scale_bias(self) -> tuple[np.ndarray, np.ndarray]:
        """Normalisation as one multiply-add per channel: x * scale + bias == (x / 255 - mean) / std."""
        std = np.asarray(self.std, np.float32)
        scale = (1.0 / (255.0 * std)).astype(np.float32)
        bias = (-np.asarray(self.mean, np.float32) / std).astype(np.float32)
        return scale, bias


def _to_channels(image: np.ndarray, channels: Channels) -> np.ndarray:
    if channels == "grey":
        return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB) if image.ndim == 2 else image


def to_model_pixels(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Decoded uint8 image (HxW or HxWx3 RGB) -> uint8 array (size, size, C), C = spec.cache_channels."""
    img = _to_channels(image, spec.channels)
    size = spec.size
    interp = _INTERP[spec.interpolation]
    h, w = img.shape[:2]
    if spec.resize == "stretch":
        out = cv2.resize(img, (size, size), interpolation=interp)
    else:
        scale = size / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        resized = cv2.resize(img, (nw, nh), interpolation=interp) if (nh, nw) != (h, w) else img
        out = np.zeros((size, size) + img.shape[2:], np.uint8)
        top, left = (size - nh) // 2, (size - nw) // 2
        out[top : top + nh, left : left + nw] = resized
    return out.reshape(size, size, spec.cache_channels)


def normalize(pixels: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 (N, S, S, C) or (S, S, C) -> float32 (N, 3, S, S), ready for the network.

    One multiply-add per output channel straight from the uint8 source (a grey channel is read three times
    rather than copied), which is 5x faster than cast-repeat-transpose and bitwise identical to it.
    """
    batch = pixels[None] if pixels.ndim == 3 else pixels
    n, h, w, c = batch.shape
    scale, bias = spec.scale_bias()
    out = np.empty((n, 3, h, w), np.float32)
    for ch in range(3):
        np.multiply(batch[..., 0 if c == 1 else ch], scale[ch], out=out[:, ch])
        out[:, ch] += bias[ch]
    return out


def load_item(item: Item, spec: PreprocessSpec, limits: Limits = Limits()) -> tuple[np.ndarray, Tags | None]:
    """One image at the model's input size, its series tags and its fingerprint (for seen_in_training), from one
    decode of its file: what every engine computes per image (raises ImageDecodeError)."""
    from mri44.fingerprint import fingerprint_tags
    from mri44.readers import read_item

    pixels, tags = read_item(item, limits)
    tags = tags or {}
    # What matches it against a model's training images (mri44.fingerprint): the SHA-256 of the file's bytes when it
    # is one image, which the raster and DICOM readers hash from their own read; a one-slice NIfTI is read again.
    raw = item.path.read_bytes() if item.member is None and "sha256" not in tags else None
    return to_model_pixels(pixels, spec), {**tags, **fingerprint_tags(pixels, raw)}


def load_pixels(
    item: Item | str | os.PathLike[str], spec: PreprocessSpec, limits: Limits = Limits()
) -> np.ndarray:
    """load_item's pixels, of an Item or of a file that holds one image."""
    from mri44.readers import Item, item_for

    return load_item(item if isinstance(item, Item) else item_for(item), spec, limits)[0]
