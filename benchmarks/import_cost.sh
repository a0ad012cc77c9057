#!/usr/bin/env bash
# Usage: benchmarks/import_cost.sh (folder /tmp/b668: 668 JPEGs of the data set, linked). Whole mri-score process on the same 668 JPEGs, alternating: as committed (no torch import) and with torch
# imported first (what every run paid before), 3 runs each.
for r in 1 2 3; do
  for v in new withtorch; do
    if [ $v = new ]; then pre=""; else pre="import torch, torchvision; "; fi
    s=$(date +%s.%N)
    python -c "${pre}import sys; from mri44.stages.score.cli import main; sys.argv=['mri-score','/tmp/b668','--out','/tmp/b668-$v.parquet','--overwrite']; main()" > /dev/null 2>&1
    e=$(date +%s.%N)
    echo "$v $(echo "$e - $s" | bc)"
  done
done
