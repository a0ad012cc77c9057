"""Ray engine against the local scorer on this machine: images/s with 1 and 2 actors, medians of --repeats runs
on the same files, and the driver's peak memory over a run. Prints a Markdown table (docs/scale-out.md).

    python benchmarks/scale_out.py --data ../shared/data/brain-mri-44c --images 1024 --repeats 3
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_util import bench_parser, subset_folder  # noqa: E402

from mri44.discover import find_images  # noqa: E402
from mri44.readers import list_items  # noqa: E402
from mri44.samples import spread  # noqa: E402
from mri44.stages.score.backends import onnx_backend  # noqa: E402
from mri44.stages.score.pipeline import score_items  # noqa: E402


def main() -> None:
    parser = bench_parser(__doc__, images=1024)
    parser.add_argument("--model", type=Path, default=REPO / "models/mri44-resnet18.onnx")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    import ray

    from mri44.stages.score.ray_engine import score_with_ray

    files = spread(find_images(args.data), args.images)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = subset_folder(files, args.data, len(files), Path(tmp) / "in")
        listed = find_images(folder)
        backend = onnx_backend(args.model, "cpu")
        local = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            score_items(
                backend,
                folder,
                list_items(listed),
                batch_size=args.batch_size,
                workers=os.cpu_count() or 1,
                progress=False,
            )
            local.append(len(listed) / (time.perf_counter() - t0))
        rows.append(("local scorer (in process)", statistics.median(local)))
        t0 = time.perf_counter()
        ray.init(
            num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False
        )
        rows.append(
            (
                f"(ray.init of a local {os.cpu_count()}-CPU instance: {time.perf_counter() - t0:.1f} s, not counted)",
                float("nan"),
            )
        )
        for actors in (1, 2):
            rates = []
            for r in range(args.repeats + 1):  # the first run warms the actors' imports up and is not counted
                out = Path(tmp) / f"ray-{actors}-{r}"
                t0 = time.perf_counter()
                score_with_ray(
                    str(folder),
                    out,
                    args.model,
                    actors=actors,
                    batch_size=args.batch_size,
                    max_pixels=50_000_000,
                )
                if r:
                    rates.append(len(listed) / (time.perf_counter() - t0))
            rows.append((f"Ray engine, {actors} actor(s), parts streamed to disk", statistics.median(rates)))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{len(files)} images, {os.cpu_count()} cores, model {args.model.name}, batch {args.batch_size}, medians of {args.repeats}"
    )
    print("\n| engine | images/s |\n| --- | ---: |")
    for name, rate in rows:
        print(f"| {name} | {'' if rate != rate else f'{rate:.1f}'} |")
    local_rate = rows[0][1]
    for name, rate in rows[2:]:
        print(f"\n{name}: {rate / local_rate:.2f} of the local scorer")
    print(f"\ndriver peak RSS over the whole benchmark: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
