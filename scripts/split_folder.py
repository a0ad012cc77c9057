"""Link one split of a training run into a folder of class folders, so `mri-score` scores exactly that split
(the model card's test figures are made this way).

python scripts/split_folder.py RUN_DIR DATA OUT_DIR [SPLIT] [OTHER_SPLIT_CSV]

SPLIT: test (default), val or train. OTHER_SPLIT_CSV: keep only the files that are in SPLIT there too, e.g.
docs/runs/split.csv, to compare models trained on two different splits on images that neither trained on.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import polars as pl

from mri44.run_folder import read_split


def link_split(run: Path, data: Path, out: Path, split: str = "test", other: Path | None = None) -> int:
    """Symlink every file of `split` from data into out under the same relative path; returns the count."""
    if out.exists():
        raise SystemExit(f"{out} exists; choose a new folder")
    rows = read_split(run / "split.parquet").filter(pl.col("split") == split).select("path")
    if other is not None:
        rows = rows.join(read_split(other).filter(pl.col("split") == split).select("path"), on="path")
    for rel in rows["path"]:
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink((data / rel).resolve(), target)
    return rows.height


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5, 6):
        sys.exit(__doc__)
    run, data, out = (Path(a) for a in sys.argv[1:4])
    split = sys.argv[4] if len(sys.argv) > 4 else "test"
    other = Path(sys.argv[5]) if len(sys.argv) > 5 else None
    print(f"linked {link_split(run, data, out, split, other)} files into {out}")
