"""Resumption: a trial left running by a dead process runs again, from its checkpoint, once."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from optuna.trial import TrialState

from bench.grid import load_grid
from bench.study import OWNER_ATTR, StudyConfig, open_storage, prepare_study, trial_spec, worker_identity
from bench.tracking import StudyTracker
from bench.trial import TrialOptions, run_trial
from bench.workers import checkpoint_folder, run_study
from tests.sweeps.conftest import mlflow_children, optuna_trials

GRID = """\
name: resume
base: {dataset: tiny-blobs, backbone: lenet++, embedding_dim: 4, epochs: 3, batch_size: 16, eval_batch_size: 64}
grid:
  loss: [softmax, cosface]
seeds: [0]
"""


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def die_in_second_epoch(epoch: int, metrics: dict) -> None:
    if epoch == 1:  # before that epoch's checkpoint: the one of epoch 0 is what stays
        raise KeyboardInterrupt


def test_trial_of_a_dead_process_reruns_from_its_checkpoint_exactly_once(in_tmp, tiny_dataset, write_grid):
    grid = load_grid(write_grid(GRID))
    config = StudyConfig.from_grid(grid)
    storage_url = str(in_tmp / "optuna.journal")
    tracker = StudyTracker(grid.name)
    study = prepare_study(grid, config, open_storage(storage_url))
    # A process pops trial 0, opens its MLflow run, saves the checkpoint of epoch 1 of 3, and dies in epoch 2.
    trial_id = study._pop_waiting_trial_id()
    frozen = study._storage.get_trial(trial_id)
    study._storage.set_trial_system_attr(trial_id, OWNER_ATTR, {**worker_identity(), "pid": dead_pid()})
    spec = trial_spec(frozen, config)
    tracker.start_trial(spec, trial_number=frozen.number)  # left RUNNING
    ckpt = checkpoint_folder(storage_url, grid.name) / f"{spec.key()}.pt"
    with pytest.raises(KeyboardInterrupt):
        run_trial(spec, TrialOptions(progress=False, checkpoint_path=ckpt, on_epoch=die_in_second_epoch))
    assert torch.load(ckpt, weights_only=False)["epoch"] == 0

    report = run_study(load_grid(grid.path), progress=False, echo=lambda s: None)
    assert report.counts["finished"] == 2
    trials = optuna_trials("resume", report.storage)
    # the dead trial was failed and queued again with the same key; every key completed exactly once
    assert [t.state for t in trials].count(TrialState.FAIL) == 1
    complete = [t.user_attrs["marginbench.key"] for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(complete) == sorted({t.user_attrs["marginbench.key"] for t in trials})
    retried = next(t for t in trials
                   if t.state == TrialState.COMPLETE and t.user_attrs["marginbench.key"] == spec.key())
    assert retried.system_attrs["retry_history"] == [frozen.number]
    other = next(t for t in trials if t.state == TrialState.COMPLETE and t is not retried)
    assert retried.datetime_start < other.datetime_start  # the retry, queued last, ran first: it had a checkpoint

    runs = [r for r in mlflow_children("resume", report.tracking_uri)
            if r.data.tags["marginbench.trial_key"] == spec.key()]
    by_status = sorted(r.data.tags["marginbench.status"] for r in runs)
    assert by_status == ["finished", "interrupted"]  # the dead one is closed as interrupted, not counted
    finished = next(r for r in runs if r.data.tags["marginbench.status"] == "finished")
    assert finished.data.tags["resumed_from_epoch"] == "1"  # from the checkpoint, not from the start
    from mlflow.tracking import MlflowClient

    history = MlflowClient(report.tracking_uri).get_metric_history(finished.info.run_id, "test_acc")
    assert sorted(m.step for m in history) == [0, 1, 2]  # the restored epoch is in the run too
    assert not ckpt.exists()  # deleted once the trial ended


def test_run_finished_in_mlflow_but_not_told_to_optuna_is_adopted_not_retrained(in_tmp, tiny_dataset, write_grid):
    from bench.runner import execute_trial

    grid = load_grid(write_grid(GRID))
    config = StudyConfig.from_grid(grid)
    tracker = StudyTracker(grid.name)
    study = prepare_study(grid, config, open_storage(str(in_tmp / "optuna.journal")))
    trial_id = study._pop_waiting_trial_id()
    study._storage.set_trial_system_attr(trial_id, OWNER_ATTR, {**worker_identity(), "pid": dead_pid()})
    spec = trial_spec(study._storage.get_trial(trial_id), config)
    execute_trial(spec, tracker, TrialOptions(progress=False))  # the process died right after this

    report = run_study(load_grid(grid.path), progress=False, echo=lambda s: None)
    assert report.counts["finished"] == 2
    assert [o.spec.key() for o in report.outcomes] != [spec.key()] and len(report.outcomes) == 1  # only the other
    runs = [r for r in mlflow_children("resume", report.tracking_uri)
            if r.data.tags["marginbench.trial_key"] == spec.key()]
    assert len(runs) == 1
    adopted = [t for t in optuna_trials("resume", report.storage) if t.user_attrs.get("marginbench.adopted_run")]
    assert adopted[0].value == runs[0].data.metrics["test_acc"]


def test_heartbeat_requeues_a_trial_whose_process_on_another_machine_stopped_beating(
        in_tmp, tiny_dataset, write_grid, monkeypatch):
    import time

    import bench.study

    monkeypatch.setattr(bench.study, "HEARTBEAT_INTERVAL", 1)
    monkeypatch.setattr(bench.study, "HEARTBEAT_GRACE", 2)
    url = f"sqlite:///{in_tmp / 'optuna.db'}"  # an RDB storage, as PostgreSQL would be
    grid = load_grid(write_grid(GRID))
    study = prepare_study(grid, StudyConfig.from_grid(grid), open_storage(url))
    trial_id = study._pop_waiting_trial_id()
    # a worker elsewhere (its pid means nothing here) beat once, then went silent
    study._storage.set_trial_system_attr(trial_id, OWNER_ATTR, {"host": "elsewhere/boot", "pid": 1, "start": ""})
    study._storage.record_heartbeat(trial_id)
    time.sleep(3)
    report = run_study(load_grid(grid.path), storage=url, progress=False, echo=lambda s: None)
    assert report.counts["finished"] == 2
    trials = optuna_trials("resume", url)
    assert [t.state for t in trials].count(TrialState.FAIL) == 1 and len(trials) == 3
    retry = next(t for t in trials if t.system_attrs.get("retry_history"))
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["marginbench.slot"] == \
        study._storage.get_trial(trial_id).user_attrs["marginbench.slot"]


def test_ctrl_c_gives_the_trial_back_and_closes_its_run_as_interrupted(in_tmp, tiny_dataset, write_grid, monkeypatch,
                                                                       caplog):
    import logging

    import pytest

    import bench.runner

    grid = load_grid(write_grid(GRID))
    real = bench.runner.run_trial

    def interrupted(spec, options):
        raise KeyboardInterrupt  # Ctrl-C, or SIGTERM turned into it by `bench run` / `bench worker`

    monkeypatch.setattr(bench.runner, "run_trial", interrupted)
    with pytest.raises(KeyboardInterrupt), caplog.at_level(logging.WARNING, logger="bench.study"):
        run_study(grid, progress=False, echo=lambda s: None)
    # the log says why it was queued again (it used to blame a process that died)
    assert "was interrupted (Ctrl-C or SIGTERM); queued again" in caplog.text and "died" not in caplog.text
    trials = optuna_trials("resume", str(in_tmp / "optuna.journal"))
    assert [t.state for t in trials].count(TrialState.WAITING) == 2  # the other one, and a copy of ours
    assert [t.state for t in trials].count(TrialState.FAIL) == 1
    runs = mlflow_children("resume", f"sqlite:///{in_tmp / 'mlflow.db'}")
    assert [(r.info.status, r.data.tags["marginbench.status"]) for r in runs] == [("KILLED", "interrupted")]

    monkeypatch.setattr(bench.runner, "run_trial", real)
    report = run_study(load_grid(grid.path), progress=False, echo=lambda s: None)
    assert report.counts["finished"] == 2 and len(report.outcomes) == 2


def test_a_second_ctrl_c_while_the_trial_is_given_back_does_not_lose_it(in_tmp, tiny_dataset, write_grid,
                                                                         monkeypatch):
    """From a terminal, Ctrl-C reaches a `bench run` worker process directly and `stop_workers` sends it another
    SIGINT a moment later: the second one used to land between the trial's FAIL and its copy in the queue,
    so the trial stayed failed and no `bench worker` ran it again."""
    import os
    import signal

    import pytest

    import bench.runner
    import bench.workers

    grid = load_grid(write_grid(GRID))

    def interrupted(spec, options):
        raise KeyboardInterrupt

    real_requeue = bench.workers.requeue_trial

    def requeue_after_another_sigint(study, trial, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # the parent's SIGINT, arriving while the trial is put back
        real_requeue(study, trial, **kwargs)

    monkeypatch.setattr(bench.runner, "run_trial", interrupted)
    monkeypatch.setattr(bench.workers, "requeue_trial", requeue_after_another_sigint)
    # as in a terminal: pytest started in the background by a non-interactive shell inherits SIGINT ignored
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_study(grid, progress=False, echo=lambda s: None)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, outer)
    trials = optuna_trials("resume", str(in_tmp / "optuna.journal"))
    states = [t.state for t in trials]
    assert states.count(TrialState.FAIL) == 1 and states.count(TrialState.WAITING) == 2, states
    retry = next(t for t in trials if t.state == TrialState.WAITING and t.system_attrs.get("retry_history"))
    assert retry.user_attrs["marginbench.slot"] == trials[0].user_attrs["marginbench.slot"]
