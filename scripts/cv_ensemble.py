"""The out-of-fold figures of an ensemble of cross-validated recipes (issue 29's climb: an ensemble teacher).

    python scripts/cv_ensemble.py ~/mri44-runs/cv5-t50 ~/mri44-runs/cv5-s18 --out ~/mri44-runs/cv5-ens-t50-s18
    python scripts/cv_compare.py ~/mri44-runs/cv5-s18 ~/mri44-runs/cv5-ens-t50-s18

Every image is scored by the geometric mean of the members' fold models that never saw it (train/cv.ensemble_cv).
OUT is a CV folder without models: cv_compare.py pairs it with any run on the same folds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mri44.stages.train.cv import ensemble_cv


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("members", type=Path, nargs="+", help="CV folders on the same folds")
    parser.add_argument("--out", type=Path, required=True, help="a new folder for the ensemble's tables")
    args = parser.parse_args()
    result = ensemble_cv(args.members, args.out)
    acc, f1 = result["mean_sd"]["accuracy"], result["mean_sd"]["macro_f1"]
    print(
        f"{args.out}: out-of-fold accuracy {result['pooled']['accuracy']:.4f} ({acc[0]:.4f} +- {acc[1]:.4f}), "
        f"macro-F1 {result['pooled']['macro_f1']:.4f} ({f1[0]:.4f} +- {f1[1]:.4f}), "
        f"tumour type {result['pooled']['tumor_type_accuracy']:.4f}; temperature {result['temperature']:.3f}, "
        f"ECE {result['ece']:.4f} ({result['images']} images)"
    )


if __name__ == "__main__":
    main()
