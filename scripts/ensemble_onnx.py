"""Two exported models as one graph that scores their geometric mean (mri44/ensemble.py), checked against the
members scored separately before anything is written: the graph itself (--out) or the recipe that ships in its
place (--recipe, beside the members; mri-score builds the graph from it into the user's cache).

    python scripts/ensemble_onnx.py models/mri44-resnet18.onnx models/mri44-resnet50.onnx \
        --temperature-from ~/mri44-runs/cv5-ens-t50-s18 --images ../shared/data/brain-mri-44c --max-images 1024 \
        --recipe models/mri44-ensemble.json

The first model gives the input, the features and the out-of-distribution check; --temperature-from takes the
temperature fitted on the ensemble's out-of-fold logits (scripts/cv_ensemble.py). Nothing is written unless the
top-1 agreement with the separately scored members reaches --min-agreement.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mri44.discover import find_images  # noqa: E402
from mri44.ensemble import ensemble_onnx, write_recipe  # noqa: E402
from mri44.onnx_meta import write_with_metadata  # noqa: E402
from mri44.run_folder import RunFolder  # noqa: E402
from mri44.samples import spread  # noqa: E402
from mri44.stages.export.ensemble import ensemble_parity  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "first", type=Path, help="the model whose input, features and OOD check the file keeps"
    )
    parser.add_argument("second", type=Path)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--temperature-from", type=Path, help="the ensemble's CV folder (scripts/cv_ensemble.py)"
    )
    source.add_argument("--temperature", type=float)
    parser.add_argument("--images", type=Path, required=True, help="real images for the parity check")
    parser.add_argument("--max-images", type=int, default=256)
    parser.add_argument("--min-agreement", type=float, default=0.98)
    written = parser.add_mutually_exclusive_group(required=True)
    written.add_argument("--out", type=Path, help="write the graph, an ONNX file")
    written.add_argument("--recipe", type=Path, help="write the recipe that ships in the graph's place")
    args = parser.parse_args()
    temperature = args.temperature
    source = f"given: --temperature {temperature}"
    if args.temperature_from is not None:
        cv = json.loads(RunFolder(args.temperature_from).cv_result.read_text())
        temperature = cv["temperature"]
        source = (
            f"fitted on the out-of-fold logits of {args.temperature_from.name} ({cv['images']} images, "
            f"{cv['folds']} grouped folds): ECE {cv['ece_before_temperature']:.3f} -> {cv['ece']:.3f}"
        )
    model, meta = ensemble_onnx(args.first, args.second, temperature)
    parity = ensemble_parity(
        model, meta, (args.first, args.second), spread(find_images(args.images), args.max_images)
    )
    print(
        f"{meta.arch}, temperature {meta.temperature:.4f}: on {parity['images']:.0f} images, top-1 agreement with "
        f"the members scored separately {parity['top1_agreement']:.4f}, largest probability difference "
        f"{parity['max_prob_diff']:.4f}"
    )
    if parity["top1_agreement"] < args.min_agreement:
        raise SystemExit(
            f"error: agreement under {args.min_agreement}: {args.out or args.recipe} not written"
        )
    if args.recipe is not None:
        write_recipe(args.first, args.second, temperature, source, parity, args.recipe)
    else:
        write_with_metadata(model, meta, args.out)
    print(f"wrote {args.out or args.recipe}")


if __name__ == "__main__":
    main()
