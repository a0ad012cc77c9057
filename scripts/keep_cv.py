"""Keep a cross-validation's results in the work tree, without its models and caches.

    python scripts/keep_cv.py ~/mri44-runs/cv5-s18 docs/runs/cv/cv5-s18

Run folders live outside the work tree (~/mri44-runs) and are lost with the machine; a new recipe must still be
paired image by image with the recipes before it (scripts/cv_compare.py, scripts/cv_ensemble.py), which needs
their out-of-fold predictions, not their checkpoints. This copies config.json, folds.parquet, oof.parquet,
cv_result.json, cv_metrics/ and each finished fold's config, result, per-epoch metrics, test predictions, test
logits and test tables (train/cv.kept_files), and writes what the fold models held that the CV's summary needs
(classes.json, each fold's ood_evidence.json): a few megabytes at most for a 5-fold CV of 3,811 images.
cv_compare.py and cv_ensemble.py read the copy like the CV folder itself, and a CV lost half-way continues from
it on a new machine (`cp -r DEST ~/mri44-runs/NAME`, then the same `python -m train ... --out ~/mri44-runs/NAME
--resume`: the kept folds count as done). Not for a teacher CV: its fold models are needed again. DEST must not
exist (remove it to keep a CV again once more folds have finished).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mri44.errors import MRI44Error
from mri44.stages.train.cv import keep_results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "cv", type=Path, help="the cross-validation folder (python -m train --folds K --out CV)"
    )
    parser.add_argument("dest", type=Path, help="a new folder, e.g. docs/runs/cv/NAME")
    args = parser.parse_args()
    try:
        copied = keep_results(args.cv, args.dest)
    except MRI44Error as exc:
        raise SystemExit(f"error: {exc}") from None
    size = sum(
        f.stat().st_size for p in copied for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file()
    )
    print(f"{args.dest}: {len(copied)} files and folders, {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
