"""A study in one process on tiny generated data: finished, diverged and crashed trials in both stores."""

from __future__ import annotations

import pytest
from optuna.trial import TrialState

from bench.grid import load_grid
from bench.workers import run_study
from tests.sweeps.conftest import mlflow_children, optuna_trials

GRID = """\
name: outcomes
base: {dataset: tiny-blobs, backbone: lenet++, embedding_dim: 4, epochs: 2, batch_size: 16, eval_batch_size: 64}
grid:
  loss:
    - {label: softmax, loss: softmax}
    - {label: cosface, loss: {name: cosface, s: 10.0, m: 0.1}}
    - {label: exploding, loss: softmax, optimizer: {name: adam, lr: 1.0e+30}}
seeds: [0]
"""


@pytest.fixture
def broken_dataset():
    """``broken``: a dataset whose factory raises at load time (after the grid validated it)."""
    from registry import DATASETS

    @DATASETS.register("broken")
    def broken() -> None:
        """Raises."""
        raise RuntimeError("the disk went away")

    yield "broken"
    DATASETS.unregister("broken")


def test_diverged_trial_is_marked_in_both_stores_and_the_others_finish(in_tmp, tiny_dataset, write_grid):
    grid = load_grid(write_grid(GRID))
    report = run_study(grid, progress=False, echo=lambda s: None)
    assert report.counts == {"finished": 2, "pruned": 0, "diverged": 1, "failed": 0, "waiting": 0, "running": 0}
    assert report.ok  # diverging is a result, not an error

    trials = {t.user_attrs["marginbench.labels"]["loss"]: t for t in optuna_trials("outcomes", report.storage)}
    assert len(trials) == 3
    assert trials["softmax"].state == trials["cosface"].state == TrialState.COMPLETE
    nan = trials["exploding"]
    # Optuna: FAIL, with the epoch/step and the reason
    assert nan.state == TrialState.FAIL
    assert nan.user_attrs["marginbench.diverged"].startswith("epoch=0 step=")
    assert "NaN or inf" in nan.user_attrs["marginbench.fail_reason"]

    runs = {r.data.tags["label.loss"]: r for r in mlflow_children("outcomes", report.tracking_uri)}
    assert len(runs) == 3
    assert runs["softmax"].info.status == runs["cosface"].info.status == "FINISHED"
    # MLflow: FAILED with a diverged tag naming the epoch and step
    assert runs["exploding"].info.status == "FAILED"
    assert runs["exploding"].data.tags["marginbench.status"] == "diverged"
    assert runs["exploding"].data.tags["diverged"] == nan.user_attrs["marginbench.diverged"]
    # each Optuna trial names its MLflow run, and the objective is the run's last test_acc
    assert trials["softmax"].user_attrs["marginbench.mlflow_run_id"] == runs["softmax"].info.run_id
    assert trials["softmax"].value == pytest.approx(runs["softmax"].data.metrics["test_acc"])
    # the study's own run ends with the study, with what became of its trials
    from mlflow.tracking import MlflowClient

    parent = MlflowClient(report.tracking_uri).get_run(runs["softmax"].data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED" and parent.info.end_time is not None
    assert parent.data.tags["marginbench.counts"] == "2 finished, 1 diverged"


def test_exception_is_recorded_with_traceback_and_the_study_goes_on(in_tmp, tiny_dataset, broken_dataset, write_grid):
    grid = load_grid(write_grid("""\
        name: crash
        base: {dataset: tiny-blobs, backbone: lenet++, embedding_dim: 4, epochs: 1, batch_size: 16}
        grid:
          dataset: [broken, tiny-blobs]
        """))
    report = run_study(grid, progress=False, echo=lambda s: None)
    assert report.counts["failed"] == 1 and report.counts["finished"] == 1
    assert not report.ok
    failed = [t for t in optuna_trials("crash", report.storage) if t.state == TrialState.FAIL]
    assert "the disk went away" in failed[0].user_attrs["marginbench.error"]
    run = next(r for r in mlflow_children("crash", report.tracking_uri) if r.info.status == "FAILED")
    from mlflow.tracking import MlflowClient

    text = MlflowClient(report.tracking_uri).download_artifacts(run.info.run_id, "traceback.txt")
    assert "RuntimeError: the disk went away" in open(text).read()


def test_a_storage_error_while_recording_a_trained_trial_fails_that_trial_not_the_worker(in_tmp, tiny_dataset,
                                                                                        write_grid, monkeypatch):
    # The first write after training (the MLflow run id) raising once, as a storage hiccup would: the trial is
    # marked failed with the error and the study goes on to the next; it escaped the worker, leaving the trial
    # RUNNING until the stale-trial reaper re-queued it.
    import optuna

    from bench.study import RUN_ATTR

    real = optuna.trial.Trial.set_user_attr
    raised = []

    def flaky(self, key, value):
        if key == RUN_ATTR and not raised:
            raised.append(key)
            raise RuntimeError("storage went away for a moment")
        return real(self, key, value)

    monkeypatch.setattr(optuna.trial.Trial, "set_user_attr", flaky)
    grid = load_grid(write_grid("""\
        name: flaky
        base: {dataset: tiny-blobs, backbone: lenet++, embedding_dim: 4, epochs: 1, batch_size: 16}
        grid:
          loss: [softmax, cosface]
        """))
    report = run_study(grid, progress=False, echo=lambda s: None)
    assert raised and report.counts["failed"] == 1 and report.counts["finished"] == 1
    states = sorted(t.state.name for t in optuna_trials("flaky", report.storage))
    assert states == ["COMPLETE", "FAIL"]
    failed = next(t for t in optuna_trials("flaky", report.storage) if t.state == TrialState.FAIL)
    assert "storage went away for a moment" in failed.user_attrs["marginbench.error"]


def test_rerun_trains_nothing_again_and_retries_a_crashed_trial(in_tmp, tiny_dataset, broken_dataset, write_grid):
    path = write_grid("""\
        name: again
        base: {dataset: tiny-blobs, backbone: lenet++, embedding_dim: 4, epochs: 1, batch_size: 16}
        grid:
          dataset: [broken, tiny-blobs]
        seeds: [0, 1]
        """)
    first = run_study(load_grid(path), progress=False, echo=lambda s: None)
    assert first.counts["finished"] == 2 and first.counts["failed"] == 2
    second = run_study(load_grid(path), progress=False, echo=lambda s: None)
    # the finished trials are kept; only the two that raised run again (and raise again)
    assert [o.spec.dataset for o in second.outcomes] == ["broken", "broken"]
    trials = optuna_trials("again", second.storage)
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2 and len(trials) == 6


def test_changed_override_enqueues_the_new_trials_and_drops_the_old_waiting_ones(in_tmp, tiny_dataset, write_grid):
    from bench.study import StudyConfig, open_storage, prepare_study, study_summary

    path = write_grid("""\
        name: changed
        base: {dataset: tiny-blobs, backbone: lenet++, embedding_dim: 4, epochs: 1, batch_size: 16}
        seeds: [0, 1]
        """)
    storage = open_storage(str(in_tmp / "optuna.journal"))
    grid = load_grid(path)
    study = prepare_study(grid, StudyConfig.from_grid(grid), storage)
    assert study_summary(study)["waiting"] == 2
    again = prepare_study(grid, StudyConfig.from_grid(grid), storage)
    assert len(again.get_trials()) == 2  # enqueued once
    other = load_grid(path, overrides={"epochs": 2})
    study = prepare_study(other, StudyConfig.from_grid(other), storage)
    states = [(t.state, t.user_attrs.get("marginbench.fail_reason")) for t in study.get_trials()]
    assert states.count((TrialState.WAITING, None)) == 2
    assert states.count((TrialState.FAIL, "no longer in the grid")) == 2


def test_gpus_are_spread_round_robin_and_worker_zero_runs_in_this_process(in_tmp, tiny_dataset, write_grid,
                                                                          monkeypatch):
    import types

    import bench.workers

    started, ran_here = [], []

    class FakePopen:
        def __init__(self, cmd, env, preexec_fn=None):
            started.append((cmd, env))

        def wait(self):
            return 0

        def poll(self):
            return 0

    monkeypatch.setattr(bench.workers, "subprocess", types.SimpleNamespace(Popen=FakePopen))
    monkeypatch.setattr(bench.workers, "work", lambda *a, **k: ran_here.append(a[3]) or [])
    grid = load_grid(write_grid(GRID))
    run_study(grid, workers=5, gpus=["2", "3"], echo=lambda s: None)
    # worker 0 is this process on the first GPU; workers 1..4 alternate over the two GPUs
    assert ran_here[0].device == "cuda:2"
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env in started] == ["3", "2", "3", "2"]
    assert all(cmd[cmd.index("--device") + 1] == "cuda" for cmd, _ in started)
    assert [cmd[cmd.index("--worker-index") + 1] for cmd, _ in started] == ["1", "2", "3", "4"]


@pytest.mark.parametrize(("visible", "children"), [("4,5,6,7", ["7", "6", "7", "6"]),
                                                   ("GPU-a, GPU-b,GPU-c,GPU-d", ["GPU-d", "GPU-c", "GPU-d", "GPU-c"]),
                                                   ("", ["3", "2", "3", "2"])])
def test_gpu_ids_count_the_gpus_this_process_sees(in_tmp, tiny_dataset, write_grid, monkeypatch, visible, children):
    # Under CUDA_VISIBLE_DEVICES=4,5,6,7 (a cluster's allocation) worker 0 trains on cuda:2, which is GPU 6; the
    # children were given CUDA_VISIBLE_DEVICES=3 and 2, GPUs outside the allocation, instead of 7 and 6.
    import types

    import bench.workers

    started, ran_here = [], []

    class FakePopen:
        def __init__(self, cmd, env, preexec_fn=None):
            started.append(env)

        def wait(self):
            return 0

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    monkeypatch.setattr(bench.workers, "subprocess", types.SimpleNamespace(Popen=FakePopen))
    monkeypatch.setattr(bench.workers, "work", lambda *a, **k: ran_here.append(a[3]) or [])
    run_study(load_grid(write_grid(GRID)), workers=5, gpus=["2", "3"], echo=lambda s: None)
    assert ran_here[0].device == "cuda:2"
    assert [env["CUDA_VISIBLE_DEVICES"] for env in started] == children


def test_threads_given_for_a_single_worker_reach_it(in_tmp, tiny_dataset, write_grid):
    # `--threads N` used to be dropped when the study ran in one process (n == 1); the autouse fixture set 1
    import torch

    grid = load_grid(write_grid(GRID.replace("    - {label: exploding", "    # ")))
    run_study(grid, workers=1, threads=2, progress=False, echo=lambda s: None)
    assert torch.get_num_threads() == 2


def test_threads_must_be_a_positive_integer(in_tmp, capsys):
    from bench.cli import main

    for bad in ("0", "-2", "two"):
        with pytest.raises(SystemExit) as exit_:
            main(["run", "--grid", "quickstart", "--threads", bad])
        assert exit_.value.code == 2
        assert f"--threads: must be an integer >= 1, but got '{bad}'" in capsys.readouterr().err
    assert not (in_tmp / "mlflow.db").exists()


def test_a_typo_in_the_objective_is_named_once_and_the_fixed_rerun_trains_nothing(
        in_tmp, tiny_dataset, write_grid, caplog):
    import bench.workers

    typo = GRID.replace("    - {label: exploding, loss: softmax, optimizer: {name: adam, lr: 1.0e+30}}\n", "")
    path = write_grid(typo + "objective: {metric: tst_acc}\n")
    bench.workers._WARNED_OBJECTIVES.clear()
    report = run_study(load_grid(path), progress=False, echo=lambda s: None)
    assert report.counts["failed"] == 2
    warnings = [r.getMessage() for r in caplog.records if "objective.metric" in r.getMessage()]
    assert len(warnings) == 1  # once per process, not once per epoch and trial
    assert "'tst_acc'" in warnings[0] and "did you mean 'test_acc'" in warnings[0]

    lines: list[str] = []
    path.write_text(typo + "objective: {metric: test_acc}\n")
    fixed = run_study(load_grid(path), progress=False, echo=lines.append)
    assert fixed.counts["finished"] == 2 and fixed.outcomes == []  # adopted from the runs: nothing retrained
    adopted = [line for line in lines if "recorded by an earlier process" in line]
    assert sorted(line.split(":")[0].split(" ", 2)[2] for line in adopted) == ["cosface seed=0", "softmax seed=0"]


def test_the_objective_warning_suggests_close_names_once_per_metric(caplog):
    from bench.workers import _WARNED_OBJECTIVES, warn_missing_objective

    _WARNED_OBJECTIVES.clear()
    epoch = {"train_loss": 0.5, "train_acc": 0.8, "lr": 0.001, "test_acc": 0.75}
    assert not warn_missing_objective(epoch, "test_acc")
    assert warn_missing_objective(epoch, "tst_acc") and warn_missing_objective(epoch, "tst_acc")
    assert warn_missing_objective(epoch, "lfw_acc")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "'tst_acc'" in messages[0] and "did you mean 'test_acc' or 'train_acc'?" in messages[0]
    assert "lr, test_acc, train_acc, train_loss" in messages[0]
    assert "'lfw_acc'" in messages[1]


def test_the_objective_warning_puts_the_suggestion_beside_the_name_it_corrects(caplog):
    # before: "... log (lr, test_acc, train_acc, train_loss); did you mean 'test_acc' or 'train_acc'?. Optuna will ..."
    from bench.workers import _WARNED_OBJECTIVES, warn_missing_objective

    _WARNED_OBJECTIVES.clear()
    assert warn_missing_objective({"train_acc": 0.8, "test_acc": 0.75}, "tst_acc")
    assert warn_missing_objective({"test_acc": 0.75}, "zzzzzz")
    close, far = [r.getMessage() for r in caplog.records]
    assert close.startswith("objective.metric 'tst_acc' (did you mean 'test_acc' or 'train_acc'?) is not a metric "
                            "these trials log (test_acc, train_acc). Optuna will record each trial as failed")
    assert far.startswith("objective.metric 'zzzzzz' is not a metric these trials log (test_acc). Optuna will")
