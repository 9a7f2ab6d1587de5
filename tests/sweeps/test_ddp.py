"""DistributedDataParallel: two gloo processes on the CPU train the same weights as one process."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from optuna.trial import TrialState

from bench.grid import load_grid
from bench.study import ERROR_ATTR
from bench.trial import TrialOptions, build_models, load_dataset, run_trial
from tests.sweeps.conftest import bench_env, mlflow_children, optuna_trials

ENTRY = str(Path(__file__).with_name("_ddp_entry.py"))

# 80 training images in global batches of 15: the ranks get 8 and 7 images per step and the last batch
# (5 images) splits 3/2, so the per-rank loss scaling is exercised on every step. SGD, because Adam turns
# float summation-order noise in near-zero gradients into lr-sized steps (sign(g) for |g| ~ 1e-9).
GRID = """\
name: ddp
base:
  dataset: tiny-blobs
  backbone: {name: lenet++, feature_prelu: false}
  loss: {name: cosface, s: 10.0, m: 0.1}
  embedding_dim: 16
  epochs: 6
  batch_size: 15
  eval_batch_size: 64
  optimizer: {name: sgd, lr: 0.05, momentum: 0.9}
seeds: [3]
"""


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           ENTRY, *args], cwd=cwd, env=bench_env(), capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def torchrun_with_fault(fault: str, *args: str, cwd: Path, timeout: float = 120,
                        interrupt_when: Sequence[Path] = ()) -> tuple[int, str]:
    """``(exit code, stdout + stderr)`` of a 2-process torchrun job with a failure injected on one rank
    (`_ddp_entry.inject_fault`); a job still running after ``timeout`` seconds is killed, with all its ranks, and
    fails the test (a hung rank used to wait in a collective for a day). With ``interrupt_when``, torchrun gets a
    SIGTERM (as from a scheduler) once those files exist."""
    env = {**bench_env(), "MARGINBENCH_TEST_FAULT": fault}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             ENTRY, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    deadline = time.monotonic() + timeout
    while interrupt_when and proc.poll() is None and time.monotonic() < deadline:
        if all(p.exists() for p in interrupt_when):
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.2)
    try:
        out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        for pid in [*_descendants(proc.pid), proc.pid]:  # torchrun starts each rank in a session of its own
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # a rank waiting in a collective does not heed SIGTERM
        out, _ = proc.communicate()
        pytest.fail(f"the torchrun job hung after a failure on one rank ({fault}):\n{out[-3000:]}")
    return proc.returncode, out


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (Linux: from /proc)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_process_gloo_trial_matches_one_process_on_the_same_global_batch(tmp_path, write_grid, tiny_dataset):
    path = write_grid(GRID)
    torchrun("distributed", "--grid", str(path), "--device", "cpu", "--checkpoint", str(tmp_path / "ddp.pt"),
             cwd=tmp_path)
    spec = load_grid(path).trials()[0]
    single = run_trial(spec, TrialOptions(device="cpu", progress=False, checkpoint_path=tmp_path / "single.pt"))
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=False)
    one = torch.load(tmp_path / "single.pt", weights_only=False)
    assert ddp["epoch"] == one["epoch"] == spec.epochs - 1
    for part in ("backbone", "head"):  # the margin head's class weights are replicated and averaged too
        assert ddp[part].keys() == one[part].keys()
        for name, value in one[part].items():
            torch.testing.assert_close(ddp[part][name], value, atol=1e-5, rtol=0, msg=f"{part}.{name}")
    # ...and the weights did move far beyond that tolerance, so the comparison means something
    torch.manual_seed(spec.seed)
    backbone, head, _ = build_models(spec, load_dataset(spec))
    moved = max((one["backbone"][k] - v).abs().max().item() for k, v in backbone.state_dict().items())
    assert moved > 1e-2
    # the epoch metrics are agreed over the ranks: what one process sees
    assert ddp["history"][-1]["train_loss"] == pytest.approx(single.history[-1]["train_loss"], abs=1e-5)
    assert ddp["history"][-1]["test_acc"] == single.history[-1]["test_acc"]


#: Generated faces with a closed-set test split and verification pairs (``synthetic_*`` metrics).
FACES_GRID = """\
name: ddp-faces
base:
  dataset: {name: synthetic-faces, identities: 4, images_per_identity: 8, image_size: 8, in_chans: 1,
            test_identities: 4, pairs_per_fold: 4, folds: 2}
  backbone: {name: lenet++, feature_prelu: false}
  loss: {name: cosface, s: 10.0, m: 0.1}
  embedding_dim: 16
  epochs: 2
  batch_size: 6
  eval_batch_size: 64
  optimizer: {name: sgd, lr: 0.05, momentum: 0.9}
seeds: [3]
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("fault", ["rank1-pairs", "rank1-test-split"])
def test_only_rank_zero_evaluates_the_verification_pairs_and_the_test_split(fault, tmp_path, write_grid):
    # every rank embedded and scored the pairs and the test split each epoch, and the other ranks' metrics were
    # thrown away (rank 1 spent most of its time there on a face grid); rank 1 now raises if it evaluates them
    path = write_grid(FACES_GRID)
    code, out = torchrun_with_fault(fault, "distributed", "--grid", str(path), "--device", "cpu",
                                    "--checkpoint", str(tmp_path / "ddp.pt"), cwd=tmp_path)
    assert code == 0, out
    history = torch.load(tmp_path / "ddp.pt", weights_only=False)["history"]
    assert len(history) == 2
    assert all(0.0 <= epoch["synthetic_acc"] <= 1.0 and 0.0 <= epoch["synthetic_auc"] <= 1.0 for epoch in history)
    assert all("test_acc" in epoch for epoch in history)


def test_bench_distributed_without_tracking_leaves_no_temporary_folder(tmp_path, write_grid, monkeypatch, capsys):
    # the ROC curve of the last epoch went to a marginbench-* temporary folder that nobody logged or removed: one
    # left behind per run (per rank before the pairs were evaluated on rank 0 alone)
    import tempfile

    from bench.distributed import main

    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    assert main(["--grid", str(write_grid(FACES_GRID)), "--device", "cpu", "--seed", "0"]) == 0
    assert "cosface seed=0: finished" in capsys.readouterr().out
    assert list(temp.glob("marginbench-*")) == []


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_torchrun_worker_trains_each_trial_on_both_ranks_and_rank_zero_logs(in_tmp, write_grid, tiny_dataset):
    from bench.workers import run_study

    grid = load_grid(write_grid(GRID.replace("name: ddp", "name: ddp-study").replace("epochs: 6", "epochs: 1")
                                .replace("seeds: [3]", "seeds: [0, 1]")))
    prepared = run_study(grid, workers=0, echo=lambda s: None)  # enqueue only
    torchrun("bench", "worker", "--grid", str(grid.path), "--device", "cpu", "--no-progress", cwd=in_tmp)
    trials = optuna_trials("ddp-study", prepared.storage)
    assert len(trials) == 2 and all(t.state == TrialState.COMPLETE for t in trials)
    runs = mlflow_children("ddp-study", prepared.tracking_uri)
    assert len(runs) == 2  # one run per trial: only rank 0 logs
    assert all(r.data.tags["world_size"] == "2" and r.info.status == "FINISHED" for r in runs)


def test_batchnorm_backbone_is_refused_under_ddp_off_cuda():
    # gloo on the CPU has no SyncBatchNorm: each rank would normalize by its own shard's statistics, so a
    # 2-process trial would not train the one-process weights (it used to run on silently). Refused before
    # DDP is built, so no process group is needed here.
    from torch import nn

    from bench.distributed import DistContext, wrap

    ctx = DistContext(rank=0, world_size=2, local_rank=0, backend="gloo", device="cpu")
    with pytest.raises(ValueError, match=r"BatchNorm layers \(BatchNorm2d\).*SyncBatchNorm needs CUDA.*one process"):
        wrap(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)), ctx)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_failure_on_rank_zero_at_an_epoch_end_fails_the_trial_on_both_ranks_and_the_worker_goes_on(
        in_tmp, write_grid, tiny_dataset):
    # rank 0's checkpoint write fails after epoch 0 of the first trial; rank 1 used to go on into epoch 1 and wait
    # in DDP's gradient all-reduce forever, while rank 0 sent it the next trial: the worker hung
    from bench.workers import run_study

    grid = load_grid(write_grid(GRID.replace("name: ddp", "name: ddp-fault").replace("epochs: 6", "epochs: 2")
                                .replace("seeds: [3]", "seeds: [0, 1]")))
    prepared = run_study(grid, workers=0, echo=lambda s: None)
    code, out = torchrun_with_fault("rank0-checkpoint", "bench", "worker", "--grid", str(grid.path), "--device",
                                    "cpu", "--no-progress", cwd=in_tmp)
    assert code != 0, out  # a trial failed
    trials = sorted(optuna_trials("ddp-fault", prepared.storage), key=lambda t: t.number)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE], out
    assert trials[0].user_attrs[ERROR_ATTR] == "OSError: No space left on device (injected)"
    runs = mlflow_children("ddp-fault", prepared.tracking_uri)
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"]
    # rank 1 learned why its trial ended
    assert "RankFailed: rank 0 failed: OSError: No space left on device (injected)" in out


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_rank_zero_failing_to_open_a_trials_run_fails_that_trial_and_the_other_ranks_go_on(in_tmp, write_grid,
                                                                                         tiny_dataset):
    # rank 0 sent the trial to rank 1, then could not open its MLflow run: rank 1 trained alone and waited in a
    # collective rank 0 never joined, while rank 0 sent the next trial; the job hung. Now rank 1 gets the trial only
    # once its run is open, and goes on to the next one.
    from bench.workers import run_study

    grid = load_grid(write_grid(GRID.replace("name: ddp", "name: ddp-start").replace("epochs: 6", "epochs: 1")
                                .replace("seeds: [3]", "seeds: [0, 1]")))
    prepared = run_study(grid, workers=0, echo=lambda s: None)
    code, out = torchrun_with_fault("rank0-start-trial", "bench", "worker", "--grid", str(grid.path), "--device",
                                    "cpu", "--no-progress", cwd=in_tmp, timeout=90)
    trials = sorted(optuna_trials("ddp-start", prepared.storage), key=lambda t: t.number)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE], out
    assert trials[0].user_attrs[ERROR_ATTR] == "MlflowException: the tracking store is locked (injected)", out
    runs = mlflow_children("ddp-start", prepared.tracking_uri)
    assert [r.info.status for r in runs] == ["FINISHED"], out  # the failed trial's run was never made
    assert code != 0, out  # a trial failed (before training: it used to exit 0)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_failure_on_rank_one_inside_a_training_step_ends_the_job_with_its_error(in_tmp, write_grid,
                                                                                 tiny_dataset):
    # rank 1 fails mid-epoch, where the ranks meet only in DDP's all-reduce: rank 1 used to wait for rank 0's next
    # trial while rank 0 waited in the all-reduce, both forever. Now rank 1's worker stops, naming its error, and
    # torchrun ends rank 0.
    from bench.workers import run_study

    grid = load_grid(write_grid(GRID.replace("name: ddp", "name: ddp-step").replace("epochs: 6", "epochs: 2")))
    run_study(grid, workers=0, echo=lambda s: None)
    code, out = torchrun_with_fault("rank1-step", "bench", "worker", "--grid", str(grid.path), "--device", "cpu",
                                    "--no-progress", cwd=in_tmp)
    assert code != 0, out
    assert "bench: rank 1 failed in a training step (RuntimeError: data error on rank 1 (injected))" in out, out


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("fault", ["rank1-step", "rank1-step-rank0-busy"])
def test_a_failure_on_rank_one_inside_a_training_step_fails_the_trial_with_its_error_on_rank_zero(
        fault, in_tmp, write_grid, tiny_dataset):
    # torchrun ends rank 0 once rank 1's worker stopped: rank 0 either waited in DDP's all-reduce (gloo: "Connection
    # closed by peer", recorded as the trial's error, rank 1's only in rank 1's log) or was busy in its own step and
    # took torchrun's SIGTERM as an interruption (the trial queued again, to fail the same way on every restart).
    # Rank 1's error is the trial's, in Optuna and MLflow, and the trial is not queued again.
    from bench.workers import run_study

    grid = load_grid(write_grid(GRID.replace("name: ddp", "name: ddp-step").replace("epochs: 6", "epochs: 2")))
    prepared = run_study(grid, workers=0, echo=lambda s: None)
    code, out = torchrun_with_fault(fault, "bench", "worker", "--grid", str(grid.path), "--device", "cpu",
                                    "--no-progress", cwd=in_tmp)
    assert code != 0, out
    error = "RankFailed: rank 1 failed in a training step (RuntimeError: data error on rank 1 (injected))"
    trials = optuna_trials("ddp-step", prepared.storage)
    assert [t.state for t in trials] == [TrialState.FAIL], out  # no WAITING copy
    assert trials[0].user_attrs[ERROR_ATTR] == error, out
    runs = mlflow_children("ddp-step", prepared.tracking_uri)
    assert [(r.info.status, r.data.tags.get("error")) for r in runs] == [("FAILED", error)], out
    assert "bench: rank 1 failed in a training step (RuntimeError: data error on rank 1 (injected))" in out, out


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_torchrun_worker_stopped_with_sigterm_mid_step_queues_its_trial_again(in_tmp, write_grid, tiny_dataset):
    # a whole job stopped (a scheduler's SIGTERM to torchrun, passed on to every rank) with no rank failing: the
    # trial goes back in the queue, as in one process
    from bench.workers import run_study

    grid = load_grid(write_grid(GRID.replace("name: ddp", "name: ddp-stop").replace("epochs: 6", "epochs: 2")))
    prepared = run_study(grid, workers=0, echo=lambda s: None)
    code, out = torchrun_with_fault("pause", "bench", "worker", "--grid", str(grid.path), "--device", "cpu",
                                    "--no-progress", cwd=in_tmp,
                                    interrupt_when=[in_tmp / "paused-0", in_tmp / "paused-1"])
    assert code != 0, out
    trials = sorted(optuna_trials("ddp-stop", prepared.storage), key=lambda t: t.number)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING], out
    assert ERROR_ATTR not in trials[0].user_attrs and trials[1].system_attrs["retry_history"] == [0], out
    runs = mlflow_children("ddp-stop", prepared.tracking_uri)
    assert [(r.info.status, r.data.tags.get("marginbench.status")) for r in runs] == [("KILLED", "interrupted")], out


def test_a_sigterm_while_a_step_failure_is_shared_waits_for_it_then_is_raised_or_dropped():
    # torchrun's SIGTERM can reach rank 0 while it reads the other ranks' failures: raised inside, it would be taken
    # for an interruption (the trial queued again) before the failure was known
    from bench.distributed import _sigterm_held

    def on_sigterm(signum, frame):
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        with pytest.raises(KeyboardInterrupt):  # no failure found: the SIGTERM is an interruption, raised after
            with _sigterm_held():
                os.kill(os.getpid(), signal.SIGTERM)
                reached = True
        assert reached and signal.getsignal(signal.SIGTERM) is on_sigterm
        with _sigterm_held() as ignore:  # another rank failed: the SIGTERM is torchrun ending the job for it
            os.kill(os.getpid(), signal.SIGTERM)
            ignore()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGTERM)  # ignored from then on
    finally:
        signal.signal(signal.SIGTERM, before)


def _one_epoch_grid(write_grid, name: str) -> Path:
    """GRID as grid ``name``, one epoch."""
    return write_grid(GRID.replace("name: ddp", f"name: {name}").replace("epochs: 6", "epochs: 1"))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_distributed_whose_recording_fails_on_rank_zero_ends_every_rank_with_one_line(tmp_path, write_grid):
    # rank 0 trained the trial, then the tracking store failed as its result was recorded and again as that failure
    # was: rank 0 left with RecordingFailed's traceback, skipping the exit barrier that rank 1 was waiting in, and
    # rank 1 died there with gloo's "Connection closed by peer". Now rank 0 prints one line naming the trial and both
    # errors and exits 1, after meeting rank 1 in the barrier.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code, out = torchrun_with_fault("rank0-record", "distributed", "--grid",
                                    str(_one_epoch_grid(write_grid, "ddp-record")), "--device", "cpu",
                                    "--tracking", "--tracking-uri", uri, cwd=tmp_path, timeout=150)
    assert code == 1, out
    error = ("MlflowException: the tracking store is locked (injected, recording the result) (and the tracking store "
             "failed as it was recorded: MlflowException: the tracking store is locked (injected, recording the "
             "failure))")
    assert f"bench.distributed: cosface seed=3: failed: {error}" in out, out
    assert "Connection closed by peer" not in out and "RecordingFailed" not in out, out
    assert "[rank1]" not in out, out  # no traceback from rank 1
    runs = mlflow_children("ddp-record", uri)
    assert [(r.info.status, r.data.tags.get("error")) for r in runs] == [("FAILED", error)], out


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(("fault", "store_error"), [
    ("rank0-tracker", "MlflowException: the tracking server answered 503 (injected)"),
    ("rank0-start-trial", "MlflowException: the tracking store is locked (injected)")])
def test_bench_distributed_whose_run_cannot_open_on_rank_zero_tells_every_rank(fault, store_error, tmp_path,
                                                                               write_grid):
    # rank 0 could not open the study's or the trial's MLflow run and left with the store's traceback, while rank 1,
    # already training, waited in a collective rank 0 never joined, until rank 0's exit broke the connection (gloo's
    # "Connection closed by peer" traceback; the store's error only in rank 0's log). Now rank 1 trains only once
    # rank 0's run is open, and both ranks say why the trial did not train, in one line each.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code, out = torchrun_with_fault(fault, "distributed", "--grid", str(_one_epoch_grid(write_grid, "ddp-open")),
                                    "--device", "cpu", "--tracking", "--tracking-uri", uri, cwd=tmp_path, timeout=120)
    assert code == 1, out
    why = f"not trained: the MLflow tracking store {uri} failed as its run was opened ({store_error})"
    assert f"bench.distributed: cosface seed=3: {why}\n" in out, out
    assert f"bench.distributed: rank 1: cosface seed=3: rank 0 failed: {why}\n" in out, out
    assert "Connection closed by peer" not in out and "[rank" not in out, out  # no rank's traceback
    assert "Root Cause" in out and "rank      : 0 (local_rank: 0)" in out.split("Root Cause")[1], out


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_distributed_with_tracking_ends_both_ranks_together_after_an_agreed_failure(tmp_path, write_grid):
    # rank 0's checkpoint write fails after epoch 0 and every rank stops there (agreed): rank 0 recorded the failure and
    # waited in the exit barrier, while rank 1 left with RankFailed's traceback without joining it, so rank 0 died
    # there (gloo's "Connection closed by peer") or was ended by torchrun. Now both meet in the barrier; rank 1 says
    # in one line that the trial failed on rank 0, and rank 0 is the job's failure.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code, out = torchrun_with_fault("rank0-checkpoint", "distributed", "--grid",
                                    str(_one_epoch_grid(write_grid, "ddp-agreed")), "--device", "cpu", "--tracking",
                                    "--tracking-uri", uri, "--checkpoint", str(tmp_path / "ddp.pt"), cwd=tmp_path)
    assert code == 1, out
    error = "OSError: No space left on device (injected)"
    assert f"cosface seed=3: failed {error}\n" in out, out
    assert f"bench.distributed: rank 1: cosface seed=3: rank 0 failed: {error}\n" in out, out
    assert "Connection closed by peer" not in out and "[rank" not in out, out  # no rank's traceback
    runs = mlflow_children("ddp-agreed", uri)
    assert [(r.info.status, r.data.tags.get("error")) for r in runs] == [("FAILED", error)], out


def test_bench_distributed_in_one_process_says_in_one_line_that_the_tracking_store_failed(tmp_path, write_grid,
                                                                                         tiny_dataset, monkeypatch,
                                                                                         capsys):
    # without torchrun too, a store that failed as the trial's run opened, or as its outcome was recorded, left
    # `python -m bench.distributed --tracking` with a traceback; now one line names the trial and the errors, exit 1
    from mlflow.exceptions import MlflowException

    import bench.runner
    from bench.distributed import main
    from bench.tracking import StudyTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = ["--grid", str(_one_epoch_grid(write_grid, "one-process")), "--device", "cpu", "--tracking",
            "--tracking-uri", uri]

    def locked(*args, **kwargs):
        raise MlflowException("the tracking store is locked (injected)")

    with monkeypatch.context() as patch:
        patch.setattr(StudyTracker, "start_trial", locked)
        assert main(argv) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == (f"bench.distributed: cosface seed=3: not trained: the MLflow tracking store {uri} failed as "
                       f"its run was opened (MlflowException: the tracking store is locked (injected))")
    monkeypatch.setattr(bench.runner, "_finish_run", locked)
    monkeypatch.setattr(StudyTracker, "record_failure", locked)
    assert main(argv) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == ("bench.distributed: cosface seed=3: failed: MlflowException: the tracking store is locked "
                       "(injected) (and the tracking store failed as it was recorded: MlflowException: the tracking "
                       "store is locked (injected))")


@pytest.mark.parametrize("tail, sets", [
    ("", ["--set", "epochs=yes"]),  # shown as typed: it read "--set epochs=true", the value re-rendered
    ("workers: 0\n", []),  # a study key: it was not checked, and the trial trained
    ("", ["--set", "epochs"]),  # not KEY=VALUE: a SystemExit message, exit 1 from python -m bench.distributed
])
def test_bench_distributed_reports_the_grid_error_bench_run_does_and_exits_2(tail, sets, tmp_path, write_grid,
                                                                             capsys):
    from bench.cli import main as bench
    from bench.distributed import main

    argv = ["--grid", str(write_grid(FACES_GRID + tail)), *sets]
    assert bench(["run", "--validate-only", *argv]) == 2
    expected = capsys.readouterr().err
    assert expected.startswith("bench: ") and expected.count("\n") == 1, expected
    assert main([*argv, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err == expected.replace("bench: invalid grid:", "bench.distributed: invalid grid:"), (err, expected)


def test_python_m_bench_distributed_exits_2_on_a_bad_study_key_before_training(tmp_path, write_grid):
    grid = write_grid(FACES_GRID + "workers: 0\n")
    proc = subprocess.run([sys.executable, "-m", "bench.distributed", "--grid", str(grid), "--device", "cpu"],
                          cwd=tmp_path, env=bench_env(), capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout) == (2, ""), proc.stdout + proc.stderr
    assert proc.stderr == f"bench.distributed: invalid grid: {grid}: workers: must be a positive integer, but got 0\n"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_distributed_interrupted_on_rank_zero_before_training_ends_every_rank_with_one_line(tmp_path,
                                                                                                  write_grid):
    # a Ctrl-C on rank 0 as its trial's MLflow run opened (`except Exception` let it through) told rank 1 nothing:
    # rank 1 waited in the broadcast until rank 0's exit broke the connection and died there with gloo's traceback,
    # named by torchrun as the job's root cause. Now rank 1 is told and says so in one line; rank 0 exits 130.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code, out = torchrun_with_fault("rank0-interrupt-open", "distributed", "--grid",
                                    str(_one_epoch_grid(write_grid, "ddp-interrupt")), "--device", "cpu",
                                    "--tracking", "--tracking-uri", uri, cwd=tmp_path, timeout=120)
    assert code != 0, out
    assert "bench.distributed: cosface seed=3: interrupted before training\n" in out, out
    assert ("bench.distributed: rank 1: cosface seed=3: rank 0 was interrupted (Ctrl-C or SIGTERM) before training; "
            "not trained\n") in out, out
    assert "Connection closed by peer" not in out and "[rank" not in out, out  # no rank's traceback
    root = out.split("Root Cause")[1]
    assert "rank      : 0 (local_rank: 0)" in root and "exitcode  : 130" in root, out
    runs = mlflow_children("ddp-interrupt", uri)
    assert [(r.info.status, r.data.tags.get("marginbench.status")) for r in runs] == [("KILLED", "interrupted")], out


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_distributed_stopped_with_sigterm_mid_step_closes_its_run_as_interrupted(tmp_path, write_grid):
    # a scheduler's SIGTERM to torchrun, passed on to every rank: `python -m bench.distributed` had no handler, so
    # rank 0 died at once and its trial's MLflow run stayed RUNNING forever. Now SIGTERM is taken as Ctrl-C, as in
    # `bench run` and `bench worker`: the run is closed KILLED, marginbench.status "interrupted".
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    grid = _one_epoch_grid(write_grid, "ddp-sigterm")
    code, out = torchrun_with_fault("pause", "distributed", "--grid", str(grid), "--device", "cpu", "--tracking",
                                    "--tracking-uri", uri, cwd=tmp_path, timeout=120,
                                    interrupt_when=[tmp_path / "paused-0", tmp_path / "paused-1"])
    assert code != 0, out
    assert "bench.distributed: cosface seed=3: interrupted\n" in out, out
    assert "bench.distributed: rank 1: cosface seed=3: interrupted\n" in out, out
    assert "[rank" not in out, out  # no rank's traceback
    runs = mlflow_children("ddp-sigterm", uri)
    assert [(r.info.status, r.data.tags.get("marginbench.status")) for r in runs] == [("KILLED", "interrupted")], out


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_torchrun_worker_interrupted_on_rank_zero_before_training_stops_every_rank_with_one_line(
        in_tmp, write_grid, tiny_dataset):
    # rank 0 told the others to stop as usual, then skipped the exit barrier (interrupted) that they went on to wait
    # in: they died there with gloo's traceback, named as the job's root cause. Now rank 1 says rank 0 was
    # interrupted, both meet in the barrier, and the trial goes back in the queue.
    from bench.workers import run_study

    grid = load_grid(_one_epoch_grid(write_grid, "ddp-int"))
    prepared = run_study(grid, workers=0, echo=lambda s: None)
    code, out = torchrun_with_fault("rank0-interrupt-open", "bench", "worker", "--grid", str(grid.path), "--device",
                                    "cpu", "--no-progress", cwd=in_tmp, timeout=90)
    assert code != 0, out
    assert "bench worker: rank 1: rank 0 was interrupted (Ctrl-C or SIGTERM); this rank stops too\n" in out, out
    assert "Connection closed by peer" not in out and "[rank" not in out, out  # no rank's traceback
    root = out.split("Root Cause")[1]
    assert "rank      : 0 (local_rank: 0)" in root and "exitcode  : 130" in root, out
    trials = sorted(optuna_trials("ddp-int", prepared.storage), key=lambda t: t.number)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING], out


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_torchrun_worker_stopped_with_sigterm_before_a_trial_opens_ends_both_ranks_in_the_exit_barrier(
        in_tmp, write_grid, tiny_dataset):
    # the whole job stopped (SIGTERM to torchrun, passed on to every rank) while rank 0 was about to open a trial's
    # run and rank 1 waited for its word: rank 0 tells rank 1 to stop and waits in the exit barrier, and rank 1,
    # whose SIGTERM is raised once that stop has come, must join it rather than leave rank 0 with gloo's traceback
    from bench.workers import run_study

    grid = load_grid(_one_epoch_grid(write_grid, "ddp-term"))
    prepared = run_study(grid, workers=0, echo=lambda s: None)
    code, out = torchrun_with_fault("rank0-pause-open", "bench", "worker", "--grid", str(grid.path), "--device", "cpu",
                                    "--no-progress", cwd=in_tmp, timeout=90,
                                    interrupt_when=[in_tmp / "paused-0", in_tmp / "paused-1"])
    assert code != 0, out
    assert "Connection closed by peer" not in out and "Connection reset by peer" not in out, out
    assert "[rank" not in out, out  # no rank's traceback
    trials = sorted(optuna_trials("ddp-term", prepared.storage), key=lambda t: t.number)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING], out


def test_an_interrupt_inside_a_broadcast_is_raised_once_the_whole_object_went(monkeypatch):
    # an object goes in two collectives (its size, then its bytes); a SIGTERM handled between them left the rank gone
    # mid-message, and rank 0 failed in the second one ("Connection closed by peer") as it sent its stop
    import torch.distributed as dist

    from bench.distributed import DistContext, broadcast_object

    went: list[str] = []

    def two_collectives(box, src):
        went.append("size")
        signal.raise_signal(signal.SIGINT)  # Python runs the handler before raise_signal returns
        went.append("bytes")
        box[0] = ("stop",)

    monkeypatch.setattr(dist, "broadcast_object_list", two_collectives)
    with pytest.raises(KeyboardInterrupt):
        broadcast_object(None, DistContext(rank=1, world_size=2, local_rank=1, backend="gloo", device="cpu"))
    assert went == ["size", "bytes"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_interrupt_inside_agrees_broadcast_is_raised_once_the_whole_failure_went(monkeypatch):
    # `agree` sends a failed rank's error in the same two collectives: a SIGTERM at an epoch end handled between them
    # left this rank gone mid-message, and the failed rank's second collective met nobody
    import torch.distributed as dist

    from bench.distributed import DistContext, RankFailed, agree

    went: list[str] = []
    interrupt = [True]

    def rank_zero_failed(t, op):
        t.copy_(torch.tensor([0, 1]))

    def two_collectives(box, src):
        assert src == 0
        went.append("size")
        if interrupt:
            signal.raise_signal(signal.SIGINT)  # Python runs the handler before raise_signal returns
        went.append("bytes")
        box[0] = "OSError: No space left on device"

    monkeypatch.setattr(dist, "all_reduce", rank_zero_failed)
    monkeypatch.setattr(dist, "broadcast_object_list", two_collectives)
    rank_one = DistContext(rank=1, world_size=2, local_rank=1, backend="gloo", device="cpu")
    with pytest.raises(KeyboardInterrupt):
        agree(None, False, rank_one, "cpu")
    assert went == ["size", "bytes"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    interrupt.clear()  # no interrupt: rank 0's error, as before
    with pytest.raises(RankFailed, match=r"^rank 0 failed: OSError: No space left on device$"):
        agree(None, False, rank_one, "cpu")
