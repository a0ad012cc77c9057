"""What the out-of-distribution check costs end to end, and how close the scorer comes to the model's own speed:
the scorer's pipeline (decode, model, rows) on the same real images with --ood on and off, alternating, for each
shipped model, beside the model alone on ready batches of the same images (batch 32, logits only: the model's
forward-pass rate, issue 31's yardstick); prints a Markdown table of medians and ratios.

    python benchmarks/ood_cost.py --data ../shared/data/brain-mri-44c --images 256 --repeats 3
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_util import bench_parser, median_rate  # noqa: E402

from mri44.discover import find_images  # noqa: E402
from mri44.limits import Limits  # noqa: E402
from mri44.preprocess import normalize  # noqa: E402
from mri44.readers import list_items  # noqa: E402
from mri44.samples import spread  # noqa: E402
from mri44.stages.score.backends import onnx_backend  # noqa: E402
from mri44.stages.score.pipeline import decoded_batches, score_items  # noqa: E402
from mri44.stages.score.run import resolve_model  # noqa: E402


def main() -> None:
    parser = bench_parser(__doc__, images=256)
    parser.add_argument(
        "--models",
        nargs="+",
        default=["default", "int8", "resnet50"],
        help="shipped model names (mri44.models.SHIPPED) or ONNX files",
    )
    args = parser.parse_args()
    paths = spread(find_images(args.data), args.images)
    print(f"{len(paths)} images from {args.data}, batch 32, 2 decoding threads, medians of {args.repeats}\n")
    print(
        "| model | model only (img/s) | --ood off (img/s) | --ood on (img/s) | on / off "
        "| end to end (on) / model only |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name in args.models:
        backend = onnx_backend(resolve_model(name), "cpu")
        spec = backend.meta.preprocess
        ready = [
            normalize(pixels, spec)
            for _, pixels, _, _ in decoded_batches(list_items(paths), spec, 32, 2, 64, Limits())
            if pixels is not None and len(pixels) == 32
        ]
        alone = median_rate(lambda b=backend, r=ready: [b.run(x) for x in r], 32 * len(ready), args.repeats)
        score_items(backend, args.data, list_items(paths[:32]), progress=False)  # warm-up
        rates: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.repeats):
            for ood in (False, True):
                t0 = time.perf_counter()
                score_items(backend, args.data, list_items(paths), progress=False, ood=ood)
                rates[ood].append(len(paths) / (time.perf_counter() - t0))
        off, on = statistics.median(rates[False]), statistics.median(rates[True])
        print(f"| {name} | {alone:.1f} | {off:.1f} | {on:.1f} | {on / off:.3f} | {on / alone:.3f} |")


if __name__ == "__main__":
    main()
