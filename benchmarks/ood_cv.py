"""Out-of-distribution detectors measured on unseen brain MRI, fold by fold (issue 32, ask 1).

    python benchmarks/ood_cv.py ~/mri44-runs/cv5-t50 --data ../shared/data/brain-mri-44c [--out docs/ood-cv]

RUN is a cross-validation folder of the cached-feature recipe (`python -m train --folds 5 --recipe cached
--freeze-through layer3`): its cache holds every image's frozen layer3 map, so each fold's model gives the
layer3 and layer4 features of the images it never trained on at the cost of its layer4 alone. The
in-distribution images are each fold's own held-out fold (3,811 unseen images in all, not a 15 % test part); the
threshold of every detector is the score that lets 97 % of them through (3 % flagged, the issue's ceiling), so a
family's "flagged" column is its detection rate at the false-alarm rate a reader would live with. The other
families are those of benchmarks/ood.py (synthetic frames, pydicom's test files, photographs, altered held-out
slices) and the ones issue 32 asked for: rotations of every angle, CT windows, colour photographs, screenshots.

Detectors, all k = 1 cosine nearest-neighbour distances to (up to) 2,048 training images of the fold, as
mri44.ood ships them: layer4 (the shipped score), layer3, and both (the mean of the two cosines). Prints a
Markdown table (mean over folds) and writes it as CSV; first, how many unseen slices the thresholds that need no
unseen images (leave-one-out, leave-group-out on the training reference) would flag.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import polars as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_util import model_batches  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from mri44.checkpoint import Checkpoint  # noqa: E402
from mri44.ood import MAX_REFERENCE, knn_distance, normalised, reference_rows  # noqa: E402
from mri44.preprocess import PreprocessSpec  # noqa: E402
from mri44.readers import read_image  # noqa: E402
from mri44.run_folder import RunFolder  # noqa: E402

PASSING = 0.97  # in-distribution images let through: the threshold of every detector, per fold


def _benchmark_families():  # benchmarks/ood.py's family builders, one definition of each
    spec = importlib.util.spec_from_file_location("ood_benchmark", Path(__file__).with_name("ood.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rotated(image: np.ndarray, angle: float) -> np.ndarray:
    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    return cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)


def ct_windows(bench) -> list[np.ndarray]:
    """pydicom's CT test files in the windows a radiologist reads CT with (brain, subdural, bone, lung)."""
    paths = bench.pydicom_test_paths()  # none without pydicom
    if not paths:
        return []
    import pydicom

    images = []
    for path in paths:
        try:
            ds = pydicom.dcmread(path, force=True)
            if ds.get("Modality") != "CT":
                continue
            pixels = ds.pixel_array.astype(np.float32)
        except Exception:  # no codec, no pixels: pydicom cannot give this one
            continue
        hu = pixels * float(ds.get("RescaleSlope", 1) or 1) + float(ds.get("RescaleIntercept", 0) or 0)
        frames = hu if hu.ndim == 3 else hu[None]
        for frame in frames[:4]:
            for level, width in ((40, 80), (80, 200), (600, 2800), (-600, 1500)):
                low = level - width / 2
                images.append((np.clip((frame - low) / width, 0, 1) * 255).astype(np.uint8))
    return images


def screenshots(slices: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """A viewer's window: grey panels, lines of text, a small slice inset among them."""
    images = []
    for image in slices:
        page = np.full((600, 800, 3), 235, np.uint8)
        cv2.rectangle(page, (0, 0), (800, 40), (60, 60, 70), -1)
        cv2.putText(
            page, "PACS Viewer - Study 2026", (10, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 2
        )
        for row in range(80, 580, 26):
            words = " ".join(rng.choice(["findings", "series", "T2", "axial", "report", "mm"], 5))
            cv2.putText(page, words, (420, row), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (20, 20, 20), 1)
        inset = cv2.resize(image if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2RGB), (360, 360))
        page[100:460, 30:390] = inset
        images.append(page)
    return images


def colour_photographs(rng: np.random.Generator) -> list[np.ndarray]:
    """scikit-image's colour samples and crops of them (the grey-converted input still differs from MRI)."""
    try:
        from skimage import data
    except ImportError:
        return []
    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina", "colorwheel"):
        try:
            photo = np.asarray(getattr(data, name)())[..., :3].astype(np.uint8)
        except Exception:  # a sample that needs a download (not here): left out
            continue
        h, w = photo.shape[:2]
        out.append(photo)
        for _ in range(3):
            y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
            out.append(np.ascontiguousarray(photo[y : y + h // 2, x : x + w // 2]))
    return out


def families(bench, slices: list[np.ndarray], rng: np.random.Generator) -> dict[str, list[np.ndarray]]:
    out = {
        "synthetic frames": bench.synthetic(rng),
        "pydicom test files": bench.pydicom_files(),
        "photographs (grey and colour)": bench.photographs() + colour_photographs(rng),
        "CT windows": ct_windows(bench),
        "screenshots with a slice inset": screenshots(slices[:20], rng),
    }
    out |= bench.altered(slices)
    for angle in (15, 30, 45, 135, 180):
        out[f"MRI rotated {angle}"] = [rotated(s, angle) for s in slices]
    return {name: images for name, images in out.items() if images}


def layer3_pooled(cache: np.ndarray, rows: np.ndarray, batch: int = 256) -> np.ndarray:
    """(N, 1024) spatial means of the cached layer3 maps (view 0, the plain image) of the given rows."""
    return np.concatenate(
        [cache[0, rows[i : i + batch]].astype(np.float32).mean((2, 3)) for i in range(0, len(rows), batch)]
    )


@torch.inference_mode()
def late_features(model, maps: np.ndarray, batch: int = 64) -> np.ndarray:
    """(N, 2048) pooled layer4 features from layer3 maps (N, 1024, 14, 14)."""
    out = []
    for start in range(0, len(maps), batch):
        x = torch.from_numpy(np.ascontiguousarray(maps[start : start + batch], dtype=np.float32))
        out.append(model.layer4(x).mean((2, 3)).numpy())
    return np.concatenate(out)


@torch.inference_mode()
def image_features(model, spec: PreprocessSpec, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(pooled layer3, pooled layer4) of decoded images, preprocessed exactly as the scorer does."""
    l3s, l4s = [], []
    for x in model_batches(images, spec):
        h = torch.from_numpy(x)
        h = model.maxpool(model.relu(model.bn1(model.conv1(h))))
        l3 = model.layer3(model.layer2(model.layer1(h)))
        l3s.append(l3.mean((2, 3)).numpy())
        l4s.append(model.layer4(l3).mean((2, 3)).numpy())
    return np.concatenate(l3s), np.concatenate(l4s)


def detector_scores(
    l3: np.ndarray, l4: np.ndarray, ref3: np.ndarray, ref4: np.ndarray
) -> dict[str, np.ndarray]:
    s3 = knn_distance(normalised(l3), ref3, 1)
    s4 = knn_distance(normalised(l4), ref4, 1)
    both = np.hstack([normalised(l3), normalised(l4)]) / np.sqrt(2)
    return {
        "layer4 (shipped)": s4,
        "layer3": s3,
        "layer3 + layer4": knn_distance(both, np.hstack([ref3, ref4]) / np.sqrt(2), 1),
    }


def threshold_rules(run: Path, folds: pl.DataFrame) -> str:
    """How many unseen slices each way of setting the threshold without unseen images flags, fold by fold: the
    95 % quantile of the reference's leave-one-out scores (the rule all-data fits used), and the 97 % quantile of
    leave-group-out scores (each reference image's nearest neighbour outside its near-duplicate group)."""
    group_of = dict(zip(folds["path"], folds["group"], strict=True))
    lines = ["| fold | leave-one-out 95 % | leave-group-out 97 % | threshold that lets 97 % of unseen pass |"]
    lines.append("| ---: | ---: | ---: | ---: |")
    for fold in sorted(folds["fold"].unique().to_list()):
        spec = Checkpoint.load(RunFolder(run).fold(fold).best).ood
        if spec is None:
            raise SystemExit(f"{run} fold {fold} carries no out-of-distribution reference")
        split = pl.read_parquet(RunFolder(run).fold(fold).split)
        train = split.filter(split="train")["path"].to_list()
        groups = np.array([group_of[train[i]] for i in reference_rows(len(train))])
        reference = spec.reference.astype(np.float32)
        sims = reference @ reference.T
        loo = knn_distance(reference, reference, 1, skip_self=True)
        sims[
            groups[:, None] == groups[None, :]
        ] = -np.inf  # the image's whole group left out, itself included
        lgo = np.clip(1.0 - sims.max(1), 0.0, 2.0)
        unseen = pl.read_parquet(RunFolder(run).fold(fold).predictions("test"))["ood_score"].to_numpy()
        flagged = [(unseen > np.quantile(scores, q)).mean() for scores, q in ((loo, 0.95), (lgo, PASSING))]
        lines.append(f"| {fold} | {flagged[0]:.1%} | {flagged[1]:.1%} | {np.quantile(unseen, PASSING):.4f} |")
    return "Unseen slices flagged by thresholds set on the training images alone:\n\n" + "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path, help="cross-validation folder of the cached-feature recipe")
    parser.add_argument("--data", type=Path, required=True, help="the image folder the run was trained on")
    parser.add_argument("--per-fold", type=int, default=40, help="held-out slices altered per fold")
    parser.add_argument("--out", type=Path, default=None, help="folder for ood_cv.csv")
    parser.add_argument("--rules-only", action="store_true", help="only the threshold rules' table (seconds)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    bench = _benchmark_families()
    folds = pl.read_parquet(RunFolder(args.run).folds)
    print(threshold_rules(args.run, folds) + "\n")
    if args.rules_only:
        return
    manifests = sorted((args.run / "cache").glob("manifest-*.parquet"), key=lambda p: p.stat().st_mtime)
    order = pl.read_parquet(manifests[-1], columns=["path"])["path"].to_list()
    cache_file = next((args.run / "cache").glob("features-*-layer3-*.npy"))
    cache = np.load(cache_file, mmap_mode="r")  # (views, N, 1024, 14, 14) float16
    assert cache.shape[1] == len(order) == folds.height, "cache rows and the folds' images differ"
    fold_of = dict(zip(folds["path"], folds["fold"], strict=True))
    fold_ids = np.array([fold_of[p] for p in order])
    t0 = time.perf_counter()
    l3_all = layer3_pooled(cache, np.arange(len(order)))
    print(f"layer3 pooled for {len(order)} images: {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    rng = np.random.default_rng(0)
    rows = []
    for fold in sorted(set(fold_ids.tolist())):
        ckpt = Checkpoint.load(RunFolder(args.run).fold(fold).best)
        model, spec, shipped = ckpt.model(), ckpt.preprocess, ckpt.ood
        if shipped is None:
            raise SystemExit(f"{args.run} fold {fold} carries no out-of-distribution reference")
        train_rows, test_rows = np.flatnonzero(fold_ids != fold), np.flatnonzero(fold_ids == fold)
        keep = train_rows[
            np.linspace(0, len(train_rows) - 1, min(MAX_REFERENCE, len(train_rows))).astype(int)
        ]
        ref3 = normalised(l3_all[keep])
        ref4 = shipped.reference.astype(
            np.float32
        )  # the fold's own layer4 reference, as the model carries it
        t0 = time.perf_counter()
        test_l4 = late_features(model, cache[0, test_rows])
        id_scores = detector_scores(l3_all[test_rows], test_l4, ref3, ref4)
        picked = rng.choice(test_rows, size=min(args.per_fold, len(test_rows)), replace=False)
        slices = [read_image(args.data / order[i]) for i in picked]
        fams = families(bench, slices, rng)
        for name, images in fams.items():
            scores = detector_scores(*image_features(model, spec, images), ref3, ref4)
            for detector, ood in scores.items():
                inside = id_scores[detector]
                threshold = float(np.quantile(inside, PASSING))
                labels = np.r_[np.zeros(len(inside)), np.ones(len(ood))]
                rows.append(
                    {
                        "fold": fold,
                        "family": name,
                        "images": len(images),
                        "detector": detector,
                        "auroc": float(roc_auc_score(labels, np.r_[inside, ood])),
                        "flagged": float((ood > threshold).mean()),
                        "flagged_at_shipped_rule": float((ood > shipped.threshold).mean())
                        if detector == "layer4 (shipped)"
                        else None,
                        "unseen_mri_flagged_at_shipped_rule": float((inside > shipped.threshold).mean())
                        if detector == "layer4 (shipped)"
                        else None,
                    }
                )
        print(f"fold {fold}: {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    table = pl.DataFrame(rows)
    summary = (
        table.group_by("family", "detector", maintain_order=True)
        .agg(pl.col("images").sum(), pl.col("auroc").mean(), pl.col("flagged").mean())
        .sort("family", "detector")
    )
    print(f"Detection at {1 - PASSING:.0%} of unseen MRI flagged (each fold's threshold), mean of folds:\n")
    print("| family | images | detector | AUROC | flagged |")
    print("| --- | ---: | --- | ---: | ---: |")
    for r in summary.iter_rows(named=True):
        print(f"| {r['family']} | {r['images']} | {r['detector']} | {r['auroc']:.3f} | {r['flagged']:.1%} |")
    shipped_rule = table.drop_nulls("flagged_at_shipped_rule")
    print(
        "\nAt each fold's own shipped threshold (95 % leave-one-out pass rate on its training images): unseen MRI "
        f"flagged {shipped_rule['unseen_mri_flagged_at_shipped_rule'].mean():.1%}"
    )
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        table.write_csv(args.out / "ood_cv.csv")


if __name__ == "__main__":
    main()
