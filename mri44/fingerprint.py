"""Image fingerprints: which images a model trained on, so a prediction can say `seen_in_training` (the same bytes)
or `near_training` (the same picture re-encoded, resized, turned grey or re-saved), and metric tables can leave
them out (issue 32).

Two signatures per image, both small enough for every training image to travel in the model's metadata:
- the file's SHA-256 (exact bytes);
- a 64-bit DCT perceptual hash (the split's near-duplicate hash) and a 16 x 16 grey thumbnail.
The hash alone is coarse on brain slices: most images here have another image within 6 bits, usually a neighbouring
slice of the same scan, which is a different image. A match is a hash within NEAR_BITS bits confirmed by a thumbnail
correlation of at least NEAR_CORRELATION; scripts/fingerprint_probe.py measured both on the data (docs/ood.md).
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass

import numpy as np

THUMB = 16  # thumbnail side, pixels
THUMB_SOURCE = 32  # the grey image is area-resized to this side first; hash and thumbnail both come from it
NEAR_BITS = (
    4  # perceptual-hash distance a re-encoded copy stays within (measured: scripts/fingerprint_probe.py)
)
NEAR_CORRELATION = 0.97  # thumbnail correlation a copy keeps and a neighbouring slice does not (measured)


def grey(image: np.ndarray) -> np.ndarray:
    import cv2  # here, not at the top: reading a model's metadata must not pay for OpenCV

    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def signature(image: np.ndarray) -> tuple[int, np.ndarray]:
    """(64-bit DCT hash, THUMB x THUMB grey uint8 thumbnail) of an image, from one grey conversion and one area
    resize to 32 px: the thumbnail is that 32 px image averaged 2 x 2, which equals an area resize of the whole
    image up to rounding (at most one grey level) and costs nothing, where resizing a 600 px image to 16 px a
    second time took longer than decoding it."""
    import cv2  # here, not at the top: reading a model's metadata must not pay for OpenCV

    small = cv2.resize(grey(image), (THUMB_SOURCE, THUMB_SOURCE), interpolation=cv2.INTER_AREA)
    low = cv2.dct(small.astype(np.float32))[:8, :8].flatten()
    bits = low > np.median(low[1:])
    thumb = cv2.resize(small, (THUMB, THUMB), interpolation=cv2.INTER_AREA)
    return int(np.packbits(bits).view(">u8")[0]), thumb


def perceptual_hash(image: np.ndarray) -> int:
    """64-bit DCT hash of the greyscale image: near-identical slices differ in few bits."""
    return signature(image)[0]


def thumbnail(image: np.ndarray) -> np.ndarray:
    """THUMB x THUMB grey, uint8: what the correlation compares."""
    return signature(image)[1]


def _unit(thumbs: np.ndarray) -> np.ndarray:
    """Thumbnails as zero-mean, unit-norm vectors: their dot product is the Pearson correlation."""
    flat = thumbs.reshape(len(thumbs), -1).astype(np.float32)
    flat -= flat.mean(1, keepdims=True)
    return flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-6)


def sha256_of(data: bytes | np.ndarray) -> str:
    return hashlib.sha256(data.tobytes() if isinstance(data, np.ndarray) else data).hexdigest()


@dataclass(frozen=True)
class TrainingManifest:
    """The training images of a model: their SHA-256s, perceptual hashes and thumbnails."""

    sha256: frozenset[str]
    hashes: np.ndarray  # uint64 (N,)
    thumbs: np.ndarray  # uint8 (N, THUMB, THUMB)

    def seen(self, sha256: list[str | None]) -> np.ndarray:
        return np.array([s is not None and s in self.sha256 for s in sha256])

    def near(self, hashes: np.ndarray, thumbs: np.ndarray) -> np.ndarray:
        """Per query image: a training image within NEAR_BITS bits whose thumbnail correlates NEAR_CORRELATION."""
        out = np.zeros(len(hashes), bool)
        reference = _unit(self.thumbs)
        queries = _unit(thumbs)
        for i, h in enumerate(np.asarray(hashes, np.uint64)):
            close = np.flatnonzero(np.bitwise_count(self.hashes ^ h) <= NEAR_BITS)
            out[i] = close.size > 0 and float((reference[close] @ queries[i]).max()) >= NEAR_CORRELATION
        return out

    def to_json(self) -> str:
        payload = {
            "sha256": sorted(self.sha256),
            "hashes_b64": base64.b64encode(np.asarray(self.hashes, "<u8").tobytes()).decode("ascii"),
            "thumbs_b64": base64.b64encode(np.ascontiguousarray(self.thumbs, np.uint8).tobytes()).decode(
                "ascii"
            ),
            "thumb": THUMB,
        }
        text = json.dumps(payload, sort_keys=True)
        return json.dumps({"manifest": payload, "checksum": hashlib.sha256(text.encode()).hexdigest()})

    @classmethod
    def from_json(cls, text: str, source: str = "model") -> TrainingManifest:
        from mri44.errors import MRI44Error

        try:
            outer = json.loads(text)
            payload = outer["manifest"]
            if hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest() != outer["checksum"]:
                raise ValueError("its checksum does not match")
            hashes = np.frombuffer(base64.b64decode(payload["hashes_b64"]), "<u8").astype(np.uint64)
            side = int(payload["thumb"])
            thumbs = np.frombuffer(base64.b64decode(payload["thumbs_b64"]), np.uint8).reshape(-1, side, side)
            if side != THUMB or len(thumbs) != len(hashes):
                raise ValueError(f"{len(hashes)} hashes and {len(thumbs)} thumbnails of {side} px")
            return cls(frozenset(str(s) for s in payload["sha256"]), hashes, thumbs)
        except (ValueError, KeyError, TypeError) as exc:
            raise MRI44Error(
                f"{source}: unreadable training manifest ({exc}); re-attach it or drop it"
            ) from exc


def fingerprint_tags(pixels: np.ndarray, raw: bytes | None) -> dict[str, object]:
    """What a prediction row needs to be matched against a training manifest, from the decoded image (and the file's
    bytes when the file is the image): its SHA-256, perceptual hash and thumbnail (as a list, so it travels as JSON)."""
    phash, thumb = signature(pixels)
    found: dict[str, object] = {"phash": phash, "thumb": thumb.reshape(-1).tolist()}
    if raw is not None:
        found["sha256"] = sha256_of(raw)
    return found


def training_flags(
    manifest: TrainingManifest | None, tags: list[dict | None]
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(seen_in_training, near_training) per row from its fingerprint tags; (None, None) without a manifest, and a
    row without a fingerprint (an error row) is neither."""
    if manifest is None:
        return None, None
    have = [i for i, t in enumerate(tags) if t and "phash" in t]
    seen = np.zeros(len(tags), bool)
    near = np.zeros(len(tags), bool)
    if have:
        seen[have] = manifest.seen([tags[i].get("sha256") for i in have])  # type: ignore[union-attr]
        hashes = np.array([tags[i]["phash"] for i in have], np.uint64)  # type: ignore[index]
        thumbs = np.array([tags[i]["thumb"] for i in have], np.uint8).reshape(-1, THUMB, THUMB)  # type: ignore[index]
        near[have] = manifest.near(hashes, thumbs) | seen[have]
    return seen, near
