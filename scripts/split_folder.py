"""Link one split of a training run into a folder of class folders, so `mri-score` scores exactly that split
(the model card's test figures are made this way).

python scripts/split_folder.py RUN_DIR DATA OUT_DIR [SPLIT]      # SPLIT: test (default), val or train
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import polars as pl


def link_split(run: Path, data: Path, out: Path, split: str = "test") -> int:
    """Symlink every file of `split` from data into out under the same relative path; returns the count."""
    if out.exists():
        raise SystemExit(f"{out} exists; choose a new folder")
    rows = pl.read_parquet(run / "split.parquet").filter(pl.col("split") == split)["path"].to_list()
    for rel in rows:
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink((data / rel).resolve(), target)
    return len(rows)


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    n = link_split(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), *(sys.argv[4:] or ["test"]))
    print(f"linked {n} files into {sys.argv[3]}")
