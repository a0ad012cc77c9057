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

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitConfig:
    train: float = 0.70
    val: float = 0.15
    test: float = 0.15
    seed: int = 0
    phash_distance: int = 6

    def __post_init__(self) -> None:
        fractions = (self.train, self.val, self.test)
        if min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
            raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fractions}")


def group_ids(manifest: pl.DataFrame, phash_distance: int) -> np.ndarray:
    """Connected components over 'byte-identical' and 'near-identical within one tumour type' links."""
    n = manifest.height
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    sha = manifest["sha256"].to_numpy()
    _, sha_codes = np.unique(sha, return_inverse=True)
    order = np.argsort(sha_codes, kind="stable")
    same = sha_codes[order][1:] == sha_codes[order][:-1]
    rows.append(order[1:][same])
    cols.append(order[:-1][same])
    if phash_distance >= 0:
        hashes = manifest["phash"].to_numpy().astype(np.uint64)
        tumor = manifest["tumor_type"].to_numpy()
        for value in np.unique(tumor):
            idx = np.flatnonzero(tumor == value)
            close = np.bitwise_count(hashes[idx, None] ^ hashes[None, idx]) <= phash_distance
            a, b = np.nonzero(np.triu(close, k=1))
            rows.append(idx[a])
            cols.append(idx[b])
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    graph = csr_matrix((np.ones(len(r), np.int8), (r, c)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def conflicting_duplicates(manifest: pl.DataFrame) -> pl.DataFrame:
    """Byte-identical files filed under more than one class: one row per file, with all its labels."""
    labels = manifest.group_by("sha256").agg(pl.col("label").unique().sort().alias("labels"))
    conflicted = labels.filter(pl.col("labels").list.len() > 1)
    return (
        manifest.join(conflicted, on="sha256", how="inner")
        .select("path", "label", "sha256", pl.col("labels").list.join(" | "))
        .sort("sha256", "path")
    )


def make_split(manifest: pl.DataFrame, config: SplitConfig) -> pl.DataFrame:
    """The manifest with `group` and `split` columns added; same manifest and config -> same split."""
    groups = group_ids(manifest, config.phash_distance)
    frame = manifest.with_columns(group=pl.Series(groups, dtype=pl.Int64))
    forced_train = set(
        frame.join(conflicting_duplicates(manifest).select("sha256"), on="sha256", how="semi")["group"]
    )

    classes = sorted(frame["label"].unique())
    class_index = {c: i for i, c in enumerate(classes)}
    totals = np.bincount(frame["label"].replace_strict(class_index).to_numpy(), minlength=len(classes))
    fractions = np.array([config.train, config.val, config.test])
    targets = totals[None, :] * fractions[:, None]  # (split, class)
    counts = np.zeros_like(targets)

    per_group = frame.group_by("group").agg(pl.col("label").replace_strict(class_index).alias("classes"))
    rng = np.random.default_rng(config.seed)
    per_group = per_group.sort("group").with_columns(shuffle=pl.Series(rng.permutation(per_group.height)))
    # Big groups first (hardest to place), ties in seeded random order.
    per_group = per_group.with_columns(size=pl.col("classes").list.len()).sort(
        ["size", "shuffle"], descending=[True, False]
    )

    assignment: dict[int, str] = {}
    for group, members, _, _ in per_group.iter_rows():
        hist = np.bincount(np.asarray(members), minlength=len(classes))
        if group in forced_train:
            choice = 0
        else:
            # Place the group where its classes are furthest below target, relative to the target's size.
            need = ((targets - counts) / np.maximum(targets, 1.0)) @ hist
            need = np.where(fractions > 0, need, -np.inf)
            choice = int(np.argmax(need))
        counts[choice] += hist
        assignment[group] = SPLITS[choice]
    return frame.with_columns(split=pl.col("group").replace_strict(assignment, return_dtype=pl.String))


def split_report(split: pl.DataFrame) -> pl.DataFrame:
    """Images per class and split, for the run folder and a quick look."""
    return (
        split.group_by("label", "split")
        .len()
        .pivot(on="split", index="label", values="len")
        .fill_null(0)
        .sort("label")
    )
