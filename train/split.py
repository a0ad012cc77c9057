"""Group-aware, stratified, seeded train/val/test split.

Neighbouring slices of one case are near-copies of each other, so a random split puts the same case on both
sides and flatters the test score. Here images are first joined into groups (byte-identical files, and images of
one tumour type whose perceptual hashes differ in at most `phash_distance` of 64 bits, transitively); whole
groups are then dealt to the splits so that each class gets close to the asked fractions.
Byte-identical files filed under different classes are reported and kept in train, never in val/test.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from mri44.errors import SettingError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitConfig:
    train: float = 0.70
    val: float = 0.15
    test: float = 0.15
    seed: int = 0
    phash_distance: int = 6
    max_group_share: float = (
        0.3  # see group_ids: chains holding more of a class are cut at a stricter distance
    )

    def __post_init__(self) -> None:
        fractions = (self.train, self.val, self.test)
        if min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
            raise SettingError(f"split fractions must be >= 0 and sum to 1, got {fractions}")


def _components(sha_codes: np.ndarray, hashes: np.ndarray, tumor: np.ndarray, distance: int) -> np.ndarray:
    """Connected components over 'byte-identical' and 'pHash within `distance` bits, same tumour type' links."""
    n = len(sha_codes)
    order = np.argsort(sha_codes, kind="stable")
    same = sha_codes[order][1:] == sha_codes[order][:-1]
    rows, cols = [order[1:][same]], [order[:-1][same]]
    if distance >= 0:
        for value in np.unique(tumor):
            idx = np.flatnonzero(tumor == value)
            close = np.bitwise_count(hashes[idx, None] ^ hashes[None, idx]) <= distance
            a, b = np.nonzero(np.triu(close, k=1))
            rows.append(idx[a])
            cols.append(idx[b])
    r, c = np.concatenate(rows), np.concatenate(cols)
    graph = csr_matrix((np.ones(len(r), np.int8), (r, c)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def group_ids(manifest: pl.DataFrame, phash_distance: int, max_group_share: float = 1.0) -> np.ndarray:
    """Groups of byte-identical and near-identical images; over-long near-duplicate chains are cut.

    pHash links are transitive, so neighbouring slices can chain a whole class into one group (all 99
    Carcinoma T1C+ images at 6 bits), which then never reaches val or test. A group holding more than
    `max_group_share` of some class's images is re-grouped inside itself at one bit less, repeatedly, down to
    byte-identical links only; byte-identical files always stay together.
    """
    sha_codes = np.unique(manifest["sha256"].to_numpy(), return_inverse=True)[1]
    hashes = manifest["phash"].to_numpy().astype(np.uint64)
    tumor = manifest["tumor_type"].to_numpy()
    label_codes = np.unique(manifest["label"].to_numpy(), return_inverse=True)[1]
    class_sizes = np.bincount(label_codes)
    groups = _components(sha_codes, hashes, tumor, phash_distance)
    pending = [(g, phash_distance) for g in np.unique(groups)]
    while pending:
        group, distance = pending.pop()
        idx = np.flatnonzero(groups == group)
        share = (np.bincount(label_codes[idx], minlength=len(class_sizes)) / class_sizes).max()
        if share <= max_group_share or distance < 0:
            continue
        sub = _components(sha_codes[idx], hashes[idx], tumor[idx], distance - 1)
        first_new = groups.max() + 1
        groups[idx] = first_new + sub
        pending.extend((first_new + s, distance - 1) for s in np.unique(sub))
    return np.unique(groups, return_inverse=True)[1]


def conflicting_duplicates(manifest: pl.DataFrame) -> pl.DataFrame:
    """Byte-identical files filed under more than one class: one row per file, with all its labels."""
    labels = manifest.group_by("sha256").agg(pl.col("label").unique().sort().alias("labels"))
    conflicted = labels.filter(pl.col("labels").list.len() > 1)
    return (
        manifest.join(conflicted, on="sha256", how="inner")
        .select("path", "label", "sha256", pl.col("labels").list.join(" | "))
        .sort("sha256", "path")
    )


def deal_groups(
    frame: pl.DataFrame,
    fractions: np.ndarray,
    seed: int,
    forced_first: set[int] | frozenset[int] = frozenset(),
) -> dict[int, int]:
    """Group -> part index: whole groups dealt so that each class gets close to `fractions` in every part.

    Big groups first (hardest to place), ties in seeded random order; each group goes where its classes are
    furthest below target, relative to the target's size. Groups in `forced_first` go to part 0. One rule for
    the train/val/test split and for cross-validation folds (train/cv.py)."""
    classes = sorted(frame["label"].unique())
    class_index = {c: i for i, c in enumerate(classes)}
    totals = np.bincount(frame["label"].replace_strict(class_index).to_numpy(), minlength=len(classes))
    targets = totals[None, :] * fractions[:, None]  # (part, class)
    counts = np.zeros_like(targets)

    per_group = frame.group_by("group").agg(pl.col("label").replace_strict(class_index).alias("classes"))
    rng = np.random.default_rng(seed)
    per_group = per_group.sort("group").with_columns(shuffle=pl.Series(rng.permutation(per_group.height)))
    per_group = per_group.with_columns(size=pl.col("classes").list.len()).sort(
        ["size", "shuffle"], descending=[True, False]
    )
    assignment: dict[int, int] = {}
    for group, members, _, _ in per_group.iter_rows():
        hist = np.bincount(np.asarray(members), minlength=len(classes))
        if group in forced_first:
            choice = 0
        else:
            need = ((targets - counts) / np.maximum(targets, 1.0)) @ hist
            need = np.where(fractions > 0, need, -np.inf)
            choice = int(np.argmax(need))
        counts[choice] += hist
        assignment[group] = choice
    return assignment


def make_split(manifest: pl.DataFrame, config: SplitConfig) -> pl.DataFrame:
    """The manifest with `group` and `split` columns added; same manifest and config -> same split."""
    groups = group_ids(manifest, config.phash_distance, config.max_group_share)
    frame = manifest.with_columns(group=pl.Series(groups, dtype=pl.Int64))
    forced_train = set(
        frame.join(conflicting_duplicates(manifest).select("sha256"), on="sha256", how="semi")["group"]
    )
    fractions = np.array([config.train, config.val, config.test])
    assignment = deal_groups(frame, fractions, config.seed, forced_train)
    names = {group: SPLITS[part] for group, part in assignment.items()}
    return frame.with_columns(split=pl.col("group").replace_strict(names, return_dtype=pl.String))


def split_report(split: pl.DataFrame) -> pl.DataFrame:
    """Images per class and split, for the run folder and a quick look."""
    return (
        split.group_by("label", "split")
        .len()
        .pivot(on="split", index="label", values="len")
        .fill_null(0)
        .sort("label")
    )
