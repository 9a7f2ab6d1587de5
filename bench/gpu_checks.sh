#!/usr/bin/env bash
# The performance figures of the README on a machine with a GPU, step by step (about 10 minutes on an H100):
#   bash bench/gpu_checks.sh                          # every step; results in ./perf-out (or $OUT)
#   STEPS="ratios fused grid" bash bench/gpu_checks.sh  # some steps (a call of at most N minutes each)
# Each step is one `bench perf` run that writes $OUT/<step>.json and $OUT/<step>.log; a step that fails is named at
# the end and the others still run. The steps, most wanted first:
#   ratios  harness vs bare loop: LeNet++ (MNIST 10k x 6, batch 512) and timm mobilenetv3_large_100 (112x112,
#           batch 1024, bf16, channels_last, CosFace 512-d)
#   jpeg    the mobilenet workload fed from a folder of JPEG files vs the same faces held on the device
#   extras  MLflow logging's share of a 20-epoch trial; the CosFace head at 1M classes, plain vs class-chunked,
#           both against float64; ten LeNet++ trials fused into one program vs one alone
#   grid    the losses grid (sweeps/losses.yaml, 20 epochs of the 10k set's 8,000 training digits x 8 = 64k images,
#           at least the issue's 60k), $WORKERS processes of one trial each: every trial computes what it would
#           alone, so this is the sequential table
#   fused   the same grid with $FUSE_WORKERS processes each training up to $FUSE trials as one vmapped program: the
#           wall time to hold against 60 s
#   noise   the fused grid again over seeds 0..$SEEDS-1, each cell tested against $AGAINST (default: grid's JSON),
#           the verdict line says how many cells are within seed noise
# Environment: MNIST (the IDX folder; default .bundle/mnist-10k if there, else ../shared/data/mnist-10k), BENCH (the
# command; default .venv/bin/bench, else `python3 -m bench` over the wheels of .bundle/wheels, which
# bench/offline_bundle.py packs for a machine with its own PyTorch and no package index), REPEATS, GRID_SET (more
# `--set KEY=VALUE` for the three grid steps; a CPU rehearsal: "--set epochs=1 --set dataset.limit=500").
set -uo pipefail
OUT=${OUT:-perf-out}
STEPS=${STEPS:-ratios jpeg extras grid fused noise}
WORKERS=${WORKERS:-11}
FUSE_WORKERS=${FUSE_WORKERS:-2}
FUSE=${FUSE:-6}
SEEDS=${SEEDS:-3}
REPEATS=${REPEATS:-2}
AGAINST=${AGAINST:-$OUT/grid.json}
GRID_SET=${GRID_SET:-}
export PYTHONUNBUFFERED=1
export MLFLOW_DISABLE_TELEMETRY=true  # GPU machines are often offline: no usage pings beside timed work

valid="ratios jpeg extras grid fused noise"
for s in $STEPS; do
    [[ " $valid " == *" $s "* ]] || { echo "gpu_checks.sh: STEPS has '$s'; valid steps: $valid" >&2; exit 2; }
done
if [[ -z ${MNIST:-} ]]; then
    MNIST=../shared/data/mnist-10k
    [[ -d .bundle/mnist-10k ]] && MNIST=.bundle/mnist-10k
fi
if [[ -z ${BENCH:-} ]]; then
    if [[ -x .venv/bin/bench ]]; then
        BENCH=.venv/bin/bench
    else  # a Python of its own (a GPU image): the project from this checkout, what it lacks from .bundle/wheels
        site=/tmp/marginbench-site
        export PYTHONPATH=$site:$PWD${PYTHONPATH:+:$PYTHONPATH}
        if ! python3 -c "import mlflow, optuna" 2>/dev/null; then
            [[ -d .bundle/wheels ]] || { echo "gpu_checks.sh: no .venv and no .bundle/wheels: run make install," \
                "or bench/offline_bundle.py where pip can download" >&2; exit 2; }
            python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
                .bundle/wheels/*.whl || exit 2
        fi
        BENCH="python3 -m bench"
    fi
fi
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv" 2>&1 || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" >> "$OUT/gpu.csv" 2>&1 || true
# a copy without .git names its commit in MARGINBENCH_GIT_COMMIT (the runs' git_commit tag reads it too)
echo "commit $(git rev-parse HEAD 2>/dev/null || echo "${MARGINBENCH_GIT_COMMIT:-unknown}")" >> "$OUT/gpu.csv"

failed=()
step() {  # step NAME ARGS...: `bench perf ARGS --json $OUT/NAME.json`, its output also in $OUT/NAME.log
    local name=$1
    shift
    [[ " $STEPS " == *" $name "* ]] || return 0
    echo "== $name: bench perf $* ($(date -u +%H:%M:%S))"
    # shellcheck disable=SC2086  # BENCH may be a command with arguments
    $BENCH perf "$@" --json "$OUT/$name.json" 2>&1 | tee "$OUT/$name.log" || failed+=("$name")
}
read -ra grid_set <<< "$GRID_SET"
grid=(--grid sweeps/losses.yaml --set "dataset.root=$MNIST" --set dataset.repeat=8 "${grid_set[@]}")
step ratios --workload lenet --workload mobilenet --repeats "$REPEATS" --mnist-root "$MNIST"
step jpeg --jpeg --repeats "$REPEATS"
step extras --logging --head --fused 10 --mnist-root "$MNIST"
step grid "${grid[@]}" --workers "$WORKERS"
step fused "${grid[@]}" --workers "$FUSE_WORKERS" --fuse "$FUSE"
[[ $SEEDS -gt 0 ]] && step noise "${grid[@]}" --workers "$FUSE_WORKERS" --fuse "$FUSE" --seeds "$SEEDS" \
    --against "$AGAINST"
if ((${#failed[@]})); then
    echo "gpu_checks.sh: failed steps: ${failed[*]} (their logs are in $OUT)" >&2
    exit 1
fi
