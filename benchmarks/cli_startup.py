"""How long `mri44 --help` takes (issue 33: 5.4 s on a newcomer's machine), as the package is and with PyTorch and
torchvision imported first (what the weights command's module-level imports cost every command before
2026-12-07). Alternating, median of N runs each; prints a Markdown table.

    python benchmarks/cli_startup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

VARIANTS = {
    "now": "",
    "with torch, torchvision imported first (before)": "import torch, torchvision\n",
}
PROBE = "import sys\n{pre}sys.argv = ['mri44', '--help']\nfrom mri44.cli import main\ntry:\n    main()\nexcept SystemExit:\n    pass\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.runs):
        for name, pre in VARIANTS.items():
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", PROBE.format(pre=pre)], check=True, capture_output=True)
            times[name].append(time.perf_counter() - t0)
    print("| `mri44 --help` | median seconds |\n| --- | ---: |")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.2f} |")


if __name__ == "__main__":
    main()
