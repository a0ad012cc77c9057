"""Two recipes cross-validated on the same folds, compared image by image (issue 29's rule for a new default).

    python scripts/cv_compare.py ~/mri44-runs/cv5-A ~/mri44-runs/cv5-B [--classes 15] [--finished-folds]

Prints each one's pooled out-of-fold figures and mean +- sd over the folds, McNemar's exact test on out-of-fold
correctness (images only A got right against images only B got right), and the per-class recall of both, the
classes that moved most first. B replaces A when its out-of-fold macro-F1 is higher and its accuracy not lower.

--finished-folds compares B while it runs, on the folds both have finished: a screening that can stop a recipe
early (a few hours of CPU per fold), never the rule's decision, which needs every fold.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import polars as pl

from mri44.errors import MRI44Error
from mri44.stages.train.cv import compare


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument(
        "--classes", type=int, default=15, help="per-class rows to print (most changed first)"
    )
    parser.add_argument(
        "--finished-folds",
        action="store_true",
        help="compare on the folds both runs have finished (a screening while B runs)",
    )
    args = parser.parse_args()
    try:
        summary, recall = compare(args.a, args.b, finished_folds=args.finished_folds)
    except MRI44Error as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"folds compared: {', '.join(str(f) for f in summary['folds'])}\n")
    print("| run | accuracy | macro-F1 | tumour type | contrast | T1 | T1C+ | T2 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for run in (args.a, args.b):
        figures = summary["figures"][str(run)]
        pooled, folds = figures.filter(fold="all"), figures.filter(pl.col("fold") != "all")
        cells = []
        for name in ("accuracy", "macro_f1", "tumor_type_accuracy", "contrast_accuracy"):
            sd = f"{folds[name].std():.3f}" if folds.height > 1 else "-"
            cells.append(f"{pooled[name][0]:.3f} ({folds[name].mean():.3f} +- {sd})")
        cells += [f"{pooled[f'accuracy_{c}'][0]:.3f}" for c in ("T1", "T1C+", "T2")]
        print(f"| {run.name} | " + " | ".join(cells) + " |")
    print("\nper fold (accuracy / macro-F1):")
    for run in (args.a, args.b):
        folds = summary["figures"][str(run)].filter(pl.col("fold") != "all")
        cells = [
            f"{f} {acc:.3f} / {f1:.3f}"
            for f, acc, f1 in folds.select("fold", "accuracy", "macro_f1").iter_rows()
        ]
        print(f"  {run.name}: " + ", ".join(cells))
    print(
        f"\n{summary['images']} images: only {args.a.name} right {summary['only_a']}, only {args.b.name} right "
        f"{summary['only_b']}, exact McNemar p = {summary['mcnemar_p']:.3g}\n"
    )
    moved = recall.with_columns(pl.col("diff").abs().alias("moved")).sort(
        "moved", "class", descending=[True, False]
    )
    with pl.Config(
        tbl_rows=args.classes,
        tbl_formatting="MARKDOWN",
        tbl_hide_dataframe_shape=True,
        tbl_hide_column_data_types=True,
        float_precision=3,
    ):
        print(moved.head(args.classes).drop("moved"))


if __name__ == "__main__":
    main()
