"""Build examples/: one image per class, re-encoded at <= 256 px, each one with no near-duplicate in the data (a
group of its own under the split's rule), with attribution.

    python scripts/make_examples.py ../shared/data/brain-mri-44c examples

Every all-data fit leaves the examples' near-duplicate groups out of training (`python -m train --all-data
--holdout examples`, issue 29), so that `mri-score examples/` is an honest small check. An image from a group of
its own costs training one image; an image from a chain of neighbouring slices would cost the whole chain (the
examples picked from a test split cost 255 images, 6.7 % of the data).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import polars as pl

from mri44.preprocess import PreprocessSpec
from mri44.readers import read_image
from mri44.stages.train.dataset import scan_dataset
from mri44.stages.train.split import SplitConfig, group_ids

ATTRIBUTION = """# Example images

One brain MRI slice per class (44 classes), re-encoded as JPEG with the longer side at most 256 px, so that
`mri-score examples/ --out preds.parquet` runs on a fresh clone and prints metric tables (the folder names are
the true labels).

Each is an image with no near-duplicate in the data set (no other image of its tumour type within the split's
perceptual-hash distance), and models fitted on all data from issue 29 on leave them out of training
(`python -m train --all-data --holdout examples`): for those models `mri-score examples/` scores images they
never saw. The model card says which shipped models these are.

Source: the Kaggle data set "Brain Tumor MRI Images 44 Classes" (fernando2rad), as copied in the public GitHub
repository SunilkumarAdapa/MRIBrainTumorClassification. For research and education only.
Some of these images are screenshots of Radiopaedia.org cases, as their file names say; the copyright of each stays with its authors.
"""


def singleton_picks(data: Path) -> pl.DataFrame:
    """label, path: per class, the first (by path) image whose near-duplicate group holds only itself."""
    manifest = scan_dataset(data, PreprocessSpec(size=16)).manifest  # hashes and labels; pixels unused
    split = SplitConfig()
    groups = manifest.with_columns(
        group=pl.Series(group_ids(manifest, split.phash_distance, split.max_group_share))
    )
    alone = groups.filter(pl.len().over("group") == 1)
    picks = alone.sort("label", "path").group_by("label", maintain_order=True).first()
    missing = set(manifest["label"]) - set(picks["label"])
    if missing:
        raise SystemExit(f"no image without near-duplicates in: {', '.join(sorted(missing))}")
    return picks.select("label", "path")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--max-side", type=int, default=256)
    args = parser.parse_args()
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"error: {args.out} is not empty; remove it first (it is replaced, not merged)")
    picks = singleton_picks(args.data)
    for label, rel in picks.iter_rows():
        image = read_image(args.data / rel)
        h, w = image.shape[:2]
        scale = min(1.0, args.max_side / max(h, w))
        if scale < 1:
            image = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        if image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        target = args.out / label / (Path(rel).stem + ".jpg")
        target.parent.mkdir(parents=True, exist_ok=True)
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        target.write_bytes(data.tobytes())
    (args.out / "README.md").write_text(ATTRIBUTION)
    print(f"wrote {picks.height} images to {args.out}")


if __name__ == "__main__":
    main()
