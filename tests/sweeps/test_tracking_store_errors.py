"""A tracking store that fails while a worker runs trials (an MLflow server answering 500, a locked database):
the trials it failed are told FAIL with its error, their runs closed, and the worker goes on when the store works
again, or stops with one line naming the store when it keeps failing; no trial or run is left RUNNING."""

from __future__ import annotations

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from bench.grid import load_grid

GRID = """\
name: store
base: {dataset: tiny-blobs, backbone: lenet++, embedding_dim: 4, epochs: 1, batch_size: 16, eval_batch_size: 64}
grid:
  loss: [softmax, cosface, arcface, norm-softmax]
"""
URI = "sqlite:///mlflow.db"
ERROR = "API request failed with error code 500 != 200"


def _prepared(write_grid, in_tmp, uri: str = URI):
    from bench.study import StudyConfig, open_storage, prepare_study
    from bench.tracking import StudyTracker

    grid = load_grid(write_grid(GRID))
    storage = str(in_tmp / "optuna.journal")
    tracker = StudyTracker(grid.name, uri)
    prepare_study(
        grid,
        StudyConfig.from_grid(grid),
        open_storage(storage),
        mlflow={"tracking_uri": uri, "parent_run_id": tracker.parent_run_id},
    )
    return grid, storage


def _fails(monkeypatch, method: str, when) -> None:
    """``MlflowClient.<method>`` raises MlflowException on the calls for which ``when(n, kwargs)`` is true (``n``
    counts them from 1, from now on: the study's parent run is made already)."""
    real, calls = getattr(MlflowClient, method), []

    def failing(self, *args, **kwargs):
        calls.append(1)
        if when(len(calls), kwargs):
            raise MlflowException(ERROR)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, method, failing)


def _trials(name: str, storage: str) -> list:
    import optuna

    from bench.study import open_storage

    return optuna.load_study(study_name=name, storage=open_storage(storage, heartbeat=False)).get_trials()


def _states(name: str, storage: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in _trials(name, storage):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


def _runs(name: str) -> list[tuple[str, str]]:
    from bench.tracking import resolve_tracking_uri

    client = MlflowClient(resolve_tracking_uri(URI))  # absolute: MLflow keeps a store per URI, across tests
    runs = client.search_runs(
        [client.get_experiment_by_name(name).experiment_id], filter_string="tags.`marginbench.role` = 'trial'"
    )
    return sorted((r.info.status, r.data.tags["marginbench.status"]) for r in runs)


def _work(grid, storage, fuse: int, uri: str = URI) -> list[str]:
    from bench.workers import WorkerOptions, work

    lines: list[str] = []
    work(grid.name, storage, uri, WorkerOptions(device="cpu", fuse=fuse, poll_seconds=0.1), echo=lines.append)
    return lines


def test_a_store_error_as_a_fused_group_opens_its_runs_fails_the_group_and_the_worker_goes_on(
    in_tmp, tiny_dataset, write_grid, monkeypatch
):
    # the second create_run of a group of 3 fails once: the error escaped run_study_trials and ended the worker,
    # the first run and all three trials left RUNNING. The three trials FAIL with the error, the run opened is
    # closed as failed, and the worker, finding the store working, trains the fourth trial
    grid, storage = _prepared(write_grid, in_tmp)
    _fails(monkeypatch, "create_run", lambda n, kw: n == 2)
    lines = _work(grid, storage, fuse=3)
    trials = _trials(grid.name, storage)
    assert sorted(t.state.name for t in trials) == ["COMPLETE", "FAIL", "FAIL", "FAIL"]
    assert {t.user_attrs.get("marginbench.error") for t in trials if t.state.name == "FAIL"} == {
        f"MlflowException: {ERROR}"
    }
    assert _runs(grid.name) == [("FAILED", "failed"), ("FINISHED", "finished")]
    assert sum(f"failed MlflowException: {ERROR}" in line for line in lines) == 3


def test_a_store_error_as_the_params_are_written_closes_the_run_and_the_worker_goes_on(
    in_tmp, tiny_dataset, write_grid, monkeypatch
):
    # the trial failed, but its run stayed RUNNING in MLflow
    grid, storage = _prepared(write_grid, in_tmp)
    params_writes: list[int] = []

    def first_params_write(n, kwargs):
        if kwargs.get("params"):
            params_writes.append(n)
        return params_writes == [n]

    _fails(monkeypatch, "log_batch", first_params_write)
    _work(grid, storage, fuse=1)
    assert _states(grid.name, storage) == {"FAIL": 1, "COMPLETE": 3}
    assert _runs(grid.name) == [("FAILED", "failed")] + [("FINISHED", "finished")] * 3


@pytest.mark.parametrize("fuse", [1, 3])
def test_a_store_that_stays_down_stops_the_worker_with_one_line(in_tmp, tiny_dataset, write_grid, monkeypatch, fuse):
    # every trial after the first failed too, each in a moment, until the queue was empty; the worker stops once
    # the store does not answer its check, the popped trials told FAIL, the others still waiting
    grid, storage = _prepared(write_grid, in_tmp)
    _fails(monkeypatch, "create_run", lambda n, kw: True)
    _fails(monkeypatch, "get_experiment", lambda n, kw: True)
    with pytest.raises(SystemExit) as stop:
        _work(grid, storage, fuse=fuse)
    message = str(stop.value.code)
    assert "\n" not in message
    assert message.startswith(
        f"bench: the MLflow tracking store --tracking-uri (or $MLFLOW_TRACKING_URI) "
        f"sqlite:///{in_tmp.resolve() / 'mlflow.db'} keeps failing (MlflowException: {ERROR})"
    )
    assert _states(grid.name, storage) == {"FAIL": fuse, "WAITING": 4 - fuse}
    assert _runs(grid.name) == []


def test_a_store_whose_writes_keep_failing_stops_the_worker_after_three_trials(
    in_tmp, tiny_dataset, write_grid, monkeypatch
):
    # the store answers the worker's check (a read) but refuses every run: three trials fail, not the whole queue
    grid, storage = _prepared(write_grid, in_tmp)
    _fails(monkeypatch, "create_run", lambda n, kw: True)
    with pytest.raises(SystemExit, match="keeps failing"):
        _work(grid, storage, fuse=1)
    assert _states(grid.name, storage) == {"FAIL": 3, "WAITING": 1}


def test_a_store_error_as_the_study_run_reopens_gives_the_trial_back_and_stops(
    in_tmp, tiny_dataset, write_grid, monkeypatch
):
    # after the first pop, before the trial starts: the error ended the worker with a traceback, the popped trial
    # left RUNNING until a later process reaped it
    from bench.tracking import StudyTracker

    grid, storage = _prepared(write_grid, in_tmp)

    def store_down(self):
        raise MlflowException(ERROR)

    monkeypatch.setattr(StudyTracker, "reopen", store_down)
    with pytest.raises(SystemExit, match="keeps failing"):
        _work(grid, storage, fuse=1)
    assert _states(grid.name, storage) == {"FAIL": 1, "WAITING": 4}  # failed and queued again, as interrupted


def test_a_store_that_fails_at_the_start_stops_the_worker_with_one_line(in_tmp, tiny_dataset, write_grid, monkeypatch):
    # check_tracking_uri lets a server answering 500 through; the tracker's first look-up raised a traceback
    grid, storage = _prepared(write_grid, in_tmp)
    _fails(monkeypatch, "get_experiment_by_name", lambda n, kw: True)
    with pytest.raises(SystemExit, match=r"tracking store .*mlflow\.db keeps failing") as stop:
        _work(grid, storage, fuse=1)
    assert "\n" not in str(stop.value.code)
    assert _states(grid.name, storage) == {"WAITING": 4}


def test_a_store_that_fails_as_bench_run_starts_stops_it_with_one_line(in_tmp, tiny_dataset, write_grid, monkeypatch):
    # bench run makes the study's MLflow run before it enqueues anything: MLflow's traceback, before
    from bench.workers import run_study

    grid = load_grid(write_grid(GRID))
    _fails(monkeypatch, "get_experiment_by_name", lambda n, kw: True)
    with pytest.raises(SystemExit, match=r"tracking store .*mlflow\.db keeps failing \(MlflowException: API") as stop:
        run_study(
            grid, storage=str(in_tmp / "optuna.journal"), tracking_uri=URI, workers=1, device="cpu", echo=lambda s: None
        )
    assert "\n" not in str(stop.value.code)


def _crashing(monkeypatch, loss: str, crashed: list[str]) -> None:
    """Training the trial of ``loss`` raises RuntimeError (noted in ``crashed``); the others train for real."""
    import bench.runner

    real = bench.runner.run_trial

    def run_trial(spec, options):
        if spec.labels.get("loss") == loss:
            crashed.append(loss)
            raise RuntimeError("CUDA out of memory")
        return real(spec, options)

    monkeypatch.setattr(bench.runner, "run_trial", run_trial)


def test_a_store_error_as_a_crash_is_recorded_fails_the_trial_with_both_errors(
    in_tmp, tiny_dataset, write_grid, monkeypatch
):
    # the cosface trial crashes and its run's close fails once: Optuna was told only the store's MlflowException,
    # the RuntimeError lost. It is told both now, the run keeps both in its error tag, and the worker goes on
    uri = f"sqlite:///{in_tmp / 'mlflow.db'}"
    grid, storage = _prepared(write_grid, in_tmp, uri)
    crashed: list[str] = []
    _crashing(monkeypatch, "cosface", crashed)
    _fails(monkeypatch, "set_terminated", lambda n, kw: bool(crashed) and crashed.pop() == "cosface")
    lines = _work(grid, storage, fuse=1, uri=uri)
    both = (f"RuntimeError: CUDA out of memory (and the tracking store failed as it was recorded: "
            f"MlflowException: {ERROR})")
    trials = {t.user_attrs["marginbench.labels"]["loss"]: t for t in _trials(grid.name, storage)}
    assert {label: t.state.name for label, t in trials.items()} == {
        "softmax": "COMPLETE", "cosface": "FAIL", "arcface": "COMPLETE", "norm-softmax": "COMPLETE"}
    assert trials["cosface"].user_attrs["marginbench.error"] == both
    client = MlflowClient(uri)
    run = client.get_run(trials["cosface"].user_attrs["marginbench.mlflow_run_id"])
    assert (run.info.status, run.data.tags["error"]) == ("FAILED", both)
    assert sum(f"cosface seed=0: failed {both}" in line for line in lines) == 1


def test_a_store_error_recording_a_fused_group_keeps_the_trials_recorded_before_it(
    in_tmp, tiny_dataset, write_grid, monkeypatch
):
    # the second run of a fused group of 4 cannot be closed, with its result or with its failure: all four trials
    # were told FAIL with the store's error, the first one's finished result too. The first stays
    # COMPLETE; the second fails with both store errors, the third and fourth with why they were not recorded
    uri = f"sqlite:///{in_tmp / 'mlflow.db'}"
    grid, storage = _prepared(write_grid, in_tmp, uri)
    _fails(monkeypatch, "set_terminated", lambda n, kw: n in (2, 3))
    _work(grid, storage, fuse=4, uri=uri)
    trials = sorted(_trials(grid.name, storage), key=lambda t: t.number)
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "FAIL", "FAIL"]
    assert trials[0].value is not None
    store = f"MlflowException: {ERROR}"
    second = trials[1].user_attrs["marginbench.labels"]["loss"]
    assert [t.user_attrs.get("marginbench.error") for t in trials] == [
        None,
        f"{store} (and the tracking store failed as it was recorded: {store})",
        *[f"not recorded: the tracking store failed as {second} seed=0, trained with this trial, was recorded "
          f"({store})"] * 2,
    ]
    assert _runs(grid.name) == [("FAILED", "failed")] * 3 + [("FINISHED", "finished")]


def test_bench_worker_exits_1_when_a_trial_failed_before_its_training_started(
    in_tmp, tiny_dataset, write_grid, monkeypatch
):
    # the tracking store failed as the first trial's run was made: the trial FAILed, but `bench worker` exited 0,
    # as only trained trials' outcomes counted
    import signal

    from bench.cli import main

    grid, storage = _prepared(write_grid, in_tmp)
    _fails(monkeypatch, "create_run", lambda n, kw: n == 1)
    before = signal.getsignal(signal.SIGTERM)  # bench worker takes SIGTERM as Ctrl-C
    try:
        code = main(["worker", "--grid", str(grid.path), "--storage", storage, "--tracking-uri", URI, "--device",
                     "cpu", "--no-progress", "--max-trials", "2"])
    finally:
        signal.signal(signal.SIGTERM, before)
    assert _states(grid.name, storage) == {"FAIL": 1, "COMPLETE": 1, "WAITING": 2}
    assert code == 1
