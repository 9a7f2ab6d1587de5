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
#   fused   the same grid with W processes each training up to K trials as one vmapped program, for each KxW of
#           $FUSE_TRY in turn (fused-KxW.json) until one's wall time is at most $TARGET seconds (default 60); an
#           entry KxW:KEY=VALUE:... adds `--set KEY=VALUE` to its runs (6x2:precision=bf16 -> fused-6x2_precision-bf16)
#   noise   the fused grid again, at the KxW that met $TARGET (else the fastest), over seeds 0..$SEEDS-1, each cell
#           tested against $AGAINST (default: the grid step's JSON); the verdict line says how many cells are within
#           seed noise
# Environment: MNIST (the IDX folder; default .bundle/mnist-10k if there, else ../shared/data/mnist-10k), BENCH (the
# command; default .venv/bin/bench, else `python3 -m bench` over the wheels of .bundle/wheels, which
# bench/offline_bundle.py packs for a machine with its own PyTorch and no package index), REPEATS, GRID_SET (more
# `--set KEY=VALUE` for the three grid steps; a CPU rehearsal: "--set epochs=1 --set dataset.limit=500"), PACK (a
# file name: the steps write into a temporary folder that is packed into $OUT/$PACK as a .tar.gz after every step, so
# that a call which returns few files, or is killed at its time limit, still brings back every finished step).
set -uo pipefail
OUT=${OUT:-perf-out}
STEPS=${STEPS:-ratios jpeg extras grid fused noise}
WORKERS=${WORKERS:-11}
FUSE_WORKERS=${FUSE_WORKERS:-2}
FUSE=${FUSE:-6}
FUSE_TRY=${FUSE_TRY:-${FUSE}x$FUSE_WORKERS}
TARGET=${TARGET:-60}
SEEDS=${SEEDS:-3}
REPEATS=${REPEATS:-2}
GRID_SET=${GRID_SET:-}
PACK=${PACK:-}
export PYTHONUNBUFFERED=1
export MLFLOW_DISABLE_TELEMETRY=true  # GPU machines are often offline: no usage pings beside timed work

valid="ratios jpeg extras grid fused noise"
for s in $STEPS; do
    [[ " $valid " == *" $s "* ]] || { echo "gpu_checks.sh: STEPS has '$s'; valid steps: $valid" >&2; exit 2; }
done
for entry in $FUSE_TRY; do
    [[ $entry =~ ^[1-9][0-9]*x[1-9][0-9]*(:[A-Za-z_.]+=[A-Za-z0-9_.+-]+)*$ ]] || { echo "gpu_checks.sh: FUSE_TRY" \
        "has '$entry'; each entry is KxW, K trials fused per program and W worker processes, then any :KEY=VALUE" \
        "overrides, e.g. FUSE_TRY=\"6x2 11x1 6x2:precision=bf16\"" >&2; exit 2; }
done
[[ -z $PACK || $PACK =~ ^[A-Za-z0-9._-]+$ ]] || { echo "gpu_checks.sh: PACK='$PACK' is a file name in \$OUT, of" \
    "letters, digits, '.', '_' and '-', e.g. PACK=gpu-checks.tgz" >&2; exit 2; }
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
dir=$OUT  # where the steps write
if [[ -n $PACK ]]; then
    dir=$(mktemp -d "${TMPDIR:-/tmp}/gpu-checks.XXXXXX")
    trap 'rm -rf "$dir"' EXIT
fi
AGAINST=${AGAINST:-$dir/grid.json}
pack() {  # $dir as $OUT/$PACK, replaced whole (a kill mid-tar leaves the previous pack)
    [[ -n $PACK ]] || return 0
    tar -czf "$OUT/$PACK.part" -C "$dir" . && mv -f "$OUT/$PACK.part" "$OUT/$PACK"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$dir/gpu.csv" 2>&1 || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" >> "$dir/gpu.csv" 2>&1 || true
# a copy without .git names its commit in MARGINBENCH_GIT_COMMIT (the runs' git_commit tag reads it too)
echo "commit $(git rev-parse HEAD 2>/dev/null || echo "${MARGINBENCH_GIT_COMMIT:-unknown}")" >> "$dir/gpu.csv"
pack

failed=()
run_step() {  # run_step FILE ARGS...: `bench perf ARGS --json $dir/FILE.json`, its output also in $dir/FILE.log
    local file=$1
    shift
    echo "== $file: bench perf $* ($(date -u +%H:%M:%S))"
    # shellcheck disable=SC2086  # BENCH may be a command with arguments
    $BENCH perf "$@" --json "$dir/$file.json" 2>&1 | tee "$dir/$file.log" || failed+=("$file")
    pack
}
step() {  # step NAME ARGS...: run_step NAME ARGS... if STEPS names it
    [[ " $STEPS " == *" $1 "* ]] && run_step "$@"
    return 0
}
wall() {  # wall FILE.json: the grid's wall seconds, or nothing
    python3 -c 'import json, sys; print("%.1f" % json.load(open(sys.argv[1]))["grid"]["wall_seconds"])' "$1" 2>/dev/null
}
read -ra grid_set <<< "$GRID_SET"
grid=(--grid sweeps/losses.yaml --set "dataset.root=$MNIST" --set dataset.repeat=8 "${grid_set[@]}")
step ratios --workload lenet --workload mobilenet --repeats "$REPEATS" --mnist-root "$MNIST"
step jpeg --jpeg --repeats "$REPEATS"
step extras --logging --head --fused 10 --mnist-root "$MNIST"
step grid "${grid[@]}" --workers "$WORKERS"
layout() {  # layout ENTRY: $file and $layout_args (--workers W --fuse K --set ...) for a FUSE_TRY entry
    local kw=${1%%:*} kv overrides=()
    layout_args=(--workers "${kw#*x}" --fuse "${kw%x*}")
    file=fused-$kw
    [[ $1 == *:* ]] && IFS=: read -ra overrides <<< "${1#*:}"
    for kv in "${overrides[@]}"; do
        layout_args+=(--set "$kv")
        file+="_${kv//=/-}"
    done
}
read -r chosen _ <<< "$FUSE_TRY"  # the entry for the noise step: the first to meet TARGET, else the fastest
if [[ " $STEPS " == *" fused "* ]]; then
    best=
    for entry in $FUSE_TRY; do
        layout "$entry"
        run_step "$file" "${grid[@]}" "${layout_args[@]}"
        w=$(wall "$dir/$file.json")
        [[ -n $w ]] || continue
        echo "fused $entry: $w s wall (target $TARGET s)"
        if [[ -z $best ]] || python3 -c "import sys; sys.exit(not float(sys.argv[1]) < float(sys.argv[2]))" "$w" \
            "$best"; then
            best=$w chosen=$entry
        fi
        python3 -c "import sys; sys.exit(not float(sys.argv[1]) <= float(sys.argv[2]))" "$w" "$TARGET" && break
    done
    echo "fused: noise step at $chosen"
fi
layout "$chosen"
[[ $SEEDS -gt 0 ]] && step noise "${grid[@]}" "${layout_args[@]}" --seeds "$SEEDS" --against "$AGAINST"
if ((${#failed[@]})); then
    echo "gpu_checks.sh: failed steps: ${failed[*]} (their logs are in ${PACK:+$OUT/}${PACK:-$OUT})" >&2
    exit 1
fi
