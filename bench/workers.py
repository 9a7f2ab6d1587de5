"""Workers: processes that pop trials from a grid's Optuna study, run them, and record them in both stores.

``bench run`` prepares the study (`bench.study.prepare_study`), then runs the trials: in its own process
(``--workers 1``), or in N ``bench worker`` processes it starts and waits for (``--workers N``; ``--gpus
0,1`` gives worker i the GPU ``gpus[i % len(gpus)]`` through ``CUDA_VISIBLE_DEVICES``). ``bench worker``
on another machine joins the same study through a shared storage and tracking server. There is no
scheduler here: Optuna's storage is the queue (a WAITING trial is popped by exactly one process).

A worker's loop: put back trials whose process died (`bench.study.reap_stale_trials`), pop a waiting
trial, run it (`run_study_trial`), repeat; with nothing waiting it waits while other trials still run
(one of them may die and come back), and stops when none is waiting or running.

One trial, in order: the spec is rebuilt from the Optuna trial (sampling the search keys, inside the
cell); a trial of a slot that another trial already settled is dropped as a duplicate; an MLflow child run
that already finished this spec (its process died before telling Optuna) is adopted instead of training
again, and child runs of this spec left RUNNING by a dead process are closed as ``interrupted`` (KILLED);
then `bench.runner.execute_trial` trains it, resuming from the trial's checkpoint
(``.bench/checkpoints/<study>/<trial key>.pt`` beside the stores, written every epoch, deleted when the
trial ends); its epochs are reported to Optuna (the pruner may stop sampled trials), and the outcome is
told to Optuna: finished -> COMPLETE with the objective metric, pruned -> PRUNED, diverged -> FAIL with
user attributes ``marginbench.diverged`` (epoch and step) and ``marginbench.fail_reason``, an exception
-> FAIL with ``marginbench.error`` (the traceback is the MLflow run's artifact).

The tracking store failing (an `mlflow.exceptions.MlflowException`: a server's 500 after MLflow's retries, a
locked database) is a trial's exception too: its runs are closed as failed where the store lets them, its trials
FAIL with the error (the next ``bench run`` queues them again), and the worker reads the store before it pops
another trial (`_check_store`): one that does not answer, or fails three trials in a row, stops the worker with a
line that names it, rather than failing every trial of the queue.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.grid import Grid
from bench.runner import RecordingFailed, TrialOutcome, execute_fused_trials, execute_trial, interrupts_held
from bench.study import (
    CELL_ATTR,
    DIVERGED_ATTR,
    DUPLICATE_ATTR,
    ERROR_ATTR,
    KEY_ATTR,
    KIND_ATTR,
    LABELS_ATTR,
    OWNER_ATTR,
    PARAMS_ATTR,
    REASON_ATTR,
    RUN_ATTR,
    SLOT_ATTR,
    SPEC_ATTR,
    STUDY_CELLS_ATTR,
    CellStudy,
    StudyConfig,
    StudyNotReady,
    load_study,
    open_storage,
    plan_slots,
    pop_next_trial_id,
    prepare_study,
    reap_stale_trials,
    requeue_trial,
    resolve_storage,
    settles,
    stored_config,
    study_summary,
    trial_spec,
    worker_identity,
)
from bench.tracking import STATUS_TAG, StudyTracker
from bench.trial import Pruned, TrialOptions
from registry._suggest import did_you_mean

__all__ = ["WorkerOptions", "StudyReport", "run_study", "work", "run_study_trial", "run_study_trials",
           "checkpoint_folder",
           "spawn_workers", "wait_workers", "stop_workers", "sigterm_forwarded", "Terminated"]

log = logging.getLogger(__name__)

#: MLflow status tags of a child run that settles its trial (adopted rather than trained again).
_SETTLED = ("finished", "diverged", "pruned")
#: Pops in a row whose trials the tracking store failed that stop a worker even when the store answers
#: reads (`StudyTracker.check`): its writes keep failing.
_STORE_FAILURES_IN_A_ROW = 3
_WARNED_OBJECTIVES: set[str] = set()  # objective metrics already named missing by this process
ATTR_ADOPTED = "marginbench.adopted_run"


@dataclass
class WorkerOptions:
    """How one worker process runs trials.

    Attributes:
        device: ``cpu``, ``cuda``, ``cuda:1`` (None: CUDA when present).
        plots: embedding pictures per epoch.
        progress: a progress bar per trial.
        checkpoint_dir: where per-epoch checkpoints go (None: `checkpoint_folder`).
        keep_checkpoints: keep a trial's checkpoint after it ends (its final weights).
        worker_index: this worker's number (offsets a seeded sampler; prefixes its lines).
        threads: ``torch.set_num_threads`` for this process (None: leave torch's default).
        poll_seconds: how soon an idle worker looks again while other trials run (doubling up to 30 s).
        wait_seconds: how long ``bench worker`` waits for ``bench run`` to prepare the study.
        max_trials: stop after this many trials (None: until the study is done).
        prefix: put before each line this worker prints (``[worker 1] ``).
        fuse: pop up to this many trials at a time and train those that share a backbone's shapes and an
            in-memory dataset as one program (`bench.fused`); 1: one trial at a time.
    """

    device: str | None = None
    plots: bool = False
    progress: bool = False
    checkpoint_dir: Path | None = None
    keep_checkpoints: bool = False
    worker_index: int = 0
    threads: int | None = None
    poll_seconds: float = 2.0
    wait_seconds: float = 600.0
    max_trials: int | None = None
    prefix: str = ""
    fuse: int = 1


@dataclass
class StudyReport:
    """What ``bench run`` reports: each slot's state and the worker processes' exit codes."""

    study: str
    storage: str
    tracking_uri: str
    counts: dict[str, int] = field(default_factory=dict)
    outcomes: list[TrialOutcome] = field(default_factory=list)
    worker_exit_codes: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No trial failed with an exception and every worker exited cleanly (diverged and pruned are results)."""
        return not self.counts.get("failed") and all(c == 0 for c in self.worker_exit_codes)


def checkpoint_folder(storage_url: str, study: str) -> Path:
    """``.bench/checkpoints/<study>`` beside a file storage (journal, SQLite), else in the working directory."""
    if "://" not in storage_url:
        base = Path(storage_url).parent
    elif storage_url.startswith("sqlite:///"):
        base = Path(storage_url[len("sqlite:///"):]).parent
    else:
        base = Path.cwd()
    return base / ".bench" / "checkpoints" / study


# ------------------------------------------------------------------------------------------ heartbeat
class _Heartbeat:
    """Records the trial's heartbeat every interval while it runs (RDB storages with a heartbeat)."""

    def __init__(self, storage: Any, trial_id: int) -> None:
        get = getattr(storage, "get_heartbeat_interval", None)
        self.interval = get() if get is not None else None
        self.storage, self.trial_id = storage, trial_id
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _Heartbeat:
        if self.interval:
            self._thread = threading.Thread(target=self._beat, name="optuna-heartbeat", daemon=True)
            self._thread.start()
        return self

    def _beat(self) -> None:
        while True:
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception:  # a missed beat is not fatal; the grace period covers several
                log.warning("could not record the heartbeat of trial id %s", self.trial_id, exc_info=True)
            if self._stop.wait(self.interval):
                return

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


# ------------------------------------------------------------------------------------------ one trial
def _duplicate_of(study: Any, frozen: Any) -> int | None:
    """The number of another trial that settles (or runs, with a lower number) this trial's slot."""
    from optuna.trial import TrialState

    slot = frozen.user_attrs.get(SLOT_ATTR)
    for t in study.get_trials(deepcopy=False):
        if t.number == frozen.number or t.user_attrs.get(SLOT_ATTR) != slot:
            continue
        if t.state == TrialState.RUNNING and t.number > frozen.number:
            continue  # the higher number steps aside, not us
        if t.state != TrialState.WAITING and settles(t):
            return t.number
    return None


def objective_metric(metrics: dict[str, float], metric: str) -> str:
    """``metric``, except that a trial without a closed-set test split (a face grid whose test is a pairs set)
    has no ``test_acc``: then the default objective is its verification accuracy (``lfw_acc``, the
    ``<pairs>_acc`` beside a ``<pairs>_auc``)."""
    if metric == "test_acc" and metric not in metrics:
        from reports.tables import verification_accuracies

        verification = verification_accuracies(metrics)
        return verification[0] if verification else metric
    return metric


def warn_missing_objective(metrics: dict[str, float], metric: str) -> bool:
    """Warns (once per process and metric) when an epoch's ``metrics`` lack the objective, so a typo in
    ``objective.metric`` shows after the first epoch instead of as every trial failing at its end.

    Returns:
        Whether the objective is missing (warned now or before).
    """
    name = objective_metric(metrics, metric)
    if name in metrics:
        return False
    if name not in _WARNED_OBJECTIVES:
        _WARNED_OBJECTIVES.add(name)
        log.warning("objective.metric %r%s is not a metric these trials log (%s). Optuna will record each trial "
                    "as failed, and the sampler and pruner get no values. Fix objective.metric in the grid: the "
                    "runs are kept, and the next bench run tells Optuna their values without training them again.",
                    name, did_you_mean(name, metrics, n=3, aside=True), ", ".join(sorted(metrics)))
    return True


def _objective_value(metrics: dict[str, float], metric: str) -> float | None:
    """The objective's finite value (see `objective_metric`), or None."""
    value = metrics.get(objective_metric(metrics, metric))
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _adopt(study: Any, trial: Any, run: Any, metric: str, tracker: StudyTracker) -> str:
    """Tells Optuna the outcome (and the per-epoch objective) of an MLflow run that already finished this
    trial's spec: a process that died before telling Optuna, or a search that drew a configuration again
    (a trial is a pure function of its spec)."""
    from optuna.trial import TrialState

    status = run.data.tags.get(STATUS_TAG)
    trial.set_user_attr(RUN_ATTR, run.info.run_id)
    trial.set_user_attr(ATTR_ADOPTED, True)
    for m in sorted(tracker.client.get_metric_history(run.info.run_id, metric), key=lambda m: m.step):
        if math.isfinite(m.value):
            trial.report(float(m.value), int(m.step))
    if status == "finished":
        value = _objective_value(run.data.metrics, metric)
        if value is not None:
            study.tell(trial.number, value)
            return "finished"
        trial.set_user_attr(REASON_ATTR, f"the finished run has no metric {metric!r}")
        study.tell(trial.number, state=TrialState.FAIL)
        return "failed"
    if status == "pruned":
        study.tell(trial.number, state=TrialState.PRUNED)
        return "pruned"
    trial.set_user_attr(DIVERGED_ATTR, run.data.tags.get("diverged", ""))
    trial.set_user_attr(REASON_ATTR, run.data.tags.get("diverged_reason", "diverged"))
    study.tell(trial.number, state=TrialState.FAIL)
    return "diverged"



@dataclass
class _Claimed:
    """A popped trial that is to be trained: its Optuna handle, spec, checkpoint path, pruner callback, tags."""

    trial_id: int
    number: int
    trial: Any
    spec: Any
    checkpoint: Path | None
    on_epoch: Callable[[int, dict[str, float]], None]
    tags: dict[str, str]


def _claim(study: Any, trial_id: int, config: StudyConfig, tracker: StudyTracker,
           cells: dict[str, Any] | None, checkpoint_dir: Path | None) -> tuple[str, _Claimed | None]:
    """What happens to a popped trial before training: its spec is built; a duplicate or a trial whose spec an
    MLflow run already settled is told to Optuna here (``(status, None)``); else ``("train", claimed)``."""
    import optuna
    from optuna.trial import TrialState

    frozen = study._storage.get_trial(trial_id)
    kind = frozen.user_attrs.get(KIND_ATTR)
    if kind is None:
        raise ValueError(f"trial {frozen.number} was not enqueued by bench (no {SLOT_ATTR}); it is skipped")
    view = (CellStudy(study, frozen.user_attrs[CELL_ATTR])
            if kind == "search" and config.scope == "cell" else study)
    trial = optuna.Trial(view, trial_id)
    spec = trial_spec(trial, config, cells)
    key = spec.key()
    if kind == "search":
        trial.set_user_attr(KEY_ATTR, key)
        trial.set_user_attr(SPEC_ATTR, {k: v for k, v in spec.to_params().items()})
        trial.set_user_attr(LABELS_ATTR, dict(spec.labels))
    duplicate = _duplicate_of(study, frozen)
    if duplicate is not None:
        trial.set_user_attr(DUPLICATE_ATTR, duplicate)
        study.tell(frozen.number, state=TrialState.FAIL)
        return "duplicate", None
    runs = tracker.trial_runs(key)
    done = [r for r in runs if r.data.tags.get(STATUS_TAG) in _SETTLED]
    if done:
        latest = max(done, key=lambda r: r.info.start_time or 0)
        return _adopt(study, trial, latest, config.metric, tracker), None
    for r in runs:
        if r.info.status == "RUNNING":
            tracker.mark_interrupted(r.info.run_id)

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        value = _objective_value(metrics, config.metric)
        if value is None:
            warn_missing_objective(metrics, config.metric)
            return
        trial.report(value, epoch)
        # not after the last epoch: the training is done, and a pruned trial would only drop out of the tables
        if kind == "search" and epoch < spec.epochs - 1 and trial.should_prune():
            raise Pruned(f"pruned at epoch {epoch} ({config.metric}={value:.4g})")

    ckpt = (checkpoint_dir / f"{key}.pt") if checkpoint_dir is not None else None
    tags = {"optuna_study": study.study_name, "marginbench.slot": frozen.user_attrs.get(SLOT_ATTR, "")}
    return "train", _Claimed(trial_id, frozen.number, trial, spec, ckpt, on_epoch, tags)


def _record(study: Any, claimed: _Claimed, outcome: TrialOutcome, config: StudyConfig,
            options: WorkerOptions) -> str:
    """Tells Optuna a trained trial's outcome; its status (``failed`` when Optuna could not be told)."""
    from optuna.trial import TrialState

    trial, number = claimed.trial, claimed.number
    status = outcome.status
    try:
        trial.set_user_attr(RUN_ATTR, outcome.run_id)
        if status == "finished":
            value = _objective_value(outcome.result.metrics if outcome.result else {}, config.metric)
            if value is None:
                available = ", ".join(sorted(outcome.result.metrics)) if outcome.result else ""
                trial.set_user_attr(REASON_ATTR, f"objective metric {config.metric!r} missing or not finite; the "
                                                 f"trial logged: {available} (set objective.metric in the grid)")
                study.tell(number, state=TrialState.FAIL)
                status = "failed"
            else:
                study.tell(number, value)
        elif status == "pruned":
            study.tell(number, state=TrialState.PRUNED)
        elif status == "diverged":
            assert outcome.result is not None and outcome.result.diverged is not None
            d = outcome.result.diverged
            trial.set_user_attr(DIVERGED_ATTR, f"epoch={d['epoch']} step={d['step']}")
            trial.set_user_attr(REASON_ATTR, d["reason"])
            study.tell(number, state=TrialState.FAIL)
        else:
            trial.set_user_attr(ERROR_ATTR, outcome.error or "failed")
            study.tell(number, state=TrialState.FAIL)
    except KeyboardInterrupt:
        raise
    except Exception as err:
        log.exception("could not record trial %d in Optuna", number)
        _fail(study, claimed.trial_id, f"{type(err).__name__}: {err}")
        return "failed"
    if claimed.checkpoint is not None and status != "failed" and not options.keep_checkpoints:
        claimed.checkpoint.unlink(missing_ok=True)
    return status


def _trial_options(options: WorkerOptions, claimed: _Claimed, dist: Any = None) -> TrialOptions:
    return TrialOptions(device=options.device, plots=options.plots, checkpoint_path=claimed.checkpoint,
                        progress=options.progress, distributed=dist)


def run_study_trial(study: Any, trial_id: int, config: StudyConfig, tracker: StudyTracker, options: WorkerOptions,
                    *, cells: dict[str, Any] | None = None, checkpoint_dir: Path | None = None,
                    dist: Any = None, store_errors: list[Exception] | None = None) -> tuple[str, TrialOutcome | None]:
    """Runs one popped (RUNNING) Optuna trial and tells Optuna its outcome; never raises an ordinary exception.

    Args:
        store_errors: a tracking store error that failed the trial is appended here (`_check_store`).

    Returns:
        ``(status, outcome)``: status ``finished``, ``pruned``, ``diverged``, ``failed`` or ``duplicate``;
        the outcome of the training run (None when adopted, a duplicate, or failed before training).
    """
    storage = study._storage
    storage.set_trial_system_attr(trial_id, OWNER_ATTR, worker_identity())
    with _Heartbeat(storage, trial_id):
        try:
            status, claimed = _claim(study, trial_id, config, tracker, cells, checkpoint_dir)
            if claimed is None:
                return status, None
            on_start = None
            if dist is not None:
                claimed.tags["world_size"] = str(dist.world_size)
                on_start = functools.partial(_send_trial, claimed, dist)
            outcome = execute_trial(claimed.spec, tracker, _trial_options(options, claimed, dist),
                                    trial_number=claimed.number, extra_tags=claimed.tags, on_epoch=claimed.on_epoch,
                                    on_start=on_start)
        except KeyboardInterrupt:
            with interrupts_held():
                _give_back(study, trial_id)
            raise
        except RecordingFailed as err:  # failed with the trial's own error and the store's (`_record` tells it)
            log.error("trial id %d: %s", trial_id, err)
            _note_store_error(err.store_error, store_errors)
            (outcome,) = err.outcomes
        except Exception as err:  # a broken trial must not stop the worker
            log.exception("trial id %d failed before or after training", trial_id)
            _fail(study, trial_id, f"{type(err).__name__}: {err}")
            _note_store_error(err, store_errors)
            return "failed", None
    return _record(study, claimed, outcome, config, options), outcome


def _send_trial(claimed: _Claimed, dist: Any, run: Any = None) -> None:
    """Rank 0 of a torchrun worker sends the trial to the other ranks (`follow`), once its MLflow run is open: sent
    before, a run that failed to open left them training it alone, waiting in a collective rank 0 never joined."""
    from bench.distributed import broadcast_object

    ckpt = claimed.checkpoint
    broadcast_object(("trial", claimed.spec.to_params(), dict(claimed.spec.labels), str(ckpt) if ckpt else None),
                     dist)


def run_study_trials(study: Any, trial_ids: Sequence[int], config: StudyConfig, tracker: StudyTracker,
                     options: WorkerOptions, *, cells: dict[str, Any] | None = None, checkpoint_dir: Path | None = None,
                     store_errors: list[Exception] | None = None) -> list[tuple[int, str, TrialOutcome | None]]:
    """`run_study_trial` for several popped trials at once: those that can be fused (`bench.fused`) train as
    one program, the others one after another; never raises an ordinary exception. A group whose runs could not
    be opened (the tracking store failing as its second run is made, say) fails each of its trials with the error;
    one whose store failed as trial k was recorded (`bench.runner.RecordingFailed`) keeps the outcomes of the
    trials before k and fails k and the later ones with the reason; the next group goes on.

    Returns:
        ``(trial_id, status, outcome)`` for each trial, in the order given.
    """
    from bench.fused import group_fusable

    storage = study._storage
    results: dict[int, tuple[str, TrialOutcome | None]] = {}
    with contextlib.ExitStack() as beats:
        for trial_id in trial_ids:
            storage.set_trial_system_attr(trial_id, OWNER_ATTR, worker_identity())
            beats.enter_context(_Heartbeat(storage, trial_id))
        try:
            claimed: list[_Claimed] = []
            for trial_id in trial_ids:
                try:
                    status, c = _claim(study, trial_id, config, tracker, cells, checkpoint_dir)
                except Exception as err:
                    log.exception("trial id %d failed before training", trial_id)
                    _fail(study, trial_id, f"{type(err).__name__}: {err}")
                    _note_store_error(err, store_errors)
                    status, c = "failed", None
                if c is None:
                    results[trial_id] = (status, None)
                else:
                    claimed.append(c)
            for group in group_fusable([c.spec for c in claimed], max(1, len(claimed))):
                members = [claimed[i] for i in group]
                try:
                    outcomes = execute_fused_trials(
                        [c.spec for c in members], tracker, [_trial_options(options, c) for c in members],
                        trial_numbers=[c.number for c in members], extra_tags=[c.tags for c in members],
                        on_epochs=[c.on_epoch for c in members])
                except RecordingFailed as err:  # those recorded before the store failed keep their outcome
                    log.error("trial ids %s: %s", ", ".join(str(c.trial_id) for c in members), err)
                    _note_store_error(err.store_error, store_errors)
                    outcomes = err.outcomes
                except Exception as err:  # it closed its runs; their trials fail, and the worker goes on
                    log.exception("trial ids %s failed before or after training",
                                  ", ".join(str(c.trial_id) for c in members))
                    for c in members:
                        _fail(study, c.trial_id, f"{type(err).__name__}: {err}")
                        results[c.trial_id] = ("failed", None)
                    _note_store_error(err, store_errors)
                    continue
                for c, outcome in zip(members, outcomes, strict=True):
                    results[c.trial_id] = (_record(study, c, outcome, config, options), outcome)
        except KeyboardInterrupt:
            with interrupts_held():
                for trial_id in trial_ids:
                    if trial_id not in results:
                        _give_back(study, trial_id)
            raise
    return [(trial_id, *results[trial_id]) for trial_id in trial_ids]


def _note_store_error(err: Exception, store_errors: list[Exception] | None) -> None:
    """Appends ``err`` to ``store_errors`` when it is the tracking store's (MLflow's) error."""
    from mlflow.exceptions import MlflowException

    if store_errors is not None and isinstance(err, MlflowException):
        store_errors.append(err)


def _check_store(tracker: StudyTracker, err: Exception, in_a_row: int) -> None:
    """After trials the tracking store failed with ``err``: returns when the store answers again (the worker
    goes on), else raises `bench.tracking.store_failed`, as it does once ``in_a_row`` reaches
    `_STORE_FAILURES_IN_A_ROW` (the store answers reads but keeps failing trials)."""
    from bench.tracking import store_failed

    if in_a_row < _STORE_FAILURES_IN_A_ROW:
        try:
            tracker.check()
            return
        except Exception as again:
            err = again
    raise store_failed(tracker.tracking_uri, err) from err


def _fail(study: Any, trial_id: int, error: str) -> None:
    from optuna.trial import TrialState

    try:
        study._storage.set_trial_user_attr(trial_id, ERROR_ATTR, error[:5000])
        study._storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
    except Exception:
        log.exception("could not mark trial id %s failed", trial_id)


def _give_back(study: Any, trial_id: int) -> None:
    """An interrupted trial (Ctrl-C, SIGTERM) goes back in the queue at once, keeping its checkpoint."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    try:
        if study._storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
            requeue_trial(study, study._storage.get_trial(trial_id), why="was interrupted (Ctrl-C or SIGTERM)")
    except UpdateFinishedTrialError:
        pass
    except Exception:
        log.exception("could not put interrupted trial id %s back in the queue", trial_id)


# ------------------------------------------------------------------------------------------ the loop
@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Blocks SIGINT and SIGTERM at the OS for the duration: one that arrives meanwhile is delivered (and raises)
    when they are unblocked, not dropped. Where signals cannot be blocked (another thread, no pthread_sigmask)
    it does nothing."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _pop(study: Any, popped: list[int]) -> int | None:
    """`pop_next_trial_id`, its trial noted in ``popped`` before an interrupt can land (None: none waits).

    Inside the pop the storage sets the trial RUNNING and then reads its log back: an interrupt there lost the
    trial's id, so nothing could give it back; it is held until the id is noted.
    """
    with _signals_deferred():
        trial_id = pop_next_trial_id(study)
        if trial_id is not None:
            popped.append(trial_id)
    return trial_id


@contextlib.contextmanager
def _given_back_if_interrupted(study: Any, popped: list[int]) -> Iterator[None]:
    """Puts the ``popped`` trials back in the queue when an interrupt lands before they have all been run, or the
    tracking store fails before they start (the study's run reopened: the worker stops then).

    `run_study_trial` gives back its trial when interrupted while it runs; this covers the rest of the way,
    from the pop on (the tracker's reopening, the further pops of ``--fuse``, the owner's record), which left
    the trials RUNNING until a later process reaped them. A trial already told (finished, given back) stays as
    it is: Optuna refuses to change a finished trial.
    """
    from mlflow.exceptions import MlflowException

    try:
        yield
    except (KeyboardInterrupt, MlflowException):
        with interrupts_held():
            for trial_id in popped:
                _give_back(study, trial_id)
        raise


def _study_tracker(study: str, tracking_uri: str | None, **kwargs: Any) -> StudyTracker:
    """`StudyTracker`, or `bench.tracking.store_failed` when the store fails as the study's experiment and run are
    looked up (a server answering 500: `check_tracking_uri` lets it through, and MLflow raised a traceback)."""
    from mlflow.exceptions import MlflowException

    from bench.tracking import resolve_tracking_uri, store_failed

    try:
        return StudyTracker(study, tracking_uri, **kwargs)
    except MlflowException as err:
        raise store_failed(resolve_tracking_uri(tracking_uri), err) from err


def _wait_for_study(name: str, storage: Any, options: WorkerOptions, echo: Callable[[str], None]) -> Any:
    deadline = time.monotonic() + options.wait_seconds
    said = False
    while True:
        try:
            return load_study(name, storage, worker_index=options.worker_index)
        except StudyNotReady as err:
            if time.monotonic() >= deadline:
                raise StudyNotReady(f"{err}; start `bench run --grid ...` with the same --storage (it enqueues "
                                    f"the grid; --workers 0 only enqueues)") from err
            if not said:
                echo(f"waiting for study {name!r} to be prepared by `bench run` ({err})")
                said = True
            time.sleep(options.poll_seconds)


def work(study_name: str, storage_url: str, tracking_uri: str | None, options: WorkerOptions | None = None, *,
         echo: Callable[[str], None] = print, dist: Any = None,
         check: Callable[[Any], Any] | None = None, statuses: list[str] | None = None) -> list[TrialOutcome]:
    """One worker: runs trials of the study until none is waiting or running.

    Args:
        study_name: the grid's name.
        storage_url: a `bench.study.resolve_storage` value.
        tracking_uri: MLflow URI (None: the default).
        options: device, threads, checkpoints...
        echo: where one line per trial goes.
        dist: a `bench.distributed.DistContext` when launched by torchrun: rank 0 runs this loop and
            sends each trial to the other ranks (see `follow`).
        check: called with the Optuna storage once the study is found, before anything is written; it raises to
            refuse the study (``bench worker``: `bench.study_owner.check_owner`).
        statuses: each popped trial's status (``finished``, ``failed``, ``duplicate``...) is appended here as it
            ends, those that failed before training too (no outcome: their MLflow run never opened, say).

    Returns:
        The outcomes of the trials this worker trained.

    Raises:
        SystemExit: the tracking store fails and does not answer again (`_check_store`), or fails outside a
            trial (at the start, as the study's run is reopened or closed); one line, naming the store.
    """
    import torch
    from mlflow.exceptions import MlflowException
    from optuna.trial import TrialState

    options = options or WorkerOptions()
    if options.threads:
        torch.set_num_threads(options.threads)
    outcomes: list[TrialOutcome] = []
    ran = 0
    idle = options.poll_seconds
    store_failures = 0  # pops in a row whose trials the tracking store failed
    stop: tuple[str, ...] = ("stop",)
    try:  # under torchrun the other ranks wait for our "stop", whatever happens here
        storage = open_storage(storage_url)
        study = _wait_for_study(study_name, storage, options, echo)
        if check is not None:
            check(storage)
        config = stored_config(study)
        cells = study.user_attrs.get(STUDY_CELLS_ATTR)
        tracker = StudyTracker(study_name, tracking_uri)
        ckpt_dir = options.checkpoint_dir or checkpoint_folder(storage_url, study_name)
        while options.max_trials is None or ran < options.max_trials:
            reap_stale_trials(study)
            popped: list[int] = []
            store_errors: list[Exception] = []
            with _given_back_if_interrupted(study, popped):
                trial_id = _pop(study, popped)
                if trial_id is None:
                    if study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                        time.sleep(idle)  # one of them may die and come back
                        idle = min(idle * 2, 30.0)
                        continue
                    tracker.close(study_summary(study))
                    break
                if ran == 0:
                    tracker.reopen()
                idle = options.poll_seconds
                t0 = time.perf_counter()
                if options.fuse > 1 and dist is None:
                    room = options.fuse if options.max_trials is None else min(options.fuse, options.max_trials - ran)
                    while len(popped) < room and _pop(study, popped) is not None:
                        pass
                    done = run_study_trials(study, list(popped), config, tracker, options, cells=cells,
                                            checkpoint_dir=ckpt_dir, store_errors=store_errors)
                else:
                    status, outcome = run_study_trial(study, trial_id, config, tracker, options, cells=cells,
                                                      checkpoint_dir=ckpt_dir, dist=dist, store_errors=store_errors)
                    done = [(trial_id, status, outcome)]
            seconds = time.perf_counter() - t0
            for trial_id, status, outcome in done:
                ran += 1
                if statuses is not None:
                    statuses.append(status)
                if outcome is not None:
                    outcomes.append(outcome)
                frozen = storage.get_trial(trial_id)
                echo(options.prefix + _line(frozen, status, outcome, config.metric, seconds))
            store_failures = store_failures + 1 if store_errors else 0
            if store_errors:
                _check_store(tracker, store_errors[-1], store_failures)
            if dist is not None:
                from bench.distributed import check_in_step

                check_in_step()  # a failure inside a training step left the other ranks behind: this job stops
    except KeyboardInterrupt:  # the other ranks say why they stop, and meet this one at the exit (`follow`)
        stop = ("stop", "rank 0 was interrupted (Ctrl-C or SIGTERM)")
        raise
    except MlflowException as err:  # the store failed outside a trial: opening the study's run, closing it
        from bench.tracking import resolve_tracking_uri, store_failed

        raise store_failed(resolve_tracking_uri(tracking_uri), err) from err
    finally:
        if dist is not None:
            from bench.distributed import broadcast_object, in_step

            if in_step():  # else the other ranks wait in the failed trial's collective: torchrun ends them
                broadcast_object(stop, dist)
    return outcomes


def follow(dist: Any, options: WorkerOptions, stopped: list[str] | None = None) -> None:
    """Ranks other than 0 of a torchrun worker: train each trial rank 0 sends, until it says stop (with why, when
    rank 0 was interrupted: one line says so here).

    Args:
        stopped: rank 0's stop is noted here (its reason, or ``""``) as it arrives, before an interrupt that came
            while this rank waited for it is raised: rank 0 then waits in the exit barrier (`bench.distributed.
            shutdown`), which this rank must join.

    Raises:
        SystemExit: a failure inside a training step left the ranks out of step (`bench.distributed.check_in_step`).
    """
    from bench.distributed import broadcast_object, check_in_step
    from bench.spec import TrialSpec
    from bench.tracking import _interrupts_deferred
    from bench.trial import run_trial

    while True:
        with _interrupts_deferred():
            message = broadcast_object(None, dist)
            if message[0] == "stop" and stopped is not None:
                stopped.append(message[1] if len(message) > 1 else "")
        if message[0] == "stop":
            if len(message) > 1:
                print(f"bench worker: rank {dist.rank}: {message[1]}; this rank stops too", file=sys.stderr)
            return
        _, params, labels, ckpt = message
        spec = TrialSpec.from_params(params, labels)
        try:
            run_trial(spec, TrialOptions(device=dist.device, checkpoint_path=Path(ckpt) if ckpt else None,
                                         progress=False, distributed=dist))
        except Exception:
            log.exception("rank %d: trial %s failed", dist.rank, spec.label)
            check_in_step()


def _recorded_params(trial: Any) -> dict[str, Any]:
    """The flat spec a trial's user attributes hold: sampled (search trials) or the grid trial's; may be empty."""
    params = trial.user_attrs.get(SPEC_ATTR) or trial.user_attrs.get(PARAMS_ATTR) or {}
    return params if isinstance(params, dict) else {}


def _line(frozen: Any, status: str, outcome: TrialOutcome | None, metric: str, seconds: float) -> str:
    spec_label = ""
    if outcome is not None:
        spec_label = f"{outcome.spec.label} seed={outcome.spec.seed}"
    else:
        labels = frozen.user_attrs.get(LABELS_ATTR) or {}
        spec_label = " / ".join(labels.values()) or frozen.user_attrs.get(SLOT_ATTR, "")
        seed = _recorded_params(frozen).get("seed")
        if seed is not None:  # an adopted trial: its seed tells it from the cell's other seeds
            spec_label += f" seed={seed}"
    detail = ""
    if status == "finished" and frozen.value is not None:
        name = objective_metric(outcome.result.metrics, metric) if outcome and outcome.result else metric
        detail = f" {name}={frozen.value:.4f}"
    elif status == "diverged":
        detail = f" ({frozen.user_attrs.get(DIVERGED_ATTR, '')})"
    elif status == "failed":
        detail = f" {frozen.user_attrs.get(ERROR_ATTR) or frozen.user_attrs.get(REASON_ATTR, '')}"
    elif status == "duplicate":
        detail = f" (trial {frozen.user_attrs.get(DUPLICATE_ATTR)} has it)"
    if frozen.user_attrs.get(ATTR_ADOPTED):
        detail += " (recorded by an earlier process)"
    params = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in frozen.params.items())
    return f"trial {frozen.number} {spec_label}{' ' + params if params else ''}: {status}{detail} ({seconds:.1f} s)"


# ------------------------------------------------------------------------------------------ processes
def _die_with_parent(parent: int) -> None:  # pragma: no cover - runs in the child
    """Linux: the worker gets SIGKILL when ``bench run`` (process ``parent``) dies, so a killed sweep leaves no
    orphans. SIGINT is reset to its default: a ``bench run`` started in the background (``&``, nohup) has SIGINT
    ignored, which the worker would inherit, and `stop_workers` relies on SIGINT to make a worker give its trial
    back.

    A parent that died after the fork but before the prctl sends no signal (the death already happened): the
    worker, adopted by init (or a subreaper), trained on alone. So once the prctl is in place, a worker whose
    parent is no longer ``parent`` kills itself, as the signal would have. SIGINT and SIGTERM, blocked by
    `spawn_workers` while it forks (`_signals_deferred`, a mask the worker inherits), are unblocked."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        signal.raise_signal(signal.SIGKILL)


def spawn_workers(grid: Grid, n: int, *, storage_url: str, tracking_uri: str, sets: Sequence[str] = (),
                  gpus: Sequence[str] | None = None, device: str | None = None, plots: bool = False,
                  threads: int | None = None, index_base: int = 0, wait: float = 60.0,
                  fuse: int = 1, procs: list[subprocess.Popen] | None = None) -> list[subprocess.Popen]:
    """Starts workers 1..n-1 of this machine (worker 0 is the caller) as ``bench worker`` processes.

    Worker j gets GPU ``gpus[j % len(gpus)]`` as its only visible device and the worker index
    ``index_base + j``; each gets SIGKILL when its parent dies (Linux).

    Args:
        procs: the caller's list, each worker appended as it starts (returned): an interrupt while they start
            (a SIGTERM inside `sigterm_forwarded`) leaves the caller those started, to stop and wait for; the
            returned list was lost with it. On Linux SIGINT and SIGTERM are held from each fork until the worker is
            in the list.
    """
    procs = [] if procs is None else procs
    # an id is a GPU as this process numbers them (worker 0 trains on cuda:<id>): under CUDA_VISIBLE_DEVICES=4,5,6,7
    # id 1 is GPU 5, so a child is given that entry, not "1" (another job's GPU, or one outside the allocation)
    visible = [v.strip() for v in os.environ["CUDA_VISIBLE_DEVICES"].split(",")] if os.environ.get(
        "CUDA_VISIBLE_DEVICES", "").strip() else None
    for j in range(1, n):
        i = index_base + j
        cmd = [sys.executable, "-m", "bench", "worker", "--grid", str(Path(grid.path).resolve()),
               "--storage", storage_url, "--tracking-uri", tracking_uri, "--worker-index", str(i), "--no-progress",
               "--wait", str(wait), "--plots" if plots else "--no-plots"]
        for s in sets:
            cmd += ["--set", s]
        env = dict(os.environ, MARGINBENCH_WORKER_PREFIX=f"[worker {i}] ")
        if gpus:
            gpu = str(gpus[j % len(gpus)])
            env["CUDA_VISIBLE_DEVICES"] = visible[int(gpu)] if visible is not None else gpu
            cmd += ["--device", "cuda"]
        elif device:
            cmd += ["--device", device]
        if threads:
            cmd += ["--threads", str(threads)]
        if fuse > 1:
            cmd += ["--fuse", str(fuse)]
        die = functools.partial(_die_with_parent, os.getpid()) if sys.platform == "linux" else None
        # held only where the worker unblocks them (_die_with_parent): it inherits the mask across exec
        with _signals_deferred() if die is not None else contextlib.nullcontext():
            procs.append(subprocess.Popen(cmd, env=env, preexec_fn=die))
    return procs


class Terminated(KeyboardInterrupt):
    """SIGTERM, taken as Ctrl-C (the trial goes back in the queue), but sent to this process alone: a worker it
    started did not get it, so `sigterm_forwarded` or `stop_workers` passes it on at once instead of waiting for
    them to stop."""


@contextlib.contextmanager
def sigterm_forwarded(procs: Sequence[subprocess.Popen]) -> Iterator[set[subprocess.Popen]]:
    """While inside, a SIGTERM to this process first sends SIGINT to each worker of ``procs`` still running, then
    does what it did before (`bench.commands.worker.on_sigterm`: raise `Terminated`).

    The workers used to hear of it from `stop_workers`, after this process had given its own trial back and closed
    its runs: with a slow or stalled tracking server they trained on all that while, and then took as long again.
    Yields the workers told, which `stop_workers` does not signal again (a second SIGINT interrupts a worker's
    cleanup). ``procs`` may be filled while inside (`spawn_workers`' ``procs``), so that a SIGTERM while they
    start reaches those started. Where SIGTERM is not handled in Python (its default kills the process; the workers
    die with it), or outside the main thread, it does nothing."""
    told: set[subprocess.Popen] = set()
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous) or threading.current_thread() is not threading.main_thread():
        yield told
        return

    def forward(signum: int, frame: Any) -> None:
        for p in procs:
            if p not in told and p.poll() is None:
                p.send_signal(signal.SIGINT)
                told.add(p)
        previous(signum, frame)

    signal.signal(signal.SIGTERM, forward)
    try:
        yield told
    finally:
        signal.signal(signal.SIGTERM, previous)


def wait_workers(procs: Sequence[subprocess.Popen], *, told: Collection[subprocess.Popen] = ()) -> list[int]:
    """Waits for worker processes; on Ctrl-C passes it on (except to those ``told``) and waits for them to give
    their trials back."""
    try:
        return [p.wait() for p in procs]
    except KeyboardInterrupt as err:
        stop_workers(procs, cause=err, told=told)
        raise


def stop_workers(procs: Sequence[subprocess.Popen], timeout: float = 60.0, grace: float = 5.0, *,
                 cause: BaseException | None = None, told: Collection[subprocess.Popen] = ()) -> None:
    """SIGINT to each worker still running (each puts its trial back in the queue), then waits for them.

    From a terminal the workers got the Ctrl-C too: they have ``grace`` seconds to stop on their own before the
    SIGINT that makes sure (a second one interrupts a worker's exit with a traceback). When the ``cause`` is a
    SIGTERM to this process (`Terminated`), no worker got it: they get the SIGINT at once, except those ``told``
    already (`sigterm_forwarded`)."""
    if isinstance(cause, Terminated):
        grace = 0.0
    deadline = time.monotonic() + grace
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.poll() is None and p not in told:
            p.send_signal(signal.SIGINT)
    for p in procs:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()


def run_study(grid: Grid, *, storage: str | None = None, tracking_uri: str | None = None, workers: int | None = None,
              gpus: Sequence[str] | None = None, device: str | None = None, plots: bool | None = None,
              progress: bool = True, threads: int | None = None, sets: Sequence[str] = (), fuse: int = 1,
              echo: Callable[[str], None] = print, config: StudyConfig | None = None) -> StudyReport:
    """``bench run``: prepares the grid's study, runs its trials with ``workers`` processes, reports.

    Args:
        grid: the validated grid.
        storage: Optuna storage (None: ``optuna.journal`` beside ``mlflow.db``).
        tracking_uri: MLflow URI (None: ``$MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db``).
        workers: trial processes at once (None: the grid's ``workers``, else one per GPU of ``gpus``, else
            1 in this process); 0 only enqueues, for ``bench worker`` processes elsewhere.
        gpus: GPU ids to spread workers over.
        device: the device of every worker without ``gpus``.
        plots: embedding pictures (None: the grid's ``plots``).
        progress: a progress bar (in-process runs only).
        threads: torch threads per worker (None: the CPU's cores divided among workers).
        sets: the ``--set`` overrides, passed on to worker processes.
        fuse: trials each worker trains as one program when they can be fused (`WorkerOptions.fuse`).
        echo: output.
        config: the grid's study config (None: validated from the grid).

    Raises:
        GridError: an invalid study key, or the study of the grid's name belongs to another grid file
            (`bench.study_owner`), before anything runs.
    """
    from bench.study import hide_password
    from bench.study_owner import check_owner
    from bench.tracking import resolve_tracking_uri

    config = config or StudyConfig.from_grid(grid)
    tracking = resolve_tracking_uri(tracking_uri)
    storage_url = resolve_storage(storage, tracking_uri=tracking)
    n = workers if workers is not None else (config.workers or (len(gpus) if gpus else 1))
    optuna_storage = open_storage(storage_url)  # a wrong --storage stops here, before MLflow gets a study run
    # another grid file's study of the same name stops here too, before a parent run lands in its experiment
    owner = check_owner(grid, optuna_storage, shown=hide_password(storage_url))
    tracker = _study_tracker(grid.name, tracking, description=grid.description, grid_path=str(grid.path))
    study = prepare_study(grid, config, optuna_storage, owner=owner,
                          mlflow={"tracking_uri": tracking, "parent_run_id": tracker.parent_run_id})
    slots = plan_slots(grid, config)
    before = study_summary(study, slots)
    echo(f"study {grid.name}: {len(slots)} trials ({_counts(before)}); storage {storage_url}; tracking {tracking}")
    for line in _settled_lines(study, slots):
        echo(line)
    report = StudyReport(grid.name, storage_url, tracking)
    plots = grid.plots if plots is None else plots
    if n == 0:
        report.counts = before
        echo("enqueued; start `bench worker` processes to run them")
        return report
    chosen = threads is not None  # --threads: every worker, worker 0 (this process) too, also when alone
    if threads is None:
        import torch

        threads = max(1, (os.cpu_count() or 1) // n) if n > 1 or not torch.cuda.is_available() else None
    options = WorkerOptions(device=f"cuda:{gpus[0]}" if gpus else device, plots=plots, progress=progress and n == 1,
                            threads=threads if n > 1 or chosen else None, prefix="[worker 0] " if n > 1 else "",
                            fuse=fuse)
    procs: list[subprocess.Popen] = []
    with sigterm_forwarded(procs) as told:
        try:
            # Worker 0 is this process; the others are `bench worker` processes that die with it. Started in here,
            # into our list: a SIGTERM or Ctrl-C while they start stops and waits for those started.
            spawn_workers(grid, n, storage_url=storage_url, tracking_uri=tracking, sets=sets, gpus=gpus,
                          device=device, plots=plots, threads=threads, fuse=fuse, procs=procs)
            report.outcomes = work(grid.name, storage_url, tracking, options, echo=echo)
        except BaseException as err:
            stop_workers(procs, cause=err, told=told)
            raise
        report.worker_exit_codes = wait_workers(procs, told=told)
    report.counts = study_summary(open_study_for_report(grid.name, storage_url), slots)
    return report


def _settled_lines(study: Any, slots: Sequence[Any]) -> list[str]:
    """``"  softmax seed=0: already finished"`` for each trial an earlier run settled (not run again)."""
    from optuna.trial import TrialState

    from bench.study import slot_trials

    by_slot = slot_trials(study)
    lines = []
    for slot in slots:
        done = [t for t in by_slot.get(slot.slot, []) if t.state != TrialState.WAITING and settles(t)
                and t.state != TrialState.RUNNING]
        if not done:
            continue
        t = done[-1]
        status = {TrialState.COMPLETE: "finished", TrialState.PRUNED: "pruned"}.get(t.state, "diverged")
        labels = t.user_attrs.get(LABELS_ATTR) or {}
        spec = _recorded_params(t)
        name = " / ".join(labels.values()) or str(spec.get("loss", slot.slot))
        lines.append(f"  {name} seed={spec.get('seed', '?')}: already {status}, not run again")
    return lines


def open_study_for_report(name: str, storage_url: str) -> Any:
    import optuna

    return optuna.load_study(study_name=name, storage=open_storage(storage_url, heartbeat=False))


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{v} {k}" for k, v in counts.items() if v) or "none yet"
