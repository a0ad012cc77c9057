#!/usr/bin/env bash
# The GPU scoring figures of issue 12, in one command of at most 8 minutes on a lent GPU machine.
#
# Here, once (.gpu/ is git-ignored):
#   bash scripts/gpu_bench.sh --prepare [DATA]
#     -> .gpu/data.tar (greyscale JPEG copy, longest side <= 256, quality 70) and .gpu/polars.tar.xz (the GPU
#        image lacks polars). The working tree itself is ~37 MB (the shipped models), and a call carries at most
#        64 MiB in all, so each file travels in its own call.
# There, two calls in a row (the second while the machine is still warm: ignored files stay between calls):
#   1. carry [".gpu/polars.tar.xz"]: bash scripts/gpu_bench.sh --install      (unpacks into .gpu/site)
#   2. carry [".gpu/data.tar"]:      bash scripts/gpu_bench.sh OUTDIR
#     -> OUTDIR/benchmarks-gpu.md (the tables docs/benchmarks.md takes), OUTDIR/machine.txt, OUTDIR/bench.log
# Anywhere, to check the script without a GPU: DEVICE=cpu bash scripts/gpu_bench.sh OUTDIR (a tiny rehearsal).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--prepare" ]; then
  DATA=${2:-../shared/data/brain-mri-44c}
  rm -rf .gpu/data .gpu/data.tar .gpu/polars.tar.xz .gpu/wheels && mkdir -p .gpu/polars
  python scripts/make_compact_copy.py "$DATA" .gpu/data --max-side 256 --quality 70
  tar -cf .gpu/data.tar -C .gpu data && rm -rf .gpu/data
  # polars 1.32 is the last release in one wheel (later ones add a 54 MB runtime wheel that cannot travel beside
  # the 37 MB working tree); the tests pass with it. Shipped as .tar.xz.
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu/polars "polars==1.32.0"
  (cd .gpu/polars && unzip -q polars-*.whl && rm polars-*.whl) && tar -cJf .gpu/polars.tar.xz -C .gpu/polars . && rm -rf .gpu/polars
  du -sh .gpu/*
  exit 0
fi
if [ "${1:-}" = "--install" ]; then
  mkdir -p .gpu/site && tar -C .gpu/site -xJf .gpu/polars.tar.xz
  PYTHONPATH=.gpu/site python3 -c "import polars; print('polars', polars.__version__, 'in .gpu/site')"
  exit 0
fi
OUTDIR=${1:?usage: gpu_bench.sh OUTDIR | --prepare [DATA] | --install}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUTDIR" /tmp/gpudata
export PYTHONUNBUFFERED=1
if ! python3 -c "import polars" 2>/dev/null; then
  [ -d .gpu/site ] || { echo "no polars here: run 'bash scripts/gpu_bench.sh --install' first (carry .gpu/polars.tar.xz)"; exit 2; }
  export PYTHONPATH="$PWD/.gpu/site:${PYTHONPATH:-}"
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
