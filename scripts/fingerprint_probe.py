"""Measure the `near_training` rule on the data (issue 32): how far re-encoded copies of an image move, and how close
other images (neighbouring slices, mostly) already are.

    python scripts/fingerprint_probe.py ../shared/data/brain-mri-44c [--copies 400]

For every image: its 64-bit perceptual hash and 16 x 16 thumbnail (mri44.fingerprint). Copies of a sample, made the
ways a user's file differs from ours (JPEG re-encoded at quality 75 and 50, resized to half and to <= 256 px as
examples/ is, turned grey, saved as PNG), must match their original; every other image of the data (a different
file: another SHA-256) should not. Prints, per rule (hash bits, correlation), the share of copies matched and the
share of images that match some other image.
"""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from mri44.discover import find_images
from mri44.fingerprint import _unit, perceptual_hash, sha256_of, thumbnail
from mri44.imageio import decode_bytes, read_file


def variants(image: np.ndarray) -> dict[str, np.ndarray]:
    def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
        ok, data = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
        assert ok
        return decode_bytes(data.tobytes())

    h, w = image.shape[:2]
    scale = min(1.0, 256 / max(h, w))
    return {
        "jpeg q75": jpeg(image, 75),
        "jpeg q50": jpeg(image, 50),
        "half size": cv2.resize(image, (w // 2, h // 2), interpolation=cv2.INTER_AREA),
        "<= 256 px, q90": jpeg(
            cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA), 90
        ),
        "grey": image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY),
        "png": decode_bytes(cv2.imencode(".png", image)[1].tobytes()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data", type=Path)
    parser.add_argument("--copies", type=int, default=400)
    args = parser.parse_args()
    files = find_images(args.data)

    def signature(path: Path) -> tuple[str, int, np.ndarray, np.ndarray]:
        raw = read_file(path)
        image = decode_bytes(raw)
        return sha256_of(raw), perceptual_hash(image), thumbnail(image), image

    with ThreadPoolExecutor(2) as pool:
        signed = list(pool.map(signature, files))
    shas = np.array([s[0] for s in signed])
    hashes = np.array([s[1] for s in signed], np.uint64)
    units = _unit(np.stack([s[2] for s in signed]))
    distance = np.bitwise_count(hashes[:, None] ^ hashes[None, :])
    correlation = units @ units.T
    other = (
        shas[:, None] != shas[None, :]
    )  # a different file; byte-identical copies under two names are not counted
    rng = np.random.default_rng(0)
    sample = rng.choice(len(files), min(args.copies, len(files)), replace=False)
    copies: dict[str, list[tuple[int, float]]] = {}
    for i in sample:
        for name, img in variants(signed[i][3]).items():
            u = _unit(thumbnail(img)[None])[0]
            copies.setdefault(name, []).append(
                (int(np.bitwise_count(np.uint64(perceptual_hash(img)) ^ hashes[i])), float(units[i] @ u))
            )
    print(f"{len(files)} images; {len(sample)} sampled for copies\n")
    print("| copy | hash bits: median / max | correlation: median / min |")
    print("| --- | ---: | ---: |")
    for name, pairs in copies.items():
        bits, corr = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
        print(f"| {name} | {np.median(bits):.0f} / {bits.max()} | {np.median(corr):.4f} / {corr.min():.4f} |")
    print("\n| rule: bits <=, correlation >= | copies matched | images matching another file |")
    print("| --- | ---: | ---: |")
    every = np.array([p for pairs in copies.values() for p in pairs])
    for bits in (0, 2, 4):
        for corr in (0.99, 0.995, 0.998, 0.999, 0.9995):
            copied = float(((every[:, 0] <= bits) & (every[:, 1] >= corr)).mean())
            others = float((((distance <= bits) & (correlation >= corr)) & other).any(1).mean())
            print(f"| {bits}, {corr} | {copied:.3f} | {others:.3f} |")


if __name__ == "__main__":
    main()
