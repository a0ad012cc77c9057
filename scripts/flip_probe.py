"""Would test-time flips pay? Scores a split's val and test images plain, mirrored, and with the two
probabilities averaged, and prints accuracy and macro-F1 of each (docs/recipes.md has the answer: no).

    python scripts/flip_probe.py MODEL.onnx SPLIT.csv DATA
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import polars as pl
from sklearn.metrics import accuracy_score, f1_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mri44.calibration import softmax  # noqa: E402
from mri44.preprocess import load_pixels, normalize  # noqa: E402
from mri44.stages.score.backends import open_backend  # noqa: E402


def main(model: Path, split: Path, data: Path, batch: int = 32) -> None:
    backend = open_backend(model, "cpu")
    spec, classes, temperature = backend.meta.preprocess, backend.meta.classes, backend.meta.temperature
    rows = pl.read_csv(split)
    for part in ("val", "test"):
        chosen = rows.filter(split=part)
        paths, labels = chosen["path"].to_list(), chosen["label"].to_list()
        plain, mirrored = [], []
        for start in range(0, len(paths), batch):
            x = np.concatenate(
                [normalize(load_pixels(data / p, spec), spec) for p in paths[start : start + batch]]
            )
            plain.append(softmax(backend.run(x), temperature))
            mirrored.append(softmax(backend.run(np.ascontiguousarray(x[..., ::-1])), temperature))
        p0, p1 = np.concatenate(plain), np.concatenate(mirrored)
        truth = np.array([classes.index(label) for label in labels])
        for name, probs in (("plain", p0), ("mirrored", p1), ("plain+mirrored", (p0 + p1) / 2)):
            pred = probs.argmax(1)
            print(
                f"{model.name} {part} {name}: accuracy {accuracy_score(truth, pred):.4f} "
                f"macro-F1 {f1_score(truth, pred, average='macro'):.4f}"
            )


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
