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


# A stand-in for `bench` that writes a `bench perf --json` file whose grid wall time depends on --fuse (K, or K+bf16
# with --set precision=bf16: seconds in WALLS), records its arguments, and at the step named by LIST_PACK lists
# what $OUT/$PACK holds at that moment.
FAKE_PERF = r'''
import json, os, subprocess, sys
args = sys.argv[2:]
with open(os.environ["CALLS"], "a") as f:
    f.write(" ".join(args) + "\n")
walls = dict(kv.split(":") for kv in os.environ.get("WALLS", "").split())
out = args[args.index("--json") + 1]
fuse = args[args.index("--fuse") + 1] if "--fuse" in args else None
if fuse and "precision=bf16" in args:
    fuse += "+bf16"
with open(out, "w") as f:
    json.dump({"grid": {"wall_seconds": float(walls[fuse])}} if fuse in walls else {"workloads": []}, f)
if os.environ.get("LIST_PACK") and os.environ["LIST_PACK"] in args:
    packed = subprocess.run(["tar", "-tzf", os.path.join(os.environ["OUT"], os.environ["PACK"])],
                            capture_output=True, text=True, check=True).stdout
    with open(os.environ["PACKED"], "w") as f:
        f.write(packed)
'''


def _fake(tmp_path: Path) -> dict[str, str]:
    fake = tmp_path / "fake_perf.py"
    fake.write_text(FAKE_PERF)
    return {"BENCH": f"python3 {fake}", "CALLS": str(tmp_path / "calls.txt"), "MNIST": "/data/mnist"}


def _fuse_args(calls: Path) -> list[str]:
    return [line.split(" --workers ")[1].split(" --json")[0] for line in calls.read_text().splitlines()]


def test_fused_tries_each_kxw_until_one_meets_the_target_and_noise_runs_at_that_one(tmp_path):
    env = _fake(tmp_path)
    done = _run(tmp_path, STEPS="fused noise", FUSE_TRY="6x2 11x1 4x3", WALLS="6:70.5 11:55.0 4:50.0", **env)
    assert done.returncode == 0, done.stderr
    # 6x2 misses 60 s, 11x1 meets it: 4x3 is not tried, and the seeds run fused 11 in one worker
    assert _fuse_args(tmp_path / "calls.txt") == [
        "2 --fuse 6", "1 --fuse 11", f"1 --fuse 11 --seeds 3 --against {tmp_path / 'out'}/grid.json"]
    assert "fused 6x2: 70.5 s wall (target 60 s)" in done.stdout and "fused 11x1: 55.0 s wall" in done.stdout
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {"fused-6x2.json", "fused-11x1.json", "noise.json"}


def test_when_no_kxw_meets_the_target_noise_runs_at_the_fastest(tmp_path):
    env = _fake(tmp_path)
    done = _run(tmp_path, STEPS="fused noise", FUSE_TRY="6x2 11x1 4x3", WALLS="6:70 11:65 4:68", TARGET="60",
                SEEDS="2", AGAINST="ref.json", **env)
    assert done.returncode == 0, done.stderr
    assert _fuse_args(tmp_path / "calls.txt") == ["2 --fuse 6", "1 --fuse 11", "3 --fuse 4",
                                                  "1 --fuse 11 --seeds 2 --against ref.json"]


def test_a_fuse_try_entry_carries_its_overrides_into_its_file_name_and_the_noise_step(tmp_path):
    env = _fake(tmp_path)
    done = _run(tmp_path, STEPS="fused noise", FUSE_TRY="6x2 6x2:precision=bf16:channels_last=true",
                WALLS="6:80 6+bf16:45", AGAINST="ref.json", **env)
    assert done.returncode == 0, done.stderr
    bf16 = "2 --fuse 6 --set precision=bf16 --set channels_last=true"
    assert _fuse_args(tmp_path / "calls.txt") == ["2 --fuse 6", bf16, f"{bf16} --seeds 3 --against ref.json"]
    assert (tmp_path / "out" / "fused-6x2_precision-bf16_channels_last-true.json").is_file()
    assert "fused: noise step at 6x2:precision=bf16:channels_last=true" in done.stdout


def test_a_malformed_fuse_try_or_pack_stops_before_anything_runs(tmp_path):
    for env, says in (({"FUSE_TRY": "6x2 eleven"}, "FUSE_TRY has 'eleven'; each entry is KxW"),
                      ({"FUSE_TRY": "0x2"}, "FUSE_TRY has '0x2'"),
                      ({"FUSE_TRY": "6x2:precision"}, "then any :KEY=VALUE overrides"),
                      ({"FUSE_TRY": "6x2:a=b;rm"}, "FUSE_TRY has '6x2:a=b;rm'"),
                      ({"PACK": "../all.tgz"}, "PACK='../all.tgz' is a file name in $OUT")):
        done = _run(tmp_path, STEPS="fused", BENCH="false", **env)
        assert done.returncode == 2 and says in done.stderr, (env, done.stderr)
        assert not (tmp_path / "out").exists()


def test_pack_returns_one_archive_refreshed_after_every_step(tmp_path):
    import tarfile

    env = _fake(tmp_path)
    done = _run(tmp_path, STEPS="ratios jpeg grid", PACK="gpu-checks.tgz", LIST_PACK="--jpeg",
                PACKED=str(tmp_path / "packed.txt"), **env)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out"
    assert [p.name for p in out.iterdir()] == ["gpu-checks.tgz"]  # one file back, whatever the steps
    # while the jpeg step ran, the pack already held the ratios step's results
    assert {"./gpu.csv", "./ratios.json", "./ratios.log"} <= set((tmp_path / "packed.txt").read_text().split())
    with tarfile.open(out / "gpu-checks.tgz") as tar:
        names = set(tar.getnames())
        assert {"./gpu.csv", "./ratios.json", "./jpeg.json", "./grid.json", "./grid.log"} <= names
        assert "commit " in tar.extractfile("./gpu.csv").read().decode()
