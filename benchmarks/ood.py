"""Out-of-distribution benchmark (issue 23): how well each candidate score separates held-out brain MRI slices
from images the model has no business answering, per family of such images.

    python benchmarks/ood.py MODEL.onnx --data ../shared/data/brain-mri-44c --split docs/runs/split-v2.csv \\
        [--out docs/ood] [--k 1 5 10 20]

MODEL must carry the `features` output and an mri44.ood reference set (onnx-export of a run trained since
issue 23, or scripts/fit_ood.py), fitted on the split's train and val parts; the in-distribution images are the
split's test part, which neither the model nor its threshold saw. Families, all made from material on this machine
(nothing is downloaded): synthetic images (noise, gradients, text, blank and saturated frames, checkerboards);
pydicom's bundled test files (CT, MR, US, RT and others, as the DICOM reader decodes them); scikit-image's sample
photographs when it is installed; and our own test slices altered (rotated 90 degrees, inverted, a quarter
cropped and enlarged, downscaled to 32 px and back). Scores: maximum softmax probability (1 - MSP), energy
(-logsumexp of the logits), and the k-NN cosine distance of mri44.ood for several k. Prints a Markdown table
(AUROC, FPR at 95 % TPR, and the share flagged at the model's own threshold) and writes it with a histogram.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_util import model_batches  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from mri44.detail import input_statistics  # noqa: E402
from mri44.imageio import ImageDecodeError  # noqa: E402
from mri44.onnx_meta import FEATURES_NAME, INPUT_NAME, OUTPUT_NAME, read_metadata  # noqa: E402
from mri44.ood import OodSpec, knn_distance, normalised, pooled  # noqa: E402
from mri44.readers import read_image  # noqa: E402
from mri44.run_folder import read_split  # noqa: E402
from mri44.runtime import make_session  # noqa: E402


def synthetic(rng: np.random.Generator) -> list[np.ndarray]:
    images = []
    for size in (96, 256, 512):
        images += [
            rng.integers(0, 256, (size, size), dtype=np.uint8),
            rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        ]
        images.append(np.clip(rng.normal(128, 40, (size, size)), 0, 255).astype(np.uint8))
        ramp = np.linspace(0, 255, size, dtype=np.float32)
        images += [
            np.tile(ramp, (size, 1)).astype(np.uint8),
            np.tile(ramp[:, None], (1, size)).astype(np.uint8),
        ]
        yy, xx = np.mgrid[:size, :size]
        images.append((255 * np.hypot(yy - size / 2, xx - size / 2) / (size * 0.71)).astype(np.uint8))
        page = np.full((size, size), 255, np.uint8)
        for row in range(12, size, 14):
            cv2.putText(page, "Patient report: findings", (4, row), cv2.FONT_HERSHEY_PLAIN, size / 300, 0, 1)
        images += [page, np.zeros((size, size), np.uint8), np.full((size, size), 255, np.uint8)]
        images.append((((yy // (size // 8)) + (xx // (size // 8))) % 2 * 255).astype(np.uint8))
    return images


def pydicom_test_paths() -> list[Path]:
    """The DICOM files inside pydicom's own package folder (read from disk: pydicom's get_testdata_files would
    try to download its larger ones); none without pydicom."""
    try:
        import pydicom.data
    except ImportError:
        return []
    return sorted((Path(pydicom.data.__file__).parent / "test_files").rglob("*.dcm"))


def pydicom_files() -> list[np.ndarray]:
    images = []
    for path in pydicom_test_paths():
        try:
            images.append(read_image(path))
        except (ImageDecodeError, OSError):
            continue  # compressed files without a codec, non-image objects: not images we can score
    return images


def photographs() -> list[np.ndarray]:
    try:
        from skimage import data
    except ImportError:
        return []
    names = ("astronaut", "camera", "coffee", "coins", "moon", "page", "text", "rocket", "chelsea", "horse")
    out = []
    for name in names:
        try:
            out.append(np.asarray(getattr(data, name)()).astype(np.uint8) * (255 if name == "horse" else 1))
        except Exception:  # an image that needs a download (not here): left out
            continue
    return out


def altered(slices: list[np.ndarray]) -> dict[str, list[np.ndarray]]:
    def crop(image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        return cv2.resize(image[: h // 2, : w // 2], (w, h), interpolation=cv2.INTER_LINEAR)

    def shrink(image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        return cv2.resize(
            cv2.resize(image, (32, 32), interpolation=cv2.INTER_AREA), (w, h), interpolation=cv2.INTER_LINEAR
        )

    return {
        "MRI rotated 90": [np.ascontiguousarray(np.rot90(s)) for s in slices],
        "MRI rotated 180": [np.ascontiguousarray(np.rot90(s, 2)) for s in slices],
        "MRI inverted": [255 - s for s in slices],
        "MRI quarter, enlarged": [crop(s) for s in slices],
        "MRI at 32 px": [shrink(s) for s in slices],
    }


def run_model(
    session, meta, images: list[np.ndarray], batch: int = 32
) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """(logits, pooled features, (detail, border) scores) of decoded images."""
    logits, feats, stats = [], [], []
    for x in model_batches(images, meta.preprocess, batch):
        out, features = session.run([OUTPUT_NAME, FEATURES_NAME], {INPUT_NAME: x})
        logits.append(out)
        feats.append(pooled(features))
        stats.append(input_statistics(x))
    detail, border = (np.concatenate(parts) for parts in zip(*stats, strict=True))
    return np.concatenate(logits), np.concatenate(feats), (detail, border)


def candidate_scores(
    logits: np.ndarray,
    feats: np.ndarray,
    statistics: tuple[np.ndarray, np.ndarray],
    spec: OodSpec,
    ks: list[int],
    temperature: float,
) -> dict[str, np.ndarray]:
    z = logits / temperature
    z = z - z.max(1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    scores = {
        "1 - max softmax": 1.0 - probs.max(1),
        "energy": -np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) - logits.max(1),
    }
    for k in ks:
        scores[f"kNN k={k}"] = knn_distance(normalised(feats), spec.reference, k)
    if spec.orientation is not None:
        scores[TURNED] = spec.orientation.turned_scores(normalised(feats))
    scores[FLAT] = -statistics[0]  # higher = less fine detail
    scores[BRIGHT] = statistics[1]
    return scores


TURNED = "turned (orientation probe)"
FLAT = "low detail (image statistic)"
BRIGHT = "bright border (image statistic)"
SHIPPED = "shipped flag (kNN, turned, low detail or bright border)"


def flagged(scores: dict[str, np.ndarray], spec: OodSpec, chosen: str) -> dict[str, np.ndarray]:
    """Per score with a threshold in the model, which images it flags; and the shipped `ood` flag (either)."""
    out = {chosen: scores[chosen] > spec.threshold}
    if spec.orientation is not None:
        out[TURNED] = scores[TURNED] > spec.orientation.threshold
    if spec.detail is not None:
        out[FLAT] = -scores[FLAT] < spec.detail.threshold
    if spec.border is not None:
        out[BRIGHT] = scores[BRIGHT] > spec.border.threshold
    if len(out) > 1:
        out[SHIPPED] = np.logical_or.reduce(list(out.values()))
    return out


def fpr_at_95_tpr(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    cut = np.quantile(ood_scores, 0.05)  # 95 % of the OOD images score above it
    return float((id_scores >= cut).mean())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=None, help="folder for ood.md and ood.png")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 5, 10, 20])
    args = parser.parse_args()
    meta = read_metadata(args.model)
    if meta.ood is None:
        raise SystemExit("error: the model has no out-of-distribution reference set (scripts/fit_ood.py)")
    session = make_session(args.model, "cpu")
    split = read_split(args.split)
    test = [read_image(args.data / p) for p in split.filter(split="test")["path"]]
    families = {
        "synthetic": synthetic(np.random.default_rng(0)),
        "pydicom test files": pydicom_files(),
        "photographs": photographs(),
    }
    families |= altered(test[:: max(1, len(test) // 150)])
    families = {name: images for name, images in families.items() if images}

    t0 = time.perf_counter()
    id_logits, id_feats, id_stats = run_model(session, meta, test)
    forward_s = (time.perf_counter() - t0) / len(test)
    t0 = time.perf_counter()
    knn_distance(normalised(id_feats), meta.ood.reference, meta.ood.k)
    knn_s = (time.perf_counter() - t0) / len(test)
    id_scores = candidate_scores(id_logits, id_feats, id_stats, meta.ood, args.k, meta.temperature)
    id_flags = flagged(id_scores, meta.ood, f"kNN k={meta.ood.k}")
    rows, chosen = [], f"kNN k={meta.ood.k}"
    per_family_scores = {}
    for name, images in families.items():
        logits, feats, stats = run_model(session, meta, images)
        scores = candidate_scores(logits, feats, stats, meta.ood, args.k, meta.temperature)
        flags = flagged(scores, meta.ood, chosen)
        per_family_scores[name] = scores[chosen]
        for method, values in scores.items():
            labels = np.r_[np.zeros(len(id_scores[method])), np.ones(len(values))]
            rows.append(
                {
                    "family": name,
                    "images": len(images),
                    "score": method,
                    "AUROC": roc_auc_score(labels, np.r_[id_scores[method], values]),
                    "FPR@95TPR": fpr_at_95_tpr(id_scores[method], values),
                    "flagged": float(flags[method].mean()) if method in flags else None,
                }
            )
        if SHIPPED in flags:
            rows.append(
                {"family": name, "images": len(images), "score": SHIPPED, "AUROC": None, "FPR@95TPR": None,
                 "flagged": float(flags[SHIPPED].mean())}
            )  # fmt: skip
    table = pl.DataFrame(rows)
    id_flagged = float(id_flags.get(SHIPPED, id_flags[chosen]).mean())
    lines = [
        f"Model {args.model.name} ({meta.arch}, {meta.preprocess.size} px); reference {len(meta.ood.reference)} training images, "
        f"k = {meta.ood.k}, threshold {meta.ood.threshold:.4f} ({meta.ood.source}).",
        f"In-distribution: the {len(test)} test images of {args.split.name}; {id_flagged:.1%} of them flagged by the shipped rule.",
        f"Cost per image on this CPU: model forward {1000 * forward_s:.1f} ms, k-NN score {1000 * knn_s:.3f} ms.",
        "",
        "| family | images | score | AUROC | FPR@95TPR | flagged at threshold |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for r in table.iter_rows(named=True):
        share = "" if r["flagged"] is None else f"{r['flagged']:.3f}"
        auroc, fpr = ("", "") if r["AUROC"] is None else (f"{r['AUROC']:.3f}", f"{r['FPR@95TPR']:.3f}")
        lines.append(f"| {r['family']} | {r['images']} | {r['score']} | {auroc} | {fpr} | {share} |")
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "ood-table.md").write_text(text + "\n")
        histogram(id_scores[chosen], per_family_scores, meta.ood.threshold, chosen, args.out / "ood.png")


def histogram(
    id_scores: np.ndarray, families: dict[str, np.ndarray], threshold: float, method: str, out: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    bins = np.linspace(
        0, max(float(np.max([v.max() for v in families.values()])), float(id_scores.max())) * 1.02, 50
    )
    ax.hist(id_scores, bins=bins, density=True, alpha=0.6, label="brain MRI test slices")
    for name, values in families.items():
        ax.hist(values, bins=bins, density=True, histtype="step", lw=1.4, label=name)
    ax.axvline(threshold, color="k", ls="--", lw=1, label="model's threshold")
    ax.set_xlabel(f"ood_score ({method}: 1 - cosine similarity)")
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main()
