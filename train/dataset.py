"""Dataset scan: one pass over the files that yields the manifest and the decoded-image cache together.

Each image is decoded exactly once per run: the same decode gives its size, its perceptual hash (for the
group-aware split) and its resized uint8 pixels (what training reads every epoch). The result is kept on disk
in the run folder, so `--resume` and reruns skip decoding entirely.
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from tqdm import tqdm

from mri44.atomic import atomic_path
from mri44.discover import UNLISTABLE, find_images, require_folder
from mri44.errors import SettingError
from mri44.fingerprint import signature
from mri44.imageio import ImageDecodeError, decode_bytes
from mri44.labels import parse_label
from mri44.preprocess import PreprocessSpec, to_model_pixels

log = logging.getLogger(__name__)

MANIFEST_SCHEMA = {
    "path": pl.String,
    "label": pl.String,
    "tumor_type": pl.String,
    "contrast": pl.String,
    "sha256": pl.String,
    "phash": pl.UInt64,
    "thumb": pl.Binary,  # 16 x 16 grey thumbnail (mri44.fingerprint), for the model's training manifest
    "width": pl.Int64,
    "height": pl.Int64,
    "bytes": pl.Int64,
}


@dataclass
class ScannedData:
    manifest: pl.DataFrame  # one row per readable image, row i <-> pixels[i]
    pixels: np.ndarray  # uint8 (N, S, S, C)
    failures: pl.DataFrame  # path, error


def class_folders(data_dir: Path) -> list[str]:
    """Class names are the sub-folder names that hold at least one image, sorted."""
    require_folder(data_dir, "data folder")
    names = sorted(d.name for d in data_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    classes = []
    for name in names:
        skipped: list[tuple[str, str]] = []
        if find_images(data_dir / name, skipped):
            classes.append(name)
        elif any(rel == "." and reason.startswith(UNLISTABLE) for rel, reason in skipped):
            # A class that silently vanished would change the model's classes: refuse instead.
            reason = next(r for rel, r in skipped if rel == ".")
            raise SettingError(
                f"class folder {data_dir / name}: {reason}; fix its permissions or move it out"
            )
    if len(classes) < 2:
        raise SettingError(
            f"{data_dir} must hold at least two class folders with images, found {len(classes)}"
        )
    return classes


def _scan_one(
    path: Path, root: Path, label: str, spec: PreprocessSpec
) -> tuple[dict, np.ndarray] | tuple[str, str]:
    rel = path.relative_to(root).as_posix()
    try:
        data = path.read_bytes()
        image = decode_bytes(data, rel)
    except (ImageDecodeError, OSError) as exc:
        return rel, str(exc)
    parsed = parse_label(label)
    phash, thumb = signature(image)
    row = {
        "path": rel,
        "label": label,
        "tumor_type": parsed.tumor_type,
        "contrast": parsed.contrast,
        "sha256": hashlib.sha256(data).hexdigest(),
        "phash": phash,
        "thumb": thumb.tobytes(),  # the training manifest's thumbnail (mri44.fingerprint)
        "width": int(image.shape[1]),
        "height": int(image.shape[0]),
        "bytes": len(data),
    }
    return row, to_model_pixels(image, spec)


def scan_dataset(data_dir: Path, spec: PreprocessSpec, workers: int | None = None) -> ScannedData:
    """Decode every image under data_dir/<class>/ once; unreadable files are listed, warned about, left out."""
    classes = class_folders(data_dir)
    jobs: list[tuple[Path, str]] = []
    failures: list[tuple[str, str]] = []  # (path relative to data_dir, reason), like _scan_one's
    for c in classes:
        skipped: list[tuple[str, str]] = []
        jobs += [(p, c) for p in find_images(data_dir / c, skipped)]
        failures += [(f"{c}/{rel}", reason) for rel, reason in skipped if reason.startswith(UNLISTABLE)]
    rows: list[dict] = []
    pixels: list[np.ndarray] = []
    workers = workers or min(16, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(lambda job: _scan_one(job[0], data_dir, job[1], spec), jobs)
        for result in tqdm(results, total=len(jobs), desc="decode", unit="img", leave=False, disable=None):
            if isinstance(result[0], dict):
                rows.append(result[0])
                pixels.append(result[1])
            else:
                failures.append(result)
    if failures:
        log.warning("%d unreadable file(s) or folder(s) left out, e.g. %s", len(failures), failures[0][1])
    if not rows:
        raise SettingError(f"no readable images under {data_dir}")
    stack = np.stack(pixels) if pixels else np.zeros((0, spec.size, spec.size, spec.cache_channels), np.uint8)
    return ScannedData(
        manifest=pl.DataFrame(rows, schema=MANIFEST_SCHEMA),
        pixels=stack,
        failures=pl.DataFrame(failures, schema={"path": pl.String, "error": pl.String}, orient="row"),
    )


def _signature(data_dir: Path) -> str:
    """Cheap identity of the file set (names, sizes, mtimes): a changed folder invalidates the cache."""
    digest = hashlib.sha256()
    for path in find_images(data_dir):
        st = path.stat()
        digest.update(f"{path.relative_to(data_dir).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def load_or_scan(
    data_dir: Path, spec: PreprocessSpec, cache_dir: Path, workers: int | None = None
) -> ScannedData:
    """scan_dataset, memoised on disk under cache_dir by (file set, preprocessing spec)."""
    key = f"{_signature(data_dir)}-{spec.digest()}"
    manifest_path = cache_dir / f"manifest-{key}.parquet"
    pixels_path = cache_dir / f"pixels-{key}.npy"
    failures_path = cache_dir / f"failures-{key}.parquet"
    if manifest_path.exists() and pixels_path.exists() and failures_path.exists():
        manifest = pl.read_parquet(manifest_path)
        pixels = np.load(pixels_path, mmap_mode=None)
        if (
            pixels.shape[0] == manifest.height and "thumb" in manifest.columns
        ):  # scans before thumbnails: redo
            return ScannedData(manifest, pixels, pl.read_parquet(failures_path))
    scanned = scan_dataset(data_dir, spec, workers)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(pixels_path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, scanned.pixels)
    with atomic_path(failures_path) as tmp:
        scanned.failures.write_parquet(tmp)
    with atomic_path(manifest_path) as tmp:
        scanned.manifest.write_parquet(tmp)
    return scanned
