"""bench/gpu_checks.sh's plumbing, with a stand-in for `bench` that records its arguments (nothing trains)."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_checks.sh"


def _run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT)], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "OUT": str(tmp_path / "out"), **env})


def test_an_unknown_step_stops_before_anything_runs_and_lists_the_valid_ones(tmp_path):
    done = _run(tmp_path, STEPS="ratios gird", BENCH="false")
    assert done.returncode == 2
    assert "STEPS has 'gird'; valid steps: ratios jpeg extras grid fused noise" in done.stderr
    assert not (tmp_path / "out").exists()


def test_steps_pass_their_arguments_and_a_failed_step_does_not_stop_the_next(tmp_path):
    calls = tmp_path / "calls.txt"
    fake = tmp_path / "fake_bench.sh"  # records one line per call; fails for the jpeg step
    fake.write_text(f'echo "$*" >> {shlex.quote(str(calls))}\n[[ " $* " != *" --jpeg "* ]]\n')
    done = _run(tmp_path, STEPS="ratios jpeg grid noise", BENCH=f"bash {fake}", MNIST="/data/mnist", REPEATS="3",
                GRID_SET="--set epochs=1 --set dataset.limit=400", SEEDS="2")
    assert done.returncode == 1 and "failed steps: jpeg" in done.stderr
    ratios, jpeg, grid, noise = calls.read_text().splitlines()
    out = tmp_path / "out"
    assert ratios == (f"perf --workload lenet --workload mobilenet --repeats 3 --mnist-root /data/mnist "
                      f"--json {out}/ratios.json")
    assert jpeg == f"perf --jpeg --repeats 3 --json {out}/jpeg.json"
    data = ("--grid sweeps/losses.yaml --set dataset.root=/data/mnist --set dataset.repeat=8 --set epochs=1 "
            "--set dataset.limit=400")
    assert grid == f"perf {data} --workers 11 --json {out}/grid.json"
    assert noise == f"perf {data} --workers 2 --fuse 6 --seeds 2 --against {out}/grid.json --json {out}/noise.json"
    assert {p.name for p in out.iterdir()} >= {"gpu.csv", "ratios.log", "jpeg.log", "grid.log", "noise.log"}
