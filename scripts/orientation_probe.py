"""Can a model tell a turned slice from an upright one? A probe for issue 32's weakest family (rotations).

    python scripts/orientation_probe.py MODEL.onnx --data DATA --split RUN/split.parquet [--images 1200]

The out-of-distribution score (nearest training image in feature space) flags only 26-36 % of slices turned 90-180
degrees (docs/ood.md): a turned brain still looks like a brain. But the network is not rotation-invariant, so its
pooled last-stage features may say which way up a slice is. This fits a 4-way linear probe (logistic regression
on the L2-normalised pooled features; upright, 90, 180, 270 degrees) on the images of half the near-duplicate
groups and measures it on the other half: orientation accuracy, the AUROC of P(not upright) between upright and
turned slices, and the share of turned slices flagged where 1 % and 3 % of upright unseen slices are; small turns
(15-45 degrees, which the probe never saw) are reported alongside. Prints one table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import polars as pl
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mri44.onnx_meta import FEATURES_NAME, INPUT_NAME, ModelMetadata  # noqa: E402
from mri44.ood import normalised  # noqa: E402
from mri44.preprocess import load_pixels, normalize  # noqa: E402
from mri44.runtime import make_session  # noqa: E402
from mri44.stages.export.onnx_export import add_feature_output  # noqa: E402

TURNS = (0, 1, 2, 3)  # quarter turns the probe learns
SMALL = (15, 30, 45)  # degrees, for evaluation only


def tilted(pixels: np.ndarray, degrees: float) -> np.ndarray:
    size = pixels.shape[0]
    matrix = cv2.getRotationMatrix2D((size / 2, size / 2), degrees, 1.0)
    out = cv2.warpAffine(pixels, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=0)
    return out.reshape(pixels.shape)


def features(session, pixels: list[np.ndarray], meta: ModelMetadata, batch: int = 32) -> np.ndarray:
    out = []
    for start in range(0, len(pixels), batch):
        x = normalize(np.stack(pixels[start : start + batch]), meta.preprocess)
        (fmap,) = session.run([FEATURES_NAME], {INPUT_NAME: x})
        out.append(fmap.mean((2, 3)))
    return normalised(np.concatenate(out))


def flagged_at(upright: np.ndarray, turned: np.ndarray, upright_rate: float) -> float:
    """Share of turned scores above the threshold that flags `upright_rate` of the upright ones."""
    return float((turned > np.quantile(upright, 1 - upright_rate)).mean())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument(
        "--split", type=Path, required=True, help="a run's split.parquet (path and group columns)"
    )
    parser.add_argument("--images", type=int, default=1200)
    args = parser.parse_args()
    proto = onnx.load(str(args.model))
    meta = ModelMetadata.from_proto(proto, str(args.model))
    if FEATURES_NAME not in [o.name for o in proto.graph.output]:
        proto = add_feature_output(proto)
    session = make_session(proto.SerializeToString(), "cpu")
    rows = pl.read_parquet(args.split, columns=["path", "group"])
    rows = rows[np.linspace(0, rows.height - 1, min(args.images, rows.height)).astype(int)]
    fit = (rows["group"].to_numpy() % 2) == 0  # half the groups fit the probe, the other half measure it
    upright = [load_pixels(args.data / p, meta.preprocess) for p in rows["path"]]
    feats = {
        k: features(session, [np.ascontiguousarray(np.rot90(p, k)) for p in upright], meta) for k in TURNS
    }
    small = {d: features(session, [tilted(p, d) for p in upright], meta) for d in SMALL}
    x_fit = np.concatenate([feats[k][fit] for k in TURNS])
    y_fit = np.repeat(TURNS, fit.sum())
    probe = LogisticRegression(C=10.0, max_iter=2000).fit(x_fit, y_fit)

    def not_upright(x: np.ndarray) -> np.ndarray:
        return 1.0 - probe.predict_proba(x)[:, 0]

    test = ~fit
    x_test = np.concatenate([feats[k][test] for k in TURNS])
    y_test = np.repeat(TURNS, test.sum())
    accuracy = float((probe.predict(x_test) == y_test).mean())
    base = not_upright(feats[0][test])
    print(
        f"{args.model.name}: {fit.sum()} fit / {test.sum()} test images (by group); 4-way accuracy {accuracy:.3f}"
    )
    print("| family | images | AUROC | flagged at 1 % upright | flagged at 3 % upright |")
    print("| --- | ---: | ---: | ---: | ---: |")
    families = {f"turned {90 * k}": feats[k][test] for k in TURNS[1:]} | {
        f"tilted {d}": small[d][test] for d in SMALL
    }
    for name, x in families.items():
        scores = not_upright(x)
        auroc = roc_auc_score(np.r_[np.zeros(len(base)), np.ones(len(scores))], np.r_[base, scores])
        print(
            f"| {name} | {len(scores)} | {auroc:.3f} | {flagged_at(base, scores, 0.01):.1%} | "
            f"{flagged_at(base, scores, 0.03):.1%} |"
        )


if __name__ == "__main__":
    main()
