#!/usr/bin/env bash
# What importing PyTorch costs an ONNX scoring run: the whole `mri-score` process on 668 real JPEGs of the data
# set (every 5th, linked into a temporary folder), as the package runs now and with `import torch, torchvision`
# first (what every run paid before 2026-11-30), alternating, 3 runs each. Run with the machine otherwise idle.
# Usage: bash benchmarks/import_cost.sh [DATA]   (DATA defaults to ../shared/data/brain-mri-44c)
set -euo pipefail
data=${1:-$(dirname "$0")/../../shared/data/brain-mri-44c}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python - "$data" "$work/in" <<'PY'
import sys
from pathlib import Path
from mri44.discover import find_images
root, out = Path(sys.argv[1]), Path(sys.argv[2])
jpegs = [p for p in find_images(root) if p.suffix.lower() in (".jpg", ".jpeg")]
for p in jpegs[:: max(1, len(jpegs) // 668)][:668]:
    (out / p.relative_to(root)).parent.mkdir(parents=True, exist_ok=True)
    (out / p.relative_to(root)).symlink_to(p.resolve())
PY
echo "| run | variant | seconds |"
echo "| ---: | --- | ---: |"
for r in 1 2 3; do
  for v in as-is with-torch; do
    pre=""; [ "$v" = with-torch ] && pre="import torch, torchvision; "
    s=$(date +%s.%N)
    python -c "${pre}import sys; from mri44.stages.score.cli import main; sys.argv=['mri-score','$work/in','--out','$work/$v.parquet','--overwrite']; main()" > /dev/null 2>&1
    echo "| $r | $v | $(echo "$(date +%s.%N) - $s" | bc) |"
  done
done
