from pathlib import Path

import cv2
import numpy as np
import polars as pl
from synthetic import make_dataset

from mri44.preprocess import PreprocessSpec
from train.dataset import scan_dataset
from train.split import SplitConfig, conflicting_duplicates, make_split


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
