"""Build examples/: at most one image per class, re-encoded at <= 256 px, taken from the test split of a run
(so the shipped model never trained on them), with attribution.

    python scripts/make_examples.py ../shared/data/brain-mri-44c runs/h200-default-256/split.csv examples
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import polars as pl

from mri44.readers import read_image

ATTRIBUTION = """# Example images

One brain MRI slice per class (44 classes), re-encoded as JPEG with the longer side at most 256 px, so that
`mri-score examples/ --out preds.parquet` runs on a fresh clone and prints metric tables (the folder names are
the true labels).

Source: the Kaggle data set "Brain Tumor MRI Images 44 Classes" (fernando2rad), as copied in the public GitHub
repository SunilkumarAdapa/MRIBrainTumorClassification. Where a class has test images, its example comes from
the test split of the shipped model's training run, so the model did not train on it ({split_note}).
{others}For research and education only.
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data", type=Path)
    parser.add_argument("split", type=Path, help="split.csv of the shipped model's run")
    parser.add_argument("out", type=Path)
    parser.add_argument("--max-side", type=int, default=256)
    args = parser.parse_args()
    split = pl.read_csv(args.split)
    rank = pl.col("split").replace_strict({"test": 0, "val": 1, "train": 2}, return_dtype=pl.Int8)
    picks = split.sort(rank, "path").group_by("label", maintain_order=True).first().sort("label")
    for label, rel, which in picks.select("label", "path", "split").iter_rows():
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
        if which != "test":
            print(f"{label}: no test image in the split, took one from {which}")
    note = ", ".join(f"{n} from {s}" for s, n in picks.group_by("split").len().sort("split").iter_rows())
    elsewhere = picks.filter(pl.col("split") != "test")
    others = "".join(
        f"'{label}' has no test image: its example is from {which}.\n"
        for label, which in elsewhere.select("label", "split").iter_rows()
    )
    (args.out / "README.md").write_text(ATTRIBUTION.format(split_note=note, others=others))
    print(f"wrote {picks.height} images to {args.out} ({note})")


if __name__ == "__main__":
    main()
