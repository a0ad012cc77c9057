"""A run's data: scan (cached), split (new, reused or the run's own on resume), pixels as one tensor.

The decoded, resized images live in one uint8 tensor (on the GPU when there is one); batches are gathered by
index and augmented on the device, so decoding happens once per run and the data path is never the bottleneck.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch

from mri44.atomic import atomic_path
from mri44.errors import SettingError
from mri44.preprocess import PreprocessSpec
from mri44.run_folder import RunFolder, read_split

from .config import TrainConfig
from .dataset import ScannedData, load_or_scan
from .split import SplitConfig, conflicting_duplicates, group_ids, make_split, split_report

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunData:
    split: pl.DataFrame  # one row per image: path, label, split, group, ...; row i <-> pixels[i]
    classes: list[str]
    labels: np.ndarray  # class index per row
    pixels: torch.Tensor  # uint8 (N, C, S, S), on the GPU when training there
    targets: torch.Tensor  # labels as a tensor beside pixels
    train_idx: np.ndarray
    val_idx: np.ndarray
    test_idx: np.ndarray
    scale: torch.Tensor  # the spec's normalisation, x * scale + bias, on the training device
    bias: torch.Tensor
    # --extra-images: rows after the split's (pixels[extra_idx]) whose label is IGNORE_LABEL, the teacher's soft
    # labels their only target; extra_groups: their folder's index, a class of its own in the sampling balance.
    extra_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    extra_groups: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    extra_rows: pl.DataFrame | None = (
        None  # their scan rows (sha256, phash, thumb): the model trained on them
    )

    @property
    def fit_idx(self) -> np.ndarray:
        """Every row the model learns from: train_idx, then extra_idx (the order of sampling weights and soft
        labels)."""
        return np.concatenate([self.train_idx, self.extra_idx])


# The label of an --extra-images row: cross-entropy ignores it (PyTorch's default ignore_index).
IGNORE_LABEL = -100


def load_split(split_file: Path, manifest: pl.DataFrame) -> pl.DataFrame:
    """Reuse a split table from an earlier run (its split.parquet or split.csv); every scanned image must be in it."""
    try:
        given = read_split(split_file)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise SettingError(f"cannot read split file {split_file}: {exc}") from exc
    if not {"path", "split"} <= set(given.columns):
        raise SettingError(f"{split_file} is not a split file: it needs the columns path and split")
    joined = manifest.join(
        given.select("path", "split", *(["group"] if "group" in given.columns else [])), on="path", how="left"
    )
    missing = joined.filter(pl.col("split").is_null())
    if missing.height:
        raise SettingError(
            f"{split_file} has no split for {missing.height} image(s), e.g. {missing['path'][0]}"
        )
    if "group" not in joined.columns:
        joined = joined.with_columns(group=pl.lit(-1, pl.Int64))
    return joined


def write_split_files(out: Path, failures: pl.DataFrame, split: pl.DataFrame, manifest: pl.DataFrame) -> None:
    with atomic_path(RunFolder(out).unreadable) as tmp:
        failures.write_csv(tmp)
    with atomic_path(RunFolder(out).split) as tmp:
        split.write_parquet(tmp)
    with atomic_path(RunFolder(out).split_csv) as tmp:
        split.select("path", "label", "split", "group", "tumor_type", "contrast", "sha256").write_csv(tmp)
    with atomic_path(RunFolder(out).duplicate_conflicts) as tmp:
        conflicting_duplicates(manifest).write_csv(tmp)


def holdout_split(manifest: pl.DataFrame, holdout: Path, split: SplitConfig) -> pl.DataFrame:
    """An all-data split that keeps out of training the near-duplicate groups of the images under `holdout`
    (class folders of copies of data images, matched by class and file stem, as examples/ is made by
    scripts/make_examples.py): those groups become the test part, an honest small check of the final model."""
    from mri44.discover import find_images

    wanted = {(p.parent.name, p.stem) for p in find_images(holdout)}
    if not wanted:
        raise SettingError(f"--holdout {holdout}: no images found")
    keys = [(label, Path(path).stem) for label, path in manifest.select("label", "path").iter_rows()]
    unmatched = wanted - set(keys)
    if unmatched:
        label, stem = sorted(unmatched)[0]
        raise SettingError(
            f"--holdout: {len(unmatched)} image(s) match no --data image by class and file name, e.g. "
            f"{label}/{stem}"
        )
    groups = group_ids(manifest, split.phash_distance, split.max_group_share)
    held = {int(g) for g, key in zip(groups, keys, strict=True) if key in wanted}
    return manifest.with_columns(group=pl.Series(groups, dtype=pl.Int64)).with_columns(
        split=pl.when(pl.col("group").is_in(list(held))).then(pl.lit("test")).otherwise(pl.lit("train"))
    )


def choose_split(cfg: TrainConfig, manifest: pl.DataFrame, resuming: bool) -> pl.DataFrame:
    if resuming:  # the run's own split, never a recomputed one: images already trained on stay in train
        return load_split(RunFolder(cfg.out).split, manifest)
    if cfg.all_data and cfg.holdout is not None:
        return holdout_split(manifest, cfg.holdout, cfg.split)
    if cfg.all_data:  # the groups still serve: the orientation probe's threshold is set on held-out groups
        groups = group_ids(manifest, cfg.split.phash_distance, cfg.split.max_group_share)
        return manifest.with_columns(group=pl.Series(groups, dtype=pl.Int64), split=pl.lit("train"))
    if cfg.split_file:
        return load_split(cfg.split_file, manifest)
    return make_split(manifest, cfg.split)


def prepare_data(
    cfg: TrainConfig, spec: PreprocessSpec, device: torch.device, resuming: bool, write: bool = True
) -> RunData:
    """Scan, split and (write: rank 0) write the split files into the run folder; pixels on the training device."""
    out = cfg.out
    t0 = time.perf_counter()
    scanned = load_or_scan(cfg.data, spec, out / "cache", cfg.workers)
    log.info(
        "scanned %d images in %.1fs (%d unreadable, listed in %s)",
        scanned.manifest.height,
        time.perf_counter() - t0,
        scanned.failures.height,
        RunFolder(out).unreadable,
    )
    split = choose_split(cfg, scanned.manifest, resuming)
    if write:
        write_split_files(out, scanned.failures, split, scanned.manifest)
    log.info("%s images per split", split_report(split).select(pl.exclude("label").sum()).to_dicts()[0])

    classes = sorted(scanned.manifest["label"].unique().to_list())
    class_index = {c: i for i, c in enumerate(classes)}
    labels = split["label"].replace_strict(class_index, return_dtype=pl.Int64).to_numpy().copy()
    split_names = split["split"].to_numpy()
    train_idx, val_idx, test_idx = (np.flatnonzero(split_names == s) for s in ("train", "val", "test"))
    # A split file may leave val empty on purpose (a cross-validation fold): then, as with --all-data, nothing
    # selects an epoch and the last one is the model.
    if len(train_idx) == 0 or (len(val_idx) == 0 and not (cfg.all_data or cfg.split_file)):
        raise SettingError("the split left train or val empty; use more images or other --split fractions")
    if len(val_idx) == 0:
        log.info("no validation images: the last epoch is the model")
    pixels = scanned.pixels
    extra_idx, extra_groups, extra_rows = np.zeros(0, np.int64), np.zeros(0, np.int64), None
    if cfg.extra_images is not None:
        extra = scan_extra_images(cfg, spec, scanned.manifest)
        extra_rows = extra.manifest
        extra_idx = np.arange(len(pixels), len(pixels) + extra_rows.height)
        folders = sorted(extra_rows["label"].unique().to_list())
        extra_groups = (
            extra_rows["label"]
            .replace_strict({f: i for i, f in enumerate(folders)}, return_dtype=pl.Int64)
            .to_numpy()
        )
        pixels = np.concatenate([pixels, extra.pixels])
        labels = np.concatenate([labels, np.full(extra_rows.height, IGNORE_LABEL, np.int64)])
    store = device if device.type == "cuda" else torch.device("cpu")
    scale, bias = spec.scale_bias()
    return RunData(
        split=split,
        classes=classes,
        labels=labels,
        pixels=torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))).to(store),
        targets=torch.as_tensor(labels, device=store),
        train_idx=train_idx,
        val_idx=val_idx,
        test_idx=test_idx,
        scale=torch.as_tensor(scale, device=device),
        bias=torch.as_tensor(bias, device=device),
        extra_idx=extra_idx,
        extra_groups=extra_groups,
        extra_rows=extra_rows,
    )


def scan_extra_images(cfg: TrainConfig, spec: PreprocessSpec, manifest: pl.DataFrame) -> ScannedData:
    """--extra-images decoded like --data (cached beside it), less any file whose bytes are also a --data image:
    an image must not be a labelled row and an unlabelled one at once."""
    assert cfg.extra_images is not None
    extra = load_or_scan(cfg.extra_images, spec, cfg.out / "cache", cfg.workers)
    known = set(manifest["sha256"].to_list())
    keep = np.array([sha not in known for sha in extra.manifest["sha256"].to_list()], bool)
    if not keep.any():
        raise SettingError(f"--extra-images {cfg.extra_images}: no readable image that is not also in --data")
    log.info(
        "extra images: %d from %s (%d unreadable, %d also in --data, left out); soft labels their only target",
        int(keep.sum()),
        cfg.extra_images,
        extra.failures.height,
        int((~keep).sum()),
    )
    return ScannedData(extra.manifest.filter(pl.Series(keep)), extra.pixels[keep], extra.failures)
