#!/usr/bin/env bash
# The GPU scoring figures of issue 12, in one command of at most 8 minutes on a lent GPU machine.
#
# Here, once (builds what travels; .gpu/ is git-ignored, about 40 MB):
#   bash scripts/gpu_bench.sh --prepare [DATA]
#     -> .gpu/data.tar (greyscale JPEG copy, longest side <= 256) and .gpu/polars-*.whl (the GPU image lacks polars)
# There (the device tool, carry [".gpu"]):
#   bash scripts/gpu_bench.sh OUTDIR
#     -> OUTDIR/benchmarks-gpu.md (the tables docs/benchmarks.md takes), OUTDIR/machine.txt, OUTDIR/bench.log
# Anywhere, to check the script without a GPU: DEVICE=cpu bash scripts/gpu_bench.sh OUTDIR (a tiny rehearsal).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--prepare" ]; then
  DATA=${2:-../shared/data/brain-mri-44c}
  mkdir -p .gpu
  python scripts/make_compact_copy.py "$DATA" .gpu/data --max-side 256 --quality 88
  tar -cf .gpu/data.tar -C .gpu data && rm -rf .gpu/data
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu "polars==$(python -c 'import polars; print(polars.__version__)')"
  du -sh .gpu/*
  exit 0
fi
OUTDIR=${1:?usage: gpu_bench.sh OUTDIR | --prepare [DATA]}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUTDIR" /tmp/gpudata
export PYTHONUNBUFFERED=1
if ! python3 -c "import polars" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/polars-*.whl
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
DATA=../shared/data/brain-mri-44c
if [ -f .gpu/data.tar ]; then
  [ -d /tmp/gpudata/data ] || tar -C /tmp/gpudata -xf .gpu/data.tar
  DATA=/tmp/gpudata/data
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true; nproc
 python3 -c "import torch, torchvision, onnxruntime as o; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'onnxruntime', o.__version__, o.get_available_providers())") \
  | tee "$OUTDIR/machine.txt"
if [ "$DEVICE" = cpu ]; then args=(--rehearse --gpu-images 64 --repeats 1); else args=(--device cuda --repeats 3); fi
timeout 470 python3 benchmarks/bench.py --data "$DATA" "${args[@]}" --out "$OUTDIR/benchmarks-gpu.md" 2>&1 | tee "$OUTDIR/bench.log"
