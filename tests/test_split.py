from pathlib import Path

import cv2
import numpy as np
import polars as pl
from synthetic import make_dataset

from mri44.preprocess import PreprocessSpec
from mri44.stages.train.dataset import scan_dataset
from mri44.stages.train.split import SplitConfig, conflicting_duplicates, group_ids, make_split


def _scan(root: Path) -> pl.DataFrame:
    return scan_dataset(root, PreprocessSpec(size=16), workers=2).manifest


def test_split_is_reproducible_and_seed_dependent(tmp_path: Path) -> None:
    manifest = _scan(make_dataset(tmp_path, per_class=20))
    a = make_split(manifest, SplitConfig(seed=3, phash_distance=-1))
    b = make_split(manifest, SplitConfig(seed=3, phash_distance=-1))
    c = make_split(manifest, SplitConfig(seed=4, phash_distance=-1))
    assert a["split"].to_list() == b["split"].to_list()
    assert a["split"].to_list() != c["split"].to_list()
    counts = a.group_by("split").len().to_dict(as_series=False)
    sizes = dict(zip(counts["split"], counts["len"], strict=True))
    assert sizes["train"] > sizes["val"] > 0 and sizes["test"] > 0


def test_identical_files_in_two_classes_stay_in_train(tmp_path: Path) -> None:
    root = make_dataset(tmp_path, per_class=20)
    # The same bytes filed under two labels, as the real set's Meningioma T1 / T1C+ pairs are.
    for i, src in enumerate(sorted((root / "Circloma T1").glob("*.jpg"))[:3]):
        (root / "Circloma T2" / f"copy {i}.jpg").write_bytes(src.read_bytes())
    manifest = _scan(root)
    conflicts = conflicting_duplicates(manifest)
    assert conflicts.height >= 2
    for seed in range(5):
        split = make_split(manifest, SplitConfig(seed=seed, phash_distance=-1))
        clashing = split.join(conflicts.select("path"), on="path", how="semi")
        assert set(clashing["split"]) == {"train"}
        sides = split.group_by("sha256").agg(pl.col("split").n_unique().alias("sides"))
        assert sides["sides"].max() == 1  # no byte-identical pair straddles splits


def test_near_duplicates_share_a_side(tmp_path: Path) -> None:
    root = make_dataset(tmp_path, per_class=20)
    folder = root / "Squaroma T2"
    first = sorted(folder.iterdir())[0]
    img = cv2.imdecode(np.fromfile(first, np.uint8), cv2.IMREAD_GRAYSCALE)
    for i in range(5):  # re-encodings of one slice: different bytes, same picture
        ok, data = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 60 + 7 * i])
        (folder / f"neighbour {i}.jpg").write_bytes(data.tobytes())
    manifest = _scan(root)
    for seed in range(5):
        split = make_split(manifest, SplitConfig(seed=seed, phash_distance=6))
        family = split.filter(
            pl.col("path").str.contains("neighbour") | (pl.col("path") == f"Squaroma T2/{first.name}")
        )
        assert family["split"].n_unique() == 1
        assert family["group"].n_unique() == 1


def _chain_manifest(length: int, others: int) -> pl.DataFrame:
    """`length` images of one class whose hashes form a chain (image i differs from image j in |i - j| bits),
    plus `others` unrelated images of another class; the chain's first two files are byte-identical."""
    hashes, value = [], 0
    for i in range(length):
        value ^= 1 << i
        hashes.append(value)
    rng = np.random.default_rng(0)
    hashes += [int(h) for h in rng.integers(0, 2**63, others, dtype=np.int64)]
    shas = ["dup", "dup"] + [f"sha{i}" for i in range(length + others - 2)]
    return pl.DataFrame(
        {
            "path": [f"f{i}" for i in range(length + others)],
            "label": ["Chain T1"] * length + ["Other T1"] * others,
            "tumor_type": ["Chain"] * length + ["Other"] * others,
            "sha256": shas,
            "phash": pl.Series(hashes, dtype=pl.UInt64),
        }
    )


def test_over_long_near_duplicate_chains_are_cut() -> None:
    manifest = _chain_manifest(length=20, others=20)
    chained = group_ids(manifest, phash_distance=6)  # no cut: transitivity joins the whole class
    assert len(set(chained[:20])) == 1
    groups = group_ids(manifest, phash_distance=6, max_group_share=0.3)
    sizes = np.bincount(groups[:20])
    assert sizes[sizes > 0].max() <= 0.3 * 20
    assert groups[0] == groups[1]  # byte-identical files stay together whatever the distance
    assert len(set(groups[:20]) & set(groups[20:])) == 0  # the cut never merges across tumour types
    # A pure chain (neighbours 1 bit apart) stays whole down to distance 1, so it is cut to exact matches.
    assert len(set(groups[:20])) == 19
