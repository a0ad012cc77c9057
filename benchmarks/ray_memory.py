"""The Ray engine's driver memory against the number of images: run once per size, each in a fresh process.

    python benchmarks/ray_memory.py 300 && python benchmarks/ray_memory.py 2400

Prints the driver's RSS before scoring and its peak (VmHWM) after scoring N images (the data set's files
repeated as links in class folders); a streaming driver's peak does not grow with N.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def status(key: str) -> float:
    return int(re.search(rf"{key}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024  # type: ignore[union-attr]


def main() -> None:
    import ray
    from bench_util import subset_folder

    from mri44.discover import find_images
    from mri44.stages.score.ray_engine import score_with_ray

    n = int(sys.argv[1])
    data = Path(sys.argv[2]) if len(sys.argv) > 2 else REPO.parent / "shared/data/brain-mri-44c"
    files = find_images(data)
    with tempfile.TemporaryDirectory() as tmp:
        folder = subset_folder(files, data, n, Path(tmp) / "in")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        before, t0 = status("VmRSS"), time.perf_counter()
        written, _, _ = score_with_ray(
            str(folder), Path(tmp) / "out", REPO / "models/mri44-resnet18.onnx", max_pixels=50_000_000
        )
        seconds = time.perf_counter() - t0
        shutil.rmtree(folder)
    print(
        f"{n} images, {written} rows in {seconds:.1f}s; driver RSS before scoring {before:.0f} MiB, peak {status('VmHWM'):.0f} MiB"
    )


if __name__ == "__main__":
    main()
