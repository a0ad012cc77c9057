#!/usr/bin/env bash
# The cross-fit student's cross-validation on a 2-core CPU (issue 29), fold 1 first, every step resumable; it is
# what ~/mri44-runs/queue10.sh ran on 2026-12-08, kept here so a new machine restarts it with one command.
#   1. cv5-t50p  the ResNet-50 teacher (cached layer3) on pairs of folds (--leave-out 2): fold-1-2 .. fold-1-5
#                first, the teachers of the student's fold 1 (layer3 cache 9 min, then about 10 min a run)
#   2. cv5-s18c  the default's recipe with out-of-fold soft labels (--cross-fit): fold 1 (about 2 h on an
#                AVX-512 BF16 CPU without AMX: 15 min of soft labels, 40 epochs of 146 s)
#   3. cv5-t50p  the six other pair runs, then cv5-s18c's other folds
#   4. cv5-t50, cv5-s18  the ordinary teacher CV (the same cache, hard links) and the default's recipe again, for
#                the paired test (scripts/cv_compare.py RUNS/cv5-s18 RUNS/cv5-s18c)
# Keep each finished student fold in the work tree (scripts/keep_cv.py) and commit it: a lost machine then costs
# only the fold in progress (a kept CV continues with --resume, docs/recipes.md).
# Usage: bash scripts/crossfit_cv_cpu.sh [DATA] [RUNS], from the checkout whose code it should run (a snapshot,
# e.g. `git archive HEAD | tar -x -C RUNS/code/SHA`, keeps later edits out of a run that lasts days).
set -u
DATA=$(realpath "${1:-../shared/data/brain-mri-44c}")
RUNS=$(realpath -m "${2:-$HOME/mri44-runs}")
mkdir -p "$RUNS"
T50=(--arch resnet50 --weights imagenet --recipe cached --freeze-through layer3 --feature-views 4 --image-size 224
  --epochs 12 --folds 5)
S18=(--recipe distill --soft-label-views 8 --image-size 256 --epochs 40 --folds 5)
stamp() { echo "$(date -u +%FT%TZ) $*"; }
resume() { if [ -f "$1/config.json" ]; then echo --resume; fi; }  # continue a CV folder that was started
until_done() {  # until_done FILE ARGS...: python -m train ARGS until FILE exists, then stop it
  local done_file=$1; shift
  [ -f "$done_file" ] && { stamp "done before: $done_file"; return; }
  stamp "start: $*"
  python -m train "$@" &
  local pid=$!
  while [ ! -f "$done_file" ] && kill -0 $pid 2>/dev/null; do sleep 20; done
  kill $pid 2>/dev/null; wait $pid
  stamp "stopped: $done_file $( [ -f "$done_file" ] && echo written || echo MISSING)"
}
run() { stamp "start: $*"; python -m train "$@"; stamp "exit $?: $*"; }
P=$RUNS/cv5-t50p S=$RUNS/cv5-s18c
until_done "$P/fold-1-5/result.json" --data "$DATA" --out "$P" "${T50[@]}" --leave-out 2 $(resume "$P")
until_done "$S/fold-1/result.json" --data "$DATA" --out "$S" "${S18[@]}" --soft-labels "$P" --cross-fit $(resume "$S")
run --data "$DATA" --out "$P" "${T50[@]}" --leave-out 2 --resume
run --data "$DATA" --out "$S" "${S18[@]}" --soft-labels "$P" --cross-fit --resume
mkdir -p "$RUNS/cv5-t50/cache" && ln -f "$P"/cache/* "$RUNS/cv5-t50/cache/" 2>/dev/null
run --data "$DATA" --out "$RUNS/cv5-t50" "${T50[@]}" $(resume "$RUNS/cv5-t50")
run --data "$DATA" --out "$RUNS/cv5-s18" "${S18[@]}" --soft-labels "$RUNS/cv5-t50" $(resume "$RUNS/cv5-s18")
stamp "crossfit_cv_cpu.sh done"
