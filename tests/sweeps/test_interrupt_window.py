"""An interrupt (Ctrl-C, SIGTERM) that lands after a worker popped its trials but before it started them gives
them back to the queue, as one landing during training does; none stays RUNNING for the next run to reap."""

from __future__ import annotations

import pytest

from bench.grid import load_grid

GRID = """\
name: window
base: {dataset: tiny-blobs, backbone: lenet++, embedding_dim: 4, epochs: 1, batch_size: 16, eval_batch_size: 64}
grid:
  loss: [softmax, cosface, arcface, norm-softmax]
"""


def _uri(in_tmp) -> str:
    """The test's own MLflow store, absolute: MLflow keeps one store per URI string for the whole session, so a
    relative ``sqlite:///mlflow.db`` reads the database of the first test that opened it, in its folder."""
    return f"sqlite:///{in_tmp / 'mlflow.db'}"


def _prepared(write_grid, in_tmp):
    from bench.study import StudyConfig, open_storage, prepare_study
    from bench.tracking import StudyTracker

    grid = load_grid(write_grid(GRID))
    storage = str(in_tmp / "optuna.journal")
    tracker = StudyTracker(grid.name, _uri(in_tmp))
    prepare_study(grid, StudyConfig.from_grid(grid), open_storage(storage),
                  mlflow={"tracking_uri": _uri(in_tmp), "parent_run_id": tracker.parent_run_id})
    return grid, storage


def _states(name: str, storage: str) -> dict[str, int]:
    import optuna

    from bench.study import open_storage

    study = optuna.load_study(study_name=name, storage=open_storage(storage, heartbeat=False))
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


@pytest.mark.parametrize("fuse", [1, 3])
def test_an_interrupt_between_popping_and_starting_gives_the_popped_trials_back(in_tmp, tiny_dataset, write_grid,
                                                                                monkeypatch, fuse):
    # A SIGINT reaches the process inside the last pop, once it has set its trial RUNNING (one trial: the first
    # pop; fused: the third, with two popped before it). Nothing has been trained, so the 4 slots all wait again.
    import signal

    import bench.workers
    from bench.workers import WorkerOptions, work

    grid, storage = _prepared(write_grid, in_tmp)
    pop, popped = bench.workers.pop_next_trial_id, []

    def pop_then_interrupted(study):
        popped.append(pop(study))
        if len(popped) == fuse:
            signal.raise_signal(signal.SIGINT)  # Python's handler raises KeyboardInterrupt where it next can
        return popped[-1]

    monkeypatch.setattr(bench.workers, "pop_next_trial_id", pop_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        work(grid.name, storage, _uri(in_tmp), WorkerOptions(device="cpu", fuse=fuse), echo=lambda s: None)
    states = _states(grid.name, storage)
    assert "RUNNING" not in states, states
    # each popped trial failed and queued again (Optuna keeps the failed attempt); the others never left the queue
    assert states == {"FAIL": fuse, "WAITING": 4}, states


def test_an_interrupt_while_the_tracker_reopens_gives_the_popped_trial_back(in_tmp, tiny_dataset, write_grid,
                                                                            monkeypatch):
    # a worker's first trial reopens the study's MLflow parent run after the pop, before the trial is started
    from bench.tracking import StudyTracker
    from bench.workers import WorkerOptions, work

    grid, storage = _prepared(write_grid, in_tmp)

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(StudyTracker, "reopen", interrupted)
    with pytest.raises(KeyboardInterrupt):
        work(grid.name, storage, _uri(in_tmp), WorkerOptions(device="cpu"), echo=lambda s: None)
    assert _states(grid.name, storage) == {"FAIL": 1, "WAITING": 4}


def test_an_interrupt_while_a_fused_group_opens_its_runs_closes_them_and_gives_the_trials_back(
    in_tmp, tiny_dataset, write_grid, monkeypatch
):
    # Ctrl-C lands while the third run of a fused group of 3 is created: the two runs opened before it used to
    # stay RUNNING in MLflow for good (nothing held them yet); each is closed as interrupted now, and the three
    # popped trials go back to the queue as before.
    from mlflow.tracking import MlflowClient

    from bench.workers import WorkerOptions, work

    grid, storage = _prepared(write_grid, in_tmp)
    create_run, created = MlflowClient.create_run, []

    def interrupted_create_run(self, *args, **kwargs):
        created.append(kwargs.get("run_name"))
        if len(created) == 3:
            raise KeyboardInterrupt
        return create_run(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "create_run", interrupted_create_run)
    with pytest.raises(KeyboardInterrupt):
        work(grid.name, storage, _uri(in_tmp), WorkerOptions(device="cpu", fuse=3), echo=lambda s: None)
    client = MlflowClient(_uri(in_tmp))
    runs = client.search_runs(
        [client.get_experiment_by_name(grid.name).experiment_id], filter_string="tags.`marginbench.role` = 'trial'"
    )
    assert sorted((r.info.status, r.data.tags["marginbench.status"]) for r in runs) == [("KILLED", "interrupted")] * 2
    assert _states(grid.name, storage) == {"FAIL": 3, "WAITING": 4}
