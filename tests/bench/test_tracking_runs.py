"""What `bench.runner` leaves in MLflow around a trial: its child run closed with the right status, whatever
the tracking store did while the trial trained (training itself is stubbed: these tests are about the runs)."""

from __future__ import annotations

import contextlib

import pytest
from mlflow.exceptions import MlflowException

import bench.fused
import bench.runner
from bench.runner import RecordingFailed, TrialOutcome, execute_fused_trials, execute_trial
from bench.spec import TrialSpec
from bench.tracking import StudyTracker
from bench.trial import TrialOptions, TrialResult

SPEC = TrialSpec.from_nested({"dataset": "digits", "backbone": "lenet++", "embedding_dim": 2, "epochs": 3,
                              "loss": "softmax"})


def trained(spec: TrialSpec, options: TrialOptions) -> TrialResult:
    """A stand-in for `run_trial`: three epochs reported to ``on_epoch``, then the result."""
    history = [{"train_loss": 1.0 / (e + 1)} for e in range(spec.epochs)]
    for epoch, metrics in enumerate(history):
        options.on_epoch(epoch, metrics)
    return TrialResult(spec=spec, status="finished", metrics=history[-1], history=history, train_seconds=1.0,
                       images_per_second=10.0, device="cpu")


def trained_each(specs: list[TrialSpec], options: list[TrialOptions]) -> list[TrialResult]:
    """A stand-in for `bench.fused.run_fused_trials`: `trained` for each trial of the group."""
    return [trained(s, o) for s, o in zip(specs, options, strict=True)]


def _group_of_three(tracker: StudyTracker) -> list[TrialOutcome]:
    """`execute_fused_trials` of SPEC at seeds 0, 1, 2, with default options."""
    return execute_fused_trials([SPEC, SPEC.replace(seed=1), SPEC.replace(seed=2)], tracker,
                                [TrialOptions(progress=False)] * 3, trial_numbers=[None] * 3, extra_tags=[{}] * 3,
                                on_epochs=[None] * 3)


@pytest.fixture
def tracker(tmp_path):
    """A study tracker whose store loses the metric batch of epoch 1 (the background thread's write raises)."""
    tracker = StudyTracker("s", f"sqlite:///{tmp_path / 'mlflow.db'}")
    real = tracker.client.log_batch

    def log_batch(run_id, metrics=(), params=(), tags=()):
        if metrics and metrics[0].step == 1:
            raise MlflowException("the store is down")
        return real(run_id, metrics=metrics, params=params, tags=tags)

    tracker.client.log_batch = log_batch
    return tracker


def statuses(tracker: StudyTracker) -> list[tuple[str, str]]:
    return sorted((r.info.status, r.data.tags["marginbench.status"]) for r in tracker.child_runs())


def test_a_lost_metric_write_fails_the_trial_and_closes_its_run(tracker, monkeypatch):
    # the write's error surfaces at the end as the trial's outcome; the run used to stay RUNNING, the error
    # escaping execute_trial
    monkeypatch.setattr(bench.runner, "run_trial", trained)
    outcome = execute_trial(SPEC, tracker, TrialOptions(progress=False))
    assert outcome.status == "failed" and "the store is down" in outcome.error
    assert statuses(tracker) == [("FAILED", "failed")]


def test_a_lost_metric_write_fails_each_fused_trial_without_raising(tracker, monkeypatch):
    # run_study_trials does not catch an ordinary exception from execute_fused_trials: it used to end the worker
    def fused(specs, options):
        return [trained(s, o) for s, o in zip(specs, options, strict=True)]

    monkeypatch.setattr(bench.fused, "run_fused_trials", fused)
    outcomes = execute_fused_trials([SPEC, SPEC.replace(seed=1)], tracker, [TrialOptions(progress=False)] * 2,
                                    trial_numbers=[None, None], extra_tags=[{}, {}], on_epochs=[None, None])
    assert [o.status for o in outcomes] == ["failed", "failed"]
    assert statuses(tracker) == [("FAILED", "failed"), ("FAILED", "failed")]


def test_ctrl_c_after_a_lost_metric_write_stays_an_interrupt_and_closes_the_run(tracker, monkeypatch):
    # the write's error used to replace the KeyboardInterrupt, so the worker failed the trial instead of
    # queueing it again, and the run stayed RUNNING
    def interrupted(spec, options):
        options.on_epoch(0, {"train_loss": 1.0})
        options.on_epoch(1, {"train_loss": 0.5})
        raise KeyboardInterrupt

    monkeypatch.setattr(bench.runner, "run_trial", interrupted)
    with pytest.raises(KeyboardInterrupt):
        execute_trial(SPEC, tracker, TrialOptions(progress=False))
    assert statuses(tracker) == [("KILLED", "interrupted")]


@pytest.mark.parametrize("fused", [False, True])
def test_ctrl_c_while_the_result_is_recorded_closes_the_run_as_interrupted(tmp_path, monkeypatch, fused):
    # Ctrl-C landing after training, while the run's tags and pictures were written, used to leave the run
    # RUNNING for good (the trial is queued again, as for any interrupt)
    from bench.tracking import TrialRun

    tracker = StudyTracker("s", f"sqlite:///{tmp_path / 'mlflow.db'}")
    flush, calls = TrialRun.flush, []

    def interrupted_flush(self):
        calls.append(self.run_id)
        if len(calls) == 1:
            raise KeyboardInterrupt
        flush(self)

    monkeypatch.setattr(TrialRun, "flush", interrupted_flush)
    monkeypatch.setattr(bench.runner, "run_trial", trained)
    monkeypatch.setattr(bench.fused, "run_fused_trials",
                        trained_each)
    with pytest.raises(KeyboardInterrupt):
        if fused:
            execute_fused_trials([SPEC, SPEC.replace(seed=1)], tracker, [TrialOptions(progress=False)] * 2,
                                 trial_numbers=[None, None], extra_tags=[{}, {}], on_epochs=[None, None])
        else:
            execute_trial(SPEC, tracker, TrialOptions(progress=False))
    # every run of the interrupted call is KILLED, like the trials it gives back to the queue
    assert statuses(tracker) == [("KILLED", "interrupted")] * (2 if fused else 1)


def test_a_crash_after_a_lost_metric_write_records_the_crash(tracker, monkeypatch):
    # the trial's own error is the one recorded, and the run is closed as failed
    def crashed(spec, options):
        options.on_epoch(0, {"train_loss": 1.0})
        options.on_epoch(1, {"train_loss": 0.5})
        raise RuntimeError("out of memory")

    monkeypatch.setattr(bench.runner, "run_trial", crashed)
    outcome = execute_trial(SPEC, tracker, TrialOptions(progress=False))
    assert outcome.status == "failed" and outcome.error == "RuntimeError: out of memory"
    (run,) = tracker.child_runs()
    assert (run.info.status, run.data.tags["error"]) == ("FAILED", "RuntimeError: out of memory")


@pytest.mark.parametrize("fused", [False, True])
def test_pictures_are_logged_once_and_their_temporary_folder_removed(tmp_path, tiny_dataset, monkeypatch, fused):
    # every trial used to leave a marginbench-* folder in the temporary directory, its pictures in it
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    tracker = StudyTracker("s", f"sqlite:///{tmp_path / 'mlflow.db'}")
    spec = TrialSpec.from_nested({"dataset": tiny_dataset, "backbone": "lenet++", "embedding_dim": 2, "epochs": 2,
                                  "batch_size": 16, "loss": "cosface"})
    options = TrialOptions(device="cpu", plots=True, progress=False)
    if fused:
        outcomes = execute_fused_trials([spec, spec.replace(seed=1)], tracker, [options] * 2,
                                        trial_numbers=[None, None], extra_tags=[{}, {}], on_epochs=[None, None])
    else:
        outcomes = [execute_trial(spec, tracker, options)]
    assert [o.status for o in outcomes] == ["finished"] * len(outcomes)
    for outcome in outcomes:
        logged = sorted(a.path for a in tracker.client.list_artifacts(outcome.run_id, "plots"))
        assert logged == ["plots/embeddings.gif", "plots/embeddings_epoch000.png", "plots/embeddings_epoch001.png"]
    assert list((tmp_path / "tmp").glob("marginbench-*")) == []


def test_a_resumed_trial_logs_its_restored_epochs_at_the_time_they_were_trained(tmp_path, tiny_dataset):
    # the epochs restored from the checkpoint used to be logged when the resumed trial ended, after the epochs it
    # trained: MLflow's charts by wall time drew epoch 0 last
    tracker = StudyTracker("s", f"sqlite:///{tmp_path / 'mlflow.db'}")
    spec = TrialSpec.from_nested({"dataset": tiny_dataset, "backbone": "lenet++", "embedding_dim": 2, "epochs": 3,
                                  "batch_size": 16, "loss": "cosface"})
    options = TrialOptions(device="cpu", progress=False, checkpoint_path=tmp_path / "trial.pt")

    def interrupt_after_epoch_0(epoch, metrics):
        if epoch == 1:
            raise KeyboardInterrupt  # before epoch 1's checkpoint: the retry resumes from epoch 0's

    with pytest.raises(KeyboardInterrupt):
        execute_trial(spec, tracker, options, on_epoch=interrupt_after_epoch_0)
    first = tracker.client.get_metric_history(tracker.child_runs()[0].info.run_id, "train_loss")
    outcome = execute_trial(spec, tracker, options)
    assert outcome.status == "finished"
    assert tracker.client.get_run(outcome.run_id).data.tags["resumed_from_epoch"] == "1"
    history = sorted(tracker.client.get_metric_history(outcome.run_id, "train_loss"), key=lambda m: m.step)
    assert [m.step for m in history] == [0, 1, 2]
    # epoch 0 keeps the time it was trained at: with the interrupted run's epoch 0, before the resumed run's epochs
    (trained_0,) = [m for m in first if m.step == 0]
    assert history[0].timestamp <= tracker.client.get_run(outcome.run_id).info.start_time
    assert abs(history[0].timestamp - trained_0.timestamp) < 1000
    assert history[0].timestamp < history[1].timestamp <= history[2].timestamp
    assert history[0].value == trained_0.value


def test_logged_params_read_back_as_the_spec_and_match_its_grid_cell(tmp_path):
    # floats, None, lists and a mapping param (timm's backbone kwargs) come back from MLflow's text exactly,
    # so reports.matching tables the run; the mapping used to be logged as Python's repr, read back as text,
    # and the run left out of every table ("other settings")
    from types import SimpleNamespace

    import pandas as pd

    from reports.matching import split_runs

    spec = TrialSpec.from_nested({
        "dataset": "digits", "embedding_dim": 8, "loss": {"name": "cosface", "s": 30.0, "m": 0.35},
        "backbone": {"name": "timm/mobilenetv3_small_100", "drop_path_rate": None,
                     "kwargs": {"global_pool": "max", "bn_eps": 1e-5, "layers": [1, 2], "x": None}},
        "optimizer": {"name": "sgd", "lr": 1e-5, "momentum": 0.9},
        "scheduler": {"name": "multistep", "milestones": [3, 5], "gamma": 0.1}, "grad_clip": None})
    tracker = StudyTracker("s", f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = tracker.start_trial(spec)
    run.finish("finished")
    logged = tracker.client.get_run(run.run_id).data.params
    assert TrialSpec.from_params(logged) == spec and TrialSpec.from_params(logged).key() == spec.key()
    runs = pd.DataFrame([{"label": spec.label, **{f"param.{k}": v for k, v in logged.items()}}])
    split = split_runs(SimpleNamespace(cells=[SimpleNamespace(spec=spec)], raw={}), runs)
    assert (len(split.kept), split.differences) == (1, [])


def test_text_that_reads_as_a_mapping_stays_text():
    # only JSON is read back as a mapping: a dataset root "{root}" is a path, not {"root": None}
    from bench.spec import parse_param

    assert parse_param("{root}") == "{root}"
    assert parse_param('{"a": 1e-05, "b": [1, null]}') == {"a": 1e-05, "b": [1, None]}


def test_a_study_whose_experiment_was_deleted_stops_with_the_two_ways_out(tmp_path):
    # deleting the experiment in the MLflow UI used to end the next `bench run` in MLflow's traceback from
    # create_run ("must be in the 'active' state")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = StudyTracker("s", uri)
    tracker.client.delete_experiment(tracker.experiment_id)
    with pytest.raises(SystemExit, match=r"study 's' .* was deleted; .*mlflow experiments restore --experiment-id "
                                         r"1.*mlflow gc --backend-store-uri sqlite:///.*--experiment-ids 1"):
        StudyTracker("s", uri)


@pytest.mark.parametrize("fused", [False, True])
def test_a_store_error_while_an_interrupted_run_closes_keeps_the_interrupt(tmp_path, monkeypatch, fused):
    # The close's write failing (the store down or locked) used to replace the KeyboardInterrupt with its
    # error, which the worker then recorded as one more failed trial before popping the next: a SIGTERM'd
    # worker went on training
    tracker = StudyTracker("s", f"sqlite:///{tmp_path / 'mlflow.db'}")

    def interrupted(spec, options):
        raise KeyboardInterrupt

    def store_down(run_id, status):
        raise MlflowException("database is locked")

    monkeypatch.setattr(bench.runner, "run_trial", interrupted)
    monkeypatch.setattr(bench.fused, "run_fused_trials", interrupted)
    monkeypatch.setattr(tracker.client, "set_terminated", store_down)
    with pytest.raises(KeyboardInterrupt):
        if fused:
            execute_fused_trials([SPEC, SPEC.replace(seed=1)], tracker, [TrialOptions(progress=False)] * 2,
                                 trial_numbers=[None, None], extra_tags=[{}, {}], on_epochs=[None, None])
        else:
            execute_trial(SPEC, tracker, TrialOptions(progress=False))
    # each run got its interrupted tag before the close failed; the next process closes it (bench.workers._claim)
    assert {r.data.tags["marginbench.status"] for r in tracker.child_runs()} == {"interrupted"}


def _interrupted_at(tracker: StudyTracker, monkeypatch, tmp_path, where: str) -> None:
    """Makes the tracker's store raise KeyboardInterrupt at ``where``, as a Ctrl-C landing there would:
    ``create_run:2`` the second run's creation (the first run exists), ``params:N`` the N-th params write (the run
    exists, its params half written), ``folder`` the making of the trial's picture folder (every run exists),
    ``tags`` the write of the finished trial's tags."""
    client, counts = tracker.client, {}
    create_run, log_batch = client.create_run, client.log_batch
    event, _, nth = where.partition(":")

    def hit(name: str) -> None:
        counts[name] = counts.get(name, 0) + 1
        if name == event and counts[name] == int(nth or 1):
            raise KeyboardInterrupt

    def interrupted_create_run(*args, **kwargs):
        hit("create_run")
        return create_run(*args, **kwargs)

    def interrupted_log_batch(run_id, metrics=(), params=(), tags=()):
        if params:
            hit("params")
        if tags and any(t.key == "train_seconds" for t in tags):
            hit("tags")
        return log_batch(run_id, metrics=metrics, params=params, tags=tags)

    @contextlib.contextmanager
    def interrupted_folder(options):
        hit("folder")
        yield tmp_path

    monkeypatch.setattr(client, "create_run", interrupted_create_run)
    monkeypatch.setattr(client, "log_batch", interrupted_log_batch)
    monkeypatch.setattr(bench.runner, "_artifact_dir", interrupted_folder)


@pytest.mark.parametrize(
    "fused, where",
    [
        (False, "params:1"),  # the run exists, its params not yet written
        (True, "create_run:2"),  # the first of the group's runs exists, the second is being created
        (True, "params:2"),  # the second run exists, its params not yet written
        (False, "folder"),  # the run is open, its trial about to train
        (True, "folder"),
        (True, "tags"),  # trained: the first run's tags are being written
        (False, "tags"),
    ],
)
def test_ctrl_c_while_runs_are_started_or_closed_leaves_no_run_running(tmp_path, monkeypatch, fused, where):
    # A run opened before an interrupt reached the code that closes interrupted runs stayed RUNNING for good:
    # start_trial had opened it (params still to write), or the fused group had opened some of its runs, and
    # nothing held them. Every run opened is closed as interrupted, and the interrupt goes on to the worker.
    tracker = StudyTracker("s", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr(bench.runner, "run_trial", trained)
    monkeypatch.setattr(
        bench.fused,
        "run_fused_trials",
        trained_each,
    )
    _interrupted_at(tracker, monkeypatch, tmp_path, where)
    with pytest.raises(KeyboardInterrupt):
        if fused:
            execute_fused_trials(
                [SPEC, SPEC.replace(seed=1), SPEC.replace(seed=2)],
                tracker,
                [TrialOptions(progress=False)] * 3,
                trial_numbers=[None] * 3,
                extra_tags=[{}] * 3,
                on_epochs=[None] * 3,
            )
        else:
            execute_trial(SPEC, tracker, TrialOptions(progress=False))
    opened = {"params:1": 1, "create_run:2": 1, "params:2": 2}.get(where, 3 if fused else 1)
    assert statuses(tracker) == [("KILLED", "interrupted")] * opened


def _store_fails(tracker: StudyTracker, monkeypatch, method: str, when) -> None:
    """Makes ``tracker.client.<method>`` raise MlflowException (a tracking server's 500, a locked database) on the
    calls for which ``when(n, kwargs)`` is true, ``n`` counting the calls from 1."""
    real, calls = getattr(tracker.client, method), []

    def failing(*args, **kwargs):
        calls.append(1)
        if when(len(calls), kwargs):
            raise MlflowException(f"{method}: API request failed with error code 500 != 200")
        return real(*args, **kwargs)

    monkeypatch.setattr(tracker.client, method, failing)


def test_a_store_error_while_the_params_are_written_closes_the_run_as_failed(tmp_path, monkeypatch):
    # start_trial made the run, then its params write failed: the error went on to the worker (which failed the
    # trial) and the run stayed RUNNING in MLflow for good
    tracker = StudyTracker("s", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr(bench.runner, "run_trial", trained)
    _store_fails(tracker, monkeypatch, "log_batch", lambda n, kw: bool(kw.get("params")))
    with pytest.raises(MlflowException, match="log_batch: API request failed"):
        execute_trial(SPEC, tracker, TrialOptions(progress=False))
    (run,) = tracker.child_runs()
    assert (run.info.status, run.data.tags["marginbench.status"]) == ("FAILED", "failed")
    assert run.data.tags["error"] == "MlflowException: log_batch: API request failed with error code 500 != 200"


def test_a_store_error_as_a_fused_group_opens_its_runs_closes_those_opened_as_failed(tmp_path, monkeypatch):
    # the second of three create_run calls fails: the first run stayed RUNNING, nothing held it
    tracker = StudyTracker("s", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr(bench.fused, "run_fused_trials",
                        trained_each)
    _store_fails(tracker, monkeypatch, "create_run", lambda n, kw: n == 2)
    with pytest.raises(MlflowException, match="create_run: API request failed"):
        _group_of_three(tracker)
    (run,) = tracker.child_runs()
    assert (run.info.status, run.data.tags["marginbench.status"], run.data.params["seed"]) == ("FAILED", "failed", "0")
    assert "create_run: API request failed" in run.data.tags["error"]


def test_a_store_that_cannot_close_the_run_either_leaves_the_first_error_raised(tmp_path, monkeypatch):
    # best effort: the close failing too is logged, and the error that failed the trial is the one the worker gets
    tracker = StudyTracker("s", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr(bench.runner, "run_trial", trained)
    _store_fails(tracker, monkeypatch, "log_batch", lambda n, kw: True)
    _store_fails(tracker, monkeypatch, "set_terminated", lambda n, kw: True)
    with pytest.raises(MlflowException, match="^log_batch: API request failed"):
        execute_trial(SPEC, tracker, TrialOptions(progress=False))
    (run,) = tracker.child_runs()
    assert run.info.status == "RUNNING"  # the store refused every write; the next claim of its trial closes it


STORE_DOWN = "MlflowException: set_terminated: API request failed with error code 500 != 200"


def test_a_store_error_recording_a_fused_group_keeps_the_runs_recorded_before_it(tmp_path, monkeypatch):
    # the second run's close fails twice (with its result, then with its failure): the second and third runs used
    # to stay RUNNING, and the store's error, raised, failed the first trial too. The first keeps its finished
    # outcome (and run); the second fails with both store errors, the third with why it was not recorded
    tracker = StudyTracker("s", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr(bench.fused, "run_fused_trials",
                        trained_each)
    _store_fails(tracker, monkeypatch, "set_terminated", lambda n, kw: n in (2, 3))
    with pytest.raises(RecordingFailed) as failed:
        _group_of_three(tracker)
    both = f"{STORE_DOWN} (and the tracking store failed as it was recorded: {STORE_DOWN})"
    unrecorded = (f"not recorded: the tracking store failed as {SPEC.label} seed=1, trained with this trial, was "
                  f"recorded ({STORE_DOWN})")
    outcomes = failed.value.outcomes
    assert [(o.spec.seed, o.status, o.error) for o in outcomes] == [
        (0, "finished", None), (1, "failed", both), (2, "failed", unrecorded)]
    assert f"{type(failed.value.store_error).__name__}: {failed.value.store_error}" == STORE_DOWN
    by_seed = {r.data.params["seed"]: (r.info.status, r.data.tags["marginbench.status"], r.data.tags.get("error"))
               for r in tracker.child_runs()}
    assert by_seed == {"0": ("FINISHED", "finished", None), "1": ("FAILED", "failed", both),
                       "2": ("FAILED", "failed", unrecorded)}


def test_a_crash_whose_recording_the_store_fails_keeps_both_errors(tmp_path, monkeypatch):
    # the store failing as the crash was recorded (its close) replaced the crash: the run's error tag and the
    # error the worker told Optuna said only "MlflowException: ...", the RuntimeError was gone
    tracker = StudyTracker("s", f"sqlite:///{tmp_path / 'mlflow.db'}")

    def crashed(spec, options):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(bench.runner, "run_trial", crashed)
    _store_fails(tracker, monkeypatch, "set_terminated", lambda n, kw: n == 1)
    with pytest.raises(RecordingFailed) as failed:
        execute_trial(SPEC, tracker, TrialOptions(progress=False))
    both = f"RuntimeError: CUDA out of memory (and the tracking store failed as it was recorded: {STORE_DOWN})"
    assert str(failed.value) == both
    assert [(o.status, o.error) for o in failed.value.outcomes] == [("failed", both)]
    (run,) = tracker.child_runs()
    assert (run.info.status, run.data.tags["marginbench.status"], run.data.tags["error"]) == ("FAILED", "failed", both)


def test_a_fused_crash_whose_recording_the_store_fails_keeps_both_errors(tmp_path, monkeypatch):
    # the group crashed; the second run's failure could not be closed: the store's error replaced the crash for
    # all three trials. The first keeps the crash alone, the second and third carry both errors
    tracker = StudyTracker("s", f"sqlite:///{tmp_path / 'mlflow.db'}")

    def crashed(specs, options):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(bench.fused, "run_fused_trials", crashed)
    _store_fails(tracker, monkeypatch, "set_terminated", lambda n, kw: n == 2)
    with pytest.raises(RecordingFailed) as failed:
        _group_of_three(tracker)
    crash = "RuntimeError: CUDA out of memory"
    both = f"{crash} (and the tracking store failed as it was recorded: {STORE_DOWN})"
    assert [(o.spec.seed, o.status, o.error) for o in failed.value.outcomes] == [
        (0, "failed", crash), (1, "failed", both), (2, "failed", both)]
    by_seed = {r.data.params["seed"]: (r.info.status, r.data.tags["error"]) for r in tracker.child_runs()}
    assert by_seed == {"0": ("FAILED", crash), "1": ("FAILED", both), "2": ("FAILED", both)}


def _signalled_after_create_run(tracker: StudyTracker, monkeypatch, signals: list[int], after: list[str]) -> None:
    """The tracker's ``create_run`` makes the run, then this process gets ``signals``, as an interrupt landing
    between MLflow's insert and `start_trial` noting the run would; ``after`` notes that create_run went on past
    them (the signals were held)."""
    import signal

    create_run = tracker.client.create_run

    def signalled_create_run(*args, **kwargs):
        created = create_run(*args, **kwargs)
        for signum in signals:
            signal.raise_signal(signum)  # Python runs the handler before raise_signal returns
        after.append("create_run returned")
        return created

    monkeypatch.setattr(tracker.client, "create_run", signalled_create_run)


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_an_interrupt_as_start_trial_makes_the_run_closes_it_as_interrupted(tmp_path, monkeypatch, signame):
    # the interrupt raised between create_run and the run's note in `opened`: nothing closed the run, which stayed
    # RUNNING for good. It is held until the run is noted, then raised there, and the run is closed as interrupted
    import signal

    from bench.workers import Terminated

    def on_sigterm(signum, frame):  # what `bench worker` installs
        raise Terminated

    monkeypatch.setattr(bench.runner, "run_trial", trained)
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    tracker = StudyTracker("s", f"sqlite:///{tmp_path / 'mlflow.db'}")
    after: list[str] = []
    _signalled_after_create_run(tracker, monkeypatch, [getattr(signal, signame)], after)
    try:
        with pytest.raises(Terminated if signame == "SIGTERM" else KeyboardInterrupt):
            execute_trial(SPEC, tracker, TrialOptions(progress=False))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert statuses(tracker) == [("KILLED", "interrupted")]
    assert after == ["create_run returned"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the hold is gone


def test_a_second_interrupt_while_start_trial_holds_one_passes_at_once(tmp_path, monkeypatch):
    # Ctrl-C pressed again while the first is held (a create_run that hangs on a locked database): it is not
    # swallowed, as the OS's signal mask would merge it with the first, but raised where it lands
    import signal

    tracker = StudyTracker("s", f"sqlite:///{tmp_path / 'mlflow.db'}")
    after: list[str] = []
    _signalled_after_create_run(tracker, monkeypatch, [signal.SIGINT, signal.SIGINT], after)
    with pytest.raises(KeyboardInterrupt):
        tracker.start_trial(SPEC, opened=[])
    assert after == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def _artifacts(tracker: StudyTracker) -> dict[str, list[str]]:
    """Each child run's artifact paths, by its seed."""
    return {r.data.params["seed"]: sorted(a.path for a in tracker.client.list_artifacts(r.info.run_id))
            for r in tracker.child_runs()}


def _traceback_text(tracker: StudyTracker, seed: str) -> str:
    (run,) = [r for r in tracker.child_runs() if r.data.params["seed"] == seed]
    path = tracker.client.download_artifacts(run.info.run_id, "traceback.txt")
    with open(path) as f:
        return f.read()


@pytest.mark.parametrize("crashed", [False, True])
def test_the_later_trials_of_a_fused_group_whose_recording_the_store_fails_get_a_traceback(tmp_path, monkeypatch,
                                                                                          crashed):
    # the store failed once as the second trial was recorded, then answered again: the third run got its error tag
    # and was closed, but, unlike every other failed trial, had no traceback.txt. Now it has the crash's traceback,
    # or, trained, why it was not recorded and the store error's traceback
    tracker = StudyTracker("s", f"sqlite:///{tmp_path / 'mlflow.db'}")

    def crash(specs, options):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(bench.fused, "run_fused_trials", crash if crashed else
                        trained_each)
    _store_fails(tracker, monkeypatch, "set_terminated", lambda n, kw: n in (2, 3))
    with pytest.raises(RecordingFailed) as failed:
        _group_of_three(tracker)
    assert "traceback.txt" in _artifacts(tracker)["2"]
    text = _traceback_text(tracker, "2")
    assert text.splitlines()[0] == failed.value.outcomes[2].error
    assert text.rstrip().splitlines()[-1].endswith("RuntimeError: CUDA out of memory" if crashed else STORE_DOWN)
    assert "Traceback (most recent call last):" in text


def test_a_store_down_for_the_later_trials_traceback_keeps_their_error_on_the_outcome(tmp_path, monkeypatch):
    # the store refuses the later trial's traceback too: its outcome and error tag keep the reason (the artifact's
    # failure does not replace it), and its run is still closed
    tracker = StudyTracker("s", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr(bench.fused, "run_fused_trials",
                        trained_each)
    _store_fails(tracker, monkeypatch, "set_terminated", lambda n, kw: n in (2, 3))
    _store_fails(tracker, monkeypatch, "log_text", lambda n, kw: n >= 2)  # the second trial's traceback is logged
    with pytest.raises(RecordingFailed) as failed:
        _group_of_three(tracker)
    unrecorded = (f"not recorded: the tracking store failed as {SPEC.label} seed=1, trained with this trial, was "
                  f"recorded ({STORE_DOWN})")
    assert (failed.value.outcomes[2].status, failed.value.outcomes[2].error) == ("failed", unrecorded)
    by_seed = {r.data.params["seed"]: (r.info.status, r.data.tags.get("error")) for r in tracker.child_runs()}
    assert by_seed["2"] == ("FAILED", unrecorded)
    assert "traceback.txt" not in _artifacts(tracker)["2"]
