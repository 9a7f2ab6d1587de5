#!/usr/bin/env bash
# The performance figures of the README on a machine with a GPU, in one go (about 10 minutes on an H100):
#   bash bench/gpu_checks.sh            # results in ./perf-out (or $OUT): gpu.csv, perf.json/.log, grid.json/.log
# 1. harness vs bare loop: LeNet++ (MNIST 10k x 6, batch 512) and timm mobilenetv3_large_100 (112x112, batch 1024,
#    bf16, channels_last, CosFace 512-d); MLflow logging's share of a 20-epoch trial; the CosFace head at 1M
#    classes, plain vs class-chunked, both against float64; the JPEG image-folder feed vs device-resident faces;
#    ten LeNet++ trials fused into one program vs one alone.
# 2. the losses grid (sweeps/losses.yaml, 20 epochs of the 10k set's 8,000 training digits x 8 = 64k images, at
#    least the 60k): $WORKERS processes, one trial each at a time (grid.json: each trial computes what it
#    would alone, so its table is the sequential one), and $FUSE_WORKERS processes each training up to $FUSE trials
#    as one vmapped program (grid-fused.json); both accuracy tables are printed, to compare with each other.
# Needs ../shared/data/mnist-10k (or set MNIST=folder with the IDX files) and `make install` done.
set -euo pipefail
OUT=${OUT:-perf-out}
WORKERS=${WORKERS:-10}
FUSE_WORKERS=${FUSE_WORKERS:-2}
FUSE=${FUSE:-6}
MNIST=${MNIST:-../shared/data/mnist-10k}
BENCH=${BENCH:-.venv/bin/bench}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv" 2>&1 || true
"$BENCH" perf --workload lenet --workload mobilenet --repeats 2 --logging --head --jpeg --fused 10 \
    --json "$OUT/perf.json" 2>&1 | tee "$OUT/perf.log"
"$BENCH" perf --grid sweeps/losses.yaml --workers "$WORKERS" --set "dataset.root=$MNIST" --set dataset.repeat=8 \
    --json "$OUT/grid.json" 2>&1 | tee "$OUT/grid.log"
"$BENCH" perf --grid sweeps/losses.yaml --workers "$FUSE_WORKERS" --fuse "$FUSE" --set "dataset.root=$MNIST" \
    --set dataset.repeat=8 --json "$OUT/grid-fused.json" 2>&1 | tee "$OUT/grid-fused.log"
