"""The shipped out-of-distribution flag measured on unseen brain MRI by the thousand (issue 32): any recipe's
cross-validation folder, fold by fold, with the rules the shipped models use.

    python benchmarks/ood_unseen.py ~/mri44-runs/cv5-s18 --data ../shared/data/brain-mri-44c --per-fold 200

Fold k's model (exported to ONNX in memory, fp32) scores every image of fold k, which it never trained on: those
are the in-distribution images. Its thresholds follow the shipped rules: the distance threshold lets
mri44.ood.HELD_OUT_PASS of them through, the turned threshold TURNED_HELD_OUT_PASS, and the detail floor and
border ceiling are fitted on its own training images (mri44.detail), so a family's "flagged" column is what a
shipped model calibrated this way would flag; the column before it leaves the border check out. The altered families are --per-fold of fold k's unseen slices, altered
(benchmarks/ood.py and ood_cv.py: turned, inverted, cropped, shrunk, rotated by other angles); the non-MRI families
are the same images for every fold. benchmarks/ood.py measures the shipped files themselves, on the 44 examples.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import polars as pl
from sklearn.metrics import roc_auc_score

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

import ood_cv  # noqa: E402
from bench_util import model_batches  # noqa: E402

from mri44.checkpoint import Checkpoint  # noqa: E402
from mri44.detail import fit_image_limits, input_statistics  # noqa: E402
from mri44.limits import Limits  # noqa: E402
from mri44.onnx_meta import FEATURES_NAME, INPUT_NAME, OUTPUT_NAME  # noqa: E402
from mri44.ood import HELD_OUT_PASS, TURNED_HELD_OUT_PASS, OodSpec, normalised, pooled, reference_rows  # noqa: E402
from mri44.preprocess import PreprocessSpec, normalize  # noqa: E402
from mri44.readers import list_items, read_image  # noqa: E402
from mri44.run_folder import RunFolder, read_split  # noqa: E402
from mri44.runtime import make_session  # noqa: E402
from mri44.stages.export.onnx_export import export_onnx  # noqa: E402
from mri44.stages.score.pipeline import decoded_batches  # noqa: E402


def scores_of(session, spec: PreprocessSpec, ood: OodSpec, batches) -> dict[str, np.ndarray]:
    """distance, turned, detail and border per image, from batches of the network's input."""
    out: dict[str, list[np.ndarray]] = {"distance": [], "turned": [], "detail": [], "border": []}
    for x in batches:
        _, feature_map = session.run([OUTPUT_NAME, FEATURES_NAME], {INPUT_NAME: x})
        unit = normalised(pooled(feature_map))
        out["distance"].append(ood.scores(feature_map))
        out["turned"].append(ood.orientation.turned_scores(unit) if ood.orientation else np.zeros(len(x)))
        detail, border = input_statistics(x)
        out["detail"].append(detail)
        out["border"].append(border)
    return {name: np.concatenate(parts) for name, parts in out.items()}


def file_batches(paths: list[Path], spec: PreprocessSpec, batch: int = 32):
    """The readable files' network input, decoded by the scorer's own pipeline."""
    for _, pixels, _, _ in decoded_batches(list_items(paths), spec, batch, 2, 2 * batch, Limits()):
        if pixels is not None:
            yield normalize(pixels, spec)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path, help="a cross-validation folder (python -m train --folds K)")
    parser.add_argument("--data", type=Path, required=True, help="the image folder the run was trained on")
    parser.add_argument("--per-fold", type=int, default=200, help="unseen slices altered per fold")
    parser.add_argument("--folds", type=int, default=None, help="only the first N folds (a quick look)")
    parser.add_argument("--out", type=Path, default=None, help="write the per-fold rows as CSV here")
    args = parser.parse_args()
    warnings.simplefilter("ignore", UserWarning)  # pydicom's remarks on its own malformed test files
    bench = ood_cv._benchmark_families()
    folds = pl.read_parquet(RunFolder(args.run).folds)
    rng = np.random.default_rng(0)
    rows = []
    for fold in sorted(folds["fold"].unique().to_list())[: args.folds]:
        t0 = time.perf_counter()
        best = RunFolder(args.run).fold(fold).best
        ckpt = Checkpoint.load(best)
        spec, ood = ckpt.preprocess, ckpt.ood
        if ood is None:
            raise SystemExit(f"error: {best} carries no out-of-distribution reference")
        proto, _, _ = export_onnx(best)
        session = make_session(proto.SerializeToString(), "cpu")
        split = read_split(RunFolder(args.run).fold(fold).split)
        unseen = [args.data / p for p in split.filter(split="test")["path"]]
        train = [args.data / p for p in split.filter(split="train")["path"]]
        inside = scores_of(session, spec, ood, file_batches(unseen, spec))
        reference = [train[i] for i in reference_rows(len(train))]
        known = list(file_batches(reference, spec))
        floor, border = fit_image_limits(input_statistics(x) for x in known)
        ceiling = border.threshold
        limits = {
            "distance": float(np.quantile(inside["distance"], HELD_OUT_PASS)),
            "turned": float(np.quantile(inside["turned"], TURNED_HELD_OUT_PASS))
            if ood.orientation
            else np.inf,
        }

        def flags(
            s: dict[str, np.ndarray], limits=limits, floor=floor, ceiling=ceiling
        ) -> dict[str, np.ndarray]:
            by_distance = s["distance"] > limits["distance"]
            unbordered = by_distance | (s["turned"] > limits["turned"]) | (s["detail"] < floor.threshold)
            return {
                "distance": by_distance,
                "without_border": unbordered,
                "shipped": unbordered | (s["border"] > ceiling),
            }

        picked = rng.choice(len(unseen), size=min(args.per_fold, len(unseen)), replace=False)
        slices = [read_image(unseen[i]) for i in picked]
        families = {"unseen MRI (in distribution)": None} | ood_cv.families(bench, slices, rng)
        for name, images in families.items():
            s = inside if images is None else scores_of(session, spec, ood, model_batches(images, spec))
            f = flags(s)
            row = {"fold": fold, "family": name, "images": len(s["distance"])}
            for score in ("distance", "turned"):
                labels = np.r_[np.zeros(len(inside[score])), np.ones(len(s[score]))]
                row[f"auroc_{score}"] = (
                    None if images is None else float(roc_auc_score(labels, np.r_[inside[score], s[score]]))
                )
            row |= {f"flagged_{rule}": int(flagged.sum()) for rule, flagged in f.items()}
            rows.append(row)
        print(f"fold {fold}: {len(unseen)} unseen, {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    table = pl.DataFrame(rows)
    summary = table.group_by("family", maintain_order=True).agg(
        pl.col("images").sum(),
        pl.col("auroc_distance").mean(),
        pl.col("auroc_turned").mean(),
        *(
            (pl.col(f"flagged_{rule}").sum() / pl.col("images").sum()).alias(rule)
            for rule in ("distance", "without_border", "shipped")
        ),
    )
    print(
        f"{args.run.name}: {folds['fold'].n_unique()} folds; thresholds per fold: distance passes {HELD_OUT_PASS:.1%} "
        f"and turned {TURNED_HELD_OUT_PASS:.1%} of its unseen images, detail floor and border ceiling from its "
        "training images\n"
    )
    print(
        "| family | images | AUROC distance | AUROC turned | flagged by distance | without the border check "
        "| **flagged (shipped rule)** |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in summary.iter_rows(named=True):
        aurocs = [f"{r[k]:.3f}" if r[k] is not None else "" for k in ("auroc_distance", "auroc_turned")]
        print(
            f"| {r['family']} | {r['images']} | {aurocs[0]} | {aurocs[1]} | {r['distance']:.1%} "
            f"| {r['without_border']:.1%} | **{r['shipped']:.1%}** |"
        )
    if args.out:
        table.write_csv(args.out)


if __name__ == "__main__":
    main()
