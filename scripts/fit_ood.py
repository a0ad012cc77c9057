"""Give an exported ONNX model the out-of-distribution check (issue 23), without its checkpoint.

    python scripts/fit_ood.py MODEL.onnx --data DATA --split SPLIT.csv --out MODEL-ood.onnx [--k 5]
    python scripts/fit_ood.py MODEL.onnx --data DATA --split SPLIT.csv --out NEW.onnx --calibration-from CV_DIR

With --calibration-from, the temperature, the distance threshold's pass rate and the orientation probe's threshold
come from the recipe's cross-validation, measured on its out-of-fold images with the current rules
(train/cv.held_out_ood: the temperature fitted on all out-of-fold logits, the leave-one-out pass rate that lets
mri44.ood.HELD_OUT_PASS of the unseen images through, the TURNED_HELD_OUT_PASS quantile of their turned scores), as
`python -m train --temperature-from CV_DIR` gives a model at the end of training: for a model fitted on all images
before its recipe's cross-validation had finished.

Adds the `features` output (the last stage's feature map; export/onnx_export.add_feature_output), runs the model on
the split's train images (the reference set, at most mri44.ood.MAX_REFERENCE, evenly spread) and val images (the
threshold: 95 % pass), and stores both in the model's metadata (mri44.ood). The logits are untouched, so every
prediction stays the same. Prints the share of the split's test images flagged: the in-distribution false-positive
rate, measured on images neither the model nor the threshold saw. With --orientation it also fits the orientation
probe (mri44.orientation) on the reference images turned four ways, its threshold from grouped K-fold held-out
scores (the split's `group` column; each image its own group without one). Models trained from now on get the same at the
end of training (train/loop.evaluate_best) and carry it through onnx-export.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import polars as pl

from mri44.detail import ImageLimit, fit_image_limits, input_statistics
from mri44.limits import Limits
from mri44.onnx_meta import FEATURES_NAME, INPUT_NAME, ModelMetadata, read_metadata, write_with_metadata
from mri44.ood import (
    PASS_RATE,
    fit_ood,
    held_out_rate_source,
    knn_distance,
    leave_one_out_pass_rate,
    normalised,
    reference_rows,
)
from mri44.orientation import QUARTER_TURNS, fit_orientation
from mri44.preprocess import normalize
from mri44.readers import list_items
from mri44.run_folder import RunFolder, read_split
from mri44.runtime import make_session
from mri44.stages.export.onnx_export import add_feature_output
from mri44.stages.score.pipeline import decoded_batches
from mri44.stages.train.cv import held_out_ood


def pooled_features(
    session, paths: list[Path], meta: ModelMetadata, batch: int = 32, turns: tuple[int, ...] = (0,)
) -> tuple[list[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(N, C) pooled last-stage features of the readable images (unreadable ones are left out), one array per
    quarter turn in `turns` (np.rot90 of the model's input pixels), and their (N,) detail and border scores
    (mri44.detail)."""
    out: list[list[np.ndarray]] = [[] for _ in turns]
    stats: list[tuple[np.ndarray, np.ndarray]] = []
    for _, pixels, _, _ in decoded_batches(list_items(paths), meta.preprocess, batch, 2, 2 * batch, Limits()):
        if pixels is None:
            continue
        for t, k in enumerate(turns):
            x = normalize(np.ascontiguousarray(np.rot90(pixels, k, axes=(1, 2))), meta.preprocess)
            (features,) = session.run([FEATURES_NAME], {INPUT_NAME: x})
            out[t].append(features.reshape(*features.shape[:2], -1).mean(-1))
            if k == 0:
                stats.append(input_statistics(x))
    detail, border = (np.concatenate(parts) for parts in zip(*stats, strict=True))
    return [np.concatenate(parts) for parts in out], (detail, border)


def image_limits(stats: list[tuple[np.ndarray, np.ndarray]]) -> tuple[ImageLimit, ImageLimit]:
    """The detail floor and border ceiling of training images (input_statistics of their batches), printed."""
    floor, ceiling = fit_image_limits(stats)
    print(
        f"detail floor {floor.threshold:.4f} ({floor.source}); border ceiling {ceiling.threshold:.4f} "
        f"({ceiling.source})"
    )
    return floor, ceiling


def add_image_limits(
    proto: onnx.ModelProto, meta: ModelMetadata, split: pl.DataFrame, args: argparse.Namespace
) -> None:
    """--image-limits-only: the model's OOD spec as it is, plus the detail floor and border ceiling of the split's
    training images (decoding only, no forward pass)."""
    if meta.ood is None:
        raise SystemExit(f"error: {args.model} has no out-of-distribution spec to add image limits to")
    train = [args.data / p for p in split.filter(split="train")["path"]]
    reference = [train[i] for i in reference_rows(len(train))]
    batches = decoded_batches(list_items(reference), meta.preprocess, 64, 2, 128, Limits())
    stats = [
        input_statistics(pixels.transpose(0, 3, 1, 2)) for _, pixels, _, _ in batches if pixels is not None
    ]
    floor, ceiling = image_limits(stats)
    write_with_metadata(proto, replace(meta, ood=replace(meta.ood, detail=floor, border=ceiling)), args.out)
    print(f"wrote {args.out}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", type=Path)
    parser.add_argument(
        "--data", type=Path, required=True, help="the image folder the split's paths are under"
    )
    parser.add_argument(
        "--split", type=Path, required=True, help="split.csv/parquet with path and split columns"
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--orientation", action="store_true", help="also fit the orientation probe that flags turned slices"
    )
    parser.add_argument("--k", type=int, default=1)  # best on every family in benchmarks/ood.py (docs/ood.md)
    parser.add_argument(
        "--pass-rate",
        type=float,
        help="for a split without val: the leave-one-out pass rate itself (a CV's cv_result.json: ood.loo_pass_rate)",
    )
    parser.add_argument(
        "--pass-rate-from",
        type=Path,
        help="for a split without val (an all-data model): the selection model whose leave-one-out pass rate "
        "sets the threshold's quantile (mri44.ood.leave_one_out_pass_rate)",
    )
    parser.add_argument(
        "--calibration-from",
        type=Path,
        help="a cross-validation folder of the model's recipe: its out-of-fold temperature and leave-one-out "
        "pass rate (cv_result.json) replace the model's temperature and --pass-rate",
    )
    parser.add_argument(
        "--image-limits-only",
        action="store_true",
        help="keep the model's reference, thresholds and probe; only add the detail floor and border ceiling "
        "(mri44.detail) fitted on the split's training images (decoding only, no forward pass)",
    )
    args = parser.parse_args()
    if args.out.resolve() == args.model.resolve() or args.out.exists():
        raise SystemExit(f"error: {args.out} exists or is the input model; choose a new file")
    proto = add_feature_output(onnx.load(str(args.model)))
    meta = ModelMetadata.from_proto(proto, str(args.model))
    split = read_split(args.split)
    if args.image_limits_only:
        add_image_limits(proto, meta, split, args)
        return
    turned_threshold = None
    if args.calibration_from is not None:
        cv = json.loads(RunFolder(args.calibration_from).cv_result.read_text())
        unseen = held_out_ood(args.calibration_from, pl.read_parquet(RunFolder(args.calibration_from).folds))
        if unseen is None:
            raise SystemExit(f"error: {args.calibration_from}'s fold models carry no reference set")
        args.pass_rate, turned_threshold = unseen["loo_pass_rate"], unseen.get("turned_threshold")
        print(
            f"temperature {meta.temperature:.4f} -> {cv['temperature']:.4f} (out-of-fold ECE "
            f"{cv['ece_before_temperature']:.4f} -> {cv['ece']:.4f}); from {args.calibration_from}'s "
            f"out-of-fold images: pass rate {args.pass_rate:.4f} ({unseen['passing']:.1%} of them pass), turned "
            f"threshold {turned_threshold} ({unseen.get('turned_passing')}); its folds' own thresholds flagged "
            f"{np.round(unseen['flagged_at_fold_thresholds'], 3).tolist()} by distance, "
            f"{np.round(unseen.get('turned_flagged_at_fold_thresholds', []), 3).tolist()} as turned"
        )
        meta = replace(meta, temperature=float(cv["temperature"]))
    session = make_session(proto.SerializeToString(), "cpu")
    paths = {
        name: [args.data / p for p in split.filter(split=name)["path"]] for name in ("train", "val", "test")
    }
    train = paths["train"]
    rows = reference_rows(len(train))
    turns = QUARTER_TURNS if args.orientation else (0,)
    by_turn, train_stats = pooled_features(session, [train[i] for i in rows], meta, turns=turns)
    reference = by_turn[0]
    if len(reference) != len(rows):
        raise SystemExit(f"error: {len(rows) - len(reference)} reference images could not be read")
    val = pooled_features(session, paths["val"], meta)[0][0] if paths["val"] else None
    rate = PASS_RATE if args.pass_rate is None else args.pass_rate
    rate_source = "default rate" if args.pass_rate is None else "--pass-rate"
    if args.calibration_from is not None:
        rate_source = held_out_rate_source(args.calibration_from.name)
    if args.pass_rate_from is not None:
        selection = read_metadata(args.pass_rate_from).ood
        if selection is None:
            raise SystemExit(f"error: {args.pass_rate_from} has no out-of-distribution reference set")
        rate, rate_source = leave_one_out_pass_rate(selection), f"the rate of {args.pass_rate_from.name}"
    floor, ceiling = image_limits([train_stats])
    spec = replace(
        fit_ood(reference, val, args.k, loo_pass_rate=rate, rate_source=rate_source),
        detail=floor,
        border=ceiling,
    )
    print(
        f"reference {len(spec.reference)} images, k {spec.k}, threshold {spec.threshold:.4f} ({spec.source})"
    )
    if args.orientation:
        train_rows = split.filter(split="train")
        groups = (
            train_rows["group"].to_numpy()[rows] if "group" in train_rows.columns else np.arange(len(rows))
        )
        probe = fit_orientation([normalised(x) for x in by_turn], groups)
        if turned_threshold is not None:
            probe = replace(
                probe,
                threshold=turned_threshold,
                source=f"{probe.source}; threshold from the out-of-fold turned scores of {args.calibration_from}",
            )
        spec = replace(spec, orientation=probe)
        print(f"orientation probe: threshold {probe.threshold:.4f} ({probe.source})")
    if paths["test"]:
        test, (test_detail, test_border) = pooled_features(session, paths["test"], meta, turns=turns)
        scores = knn_distance(normalised(test[0]), spec.reference, spec.k)
        print(
            f"test images flagged by feature distance: {(scores > spec.threshold).mean():.3f} of {len(scores)}; "
            f"by low detail: {(test_detail < floor.threshold).mean():.3f}; by bright border: "
            f"{(test_border > ceiling.threshold).mean():.3f}"
        )
        if spec.orientation is not None:
            probe = spec.orientation
            upright = probe.turned_scores(normalised(test[0])) > probe.threshold
            turned = np.concatenate([probe.turned_scores(normalised(x)) for x in test[1:]]) > probe.threshold
            either = upright | (scores > spec.threshold)
            print(
                f"test images flagged as turned: upright {upright.mean():.3f}, turned 90/180/270 "
                f"{turned.mean():.3f}; by either check (upright): {either.mean():.3f}"
            )
    write_with_metadata(proto, replace(meta, ood=spec), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
