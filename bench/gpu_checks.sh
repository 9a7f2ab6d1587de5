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
# 3. seed noise: the fused grid again with seeds 0..$SEEDS-1 (grid-noise.json), each cell's sequential test
#    accuracy tested against the fused seeds' spread (`--against grid.json`: the verdict line says how many of the
#    eleven cells are within seed noise). SEEDS=0 skips it.
# STEPS="perf grid fused noise" (the default) runs all; name fewer to split the run across device calls (a call
# is at most 10 minutes). Needs ../shared/data/mnist-10k (or MNIST=folder with the IDX files), `make install` done.
set -euo pipefail
OUT=${OUT:-perf-out}
WORKERS=${WORKERS:-10}
FUSE_WORKERS=${FUSE_WORKERS:-2}
FUSE=${FUSE:-6}
SEEDS=${SEEDS:-3}
STEPS=${STEPS:-perf grid fused noise}
MNIST=${MNIST:-../shared/data/mnist-10k}
BENCH=${BENCH:-.venv/bin/bench}
DATA=(--set "dataset.root=$MNIST" --set dataset.repeat=8)
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv" 2>&1 || true
if [[ " $STEPS " == *" perf "* ]]; then
    "$BENCH" perf --workload lenet --workload mobilenet --repeats 2 --logging --head --jpeg --fused 10 --mnist-root "$MNIST" \
        --json "$OUT/perf.json" 2>&1 | tee "$OUT/perf.log"
fi
if [[ " $STEPS " == *" grid "* ]]; then
    "$BENCH" perf --grid sweeps/losses.yaml --workers "$WORKERS" "${DATA[@]}" \
        --json "$OUT/grid.json" 2>&1 | tee "$OUT/grid.log"
fi
if [[ " $STEPS " == *" fused "* ]]; then
    "$BENCH" perf --grid sweeps/losses.yaml --workers "$FUSE_WORKERS" --fuse "$FUSE" "${DATA[@]}" \
        --json "$OUT/grid-fused.json" 2>&1 | tee "$OUT/grid-fused.log"
fi
if [[ " $STEPS " == *" noise "* && "$SEEDS" -gt 0 ]]; then
    "$BENCH" perf --grid sweeps/losses.yaml --workers "$FUSE_WORKERS" --fuse "$FUSE" "${DATA[@]}" --seeds "$SEEDS" \
        --against "$OUT/grid.json" --json "$OUT/grid-noise.json" 2>&1 | tee "$OUT/grid-noise.log"
fi
