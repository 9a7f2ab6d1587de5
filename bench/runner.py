"""Runs a grid's trials and records each as an MLflow child run.

`execute_trial` is the unit every driver calls (a study worker, `bench.distributed`, `bench perf`): it opens
the child run, trains, logs each epoch as it ends, logs pictures and the outcome, and never lets one
trial's failure stop the study. `run_grid` runs a grid's Optuna study in this process (`bench.workers`).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.grid import Grid
from bench.spec import TrialSpec
from bench.tracking import StudyTracker, TrialRun
from bench.trial import TrialOptions, TrialResult, run_trial

__all__ = ["execute_trial", "execute_fused_trials", "run_grid", "TrialOutcome", "RecordingFailed", "interrupts_held"]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Holds back SIGINT and SIGTERM while an interrupted trial is put away (its run closed, its Optuna trial
    failed and queued again).

    A worker of ``bench run`` gets two SIGINTs for one Ctrl-C: the terminal's, and `stop_workers`' a moment
    later. The second used to land between the trial's FAIL and its copy in the queue, leaving it failed and
    never run again by a ``bench worker``. The first signal held is dropped (the process is stopping
    already); a second one (Ctrl-C pressed again) raises KeyboardInterrupt, so a hung cleanup can still be
    stopped. Outside the main thread (where Python delivers no signal) it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        held.append(signum)
        if len(held) > 1:
            raise KeyboardInterrupt

    previous = {s: signal.signal(s, hold) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


@dataclass
class TrialOutcome:
    """A trial's result (None when it raised) and its MLflow run id."""

    spec: TrialSpec
    run_id: str
    status: str
    result: TrialResult | None = None
    error: str | None = None


class RecordingFailed(Exception):
    """The tracking store failed while trials' outcomes were recorded (a crash's traceback and error tag, a
    result's tags, a run's close), after the runs were closed as far as the store let them be.

    Raised by `execute_trial` and `execute_fused_trials` instead of the store's error, which used to replace the
    trial's own (a ``RuntimeError`` in training was recorded as the store's ``MlflowException``) and fail a fused
    group's trials recorded before it.

    Attributes:
        outcomes: one per trial of the call, in order: those recorded before the store failed as recorded, the
            others ``failed``, their ``error`` naming the trial's own error and the store's.
        store_error: the store's exception (a worker reads the store before it pops more trials).
    """

    def __init__(self, outcomes: list[TrialOutcome], store_error: Exception) -> None:
        failed = [o.error for o in outcomes if o.status == "failed" and o.error]
        super().__init__(failed[0] if failed else f"{type(store_error).__name__}: {store_error}")
        self.outcomes = outcomes
        self.store_error = store_error


class _StoreFailed(Exception):
    """`_record_failure`: the store failed (``store_error``) as a trial's ``error`` (text) was recorded."""

    def __init__(self, error: str, store_error: Exception) -> None:
        super().__init__(error)
        self.error, self.store_error = error, store_error


def _with_store_error(error: str, store_error: BaseException) -> str:
    """``"RuntimeError: ... (and the tracking store failed as it was recorded: MlflowException: ...)"``."""
    return f"{error} (and the tracking store failed as it was recorded: {type(store_error).__name__}: {store_error})"


def execute_trial(spec: TrialSpec, tracker: StudyTracker, options: TrialOptions | None = None, *,
                  trial_number: int | None = None, extra_tags: dict[str, str] | None = None,
                  on_epoch: Callable[[int, dict[str, float]], None] | None = None,
                  on_start: Callable[[TrialRun], None] | None = None) -> TrialOutcome:
    """Runs one trial inside its own MLflow child run.

    A diverged trial closes its run FAILED with a ``diverged`` tag (epoch, step); a pruned one KILLED;
    an exception is logged with its traceback as an artifact and returned as status ``failed``. A trial
    resumed from its checkpoint logs the restored epochs too (tag ``resumed_from_epoch``), so the run
    holds the whole history. KeyboardInterrupt, from the run's start (its params half written) through training
    to the recording of the result, closes the run as ``interrupted`` and propagates.

    Args:
        on_start: called with the open run just before training starts (not when the run cannot be opened):
            under torchrun, rank 0 sends the trial to the other ranks there, so that they never train a trial
            whose run failed to open while rank 0 goes on to the next (`bench.workers.run_study_trial`).

    Raises:
        RecordingFailed: the tracking store failed as the trial's failure was recorded (a crash, or an error
            recording its result); its outcome is ``failed`` with both errors, kept on the run where it can be.
        Exception: the tracking store's error as the run is opened (made, its params written); the run, when it
            was made, is closed as ``failed`` with the error first (`_close_failed`).
    """
    options = options or TrialOptions()
    opened: list[TrialRun] = []
    try:
        run = tracker.start_trial(spec, device=options.device, trial_number=trial_number, extra_tags=extra_tags,
                                  opened=opened)
        logged: list[int] = []
        with _artifact_dir(options) as artifact_dir:
            try:
                if on_start is not None:
                    on_start(run)
                result = run_trial(spec, replace(options, artifact_dir=artifact_dir,
                                                 on_epoch=_epoch_logger(run, logged, on_epoch)))
            except Exception as err:  # one trial's crash must not end the study
                log.exception("trial %s seed %s failed", spec.label, spec.seed)
                return _record_failure(tracker, run, spec, err)
            return _finish_or_fail(tracker, run, result, logged)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the run is closed as interrupted; the caller re-queues the trial
        _close_interrupted(opened)
        raise
    except _StoreFailed as failed:
        (run,) = opened
        _close_as_failed(run, failed.error)
        raise RecordingFailed([TrialOutcome(spec, run.run_id, "failed", None, failed.error)],
                              failed.store_error) from failed.store_error
    except Exception as err:  # the store failed: the caller fails the trial, and its run must not stay RUNNING
        _close_failed(opened, err)
        raise


def execute_fused_trials(specs: Sequence[TrialSpec], tracker: StudyTracker, options: Sequence[TrialOptions], *,
                         trial_numbers: Sequence[int | None], extra_tags: Sequence[dict[str, str]],
                         on_epochs: Sequence[Callable[[int, dict[str, float]], None] | None]) -> list[TrialOutcome]:
    """`execute_trial` for trials trained as one program (`bench.fused.run_fused_trials`): each in its own
    MLflow child run, tagged ``fused_trials`` with the group's size; an exception fails every trial of the
    group, KeyboardInterrupt (from the start of the first run to the recording of the last) closes every run
    opened as ``interrupted`` and propagates, and so does a tracking store error as the runs are opened (the second
    run's creation, say), after closing every run opened as ``failed``.

    Raises:
        RecordingFailed: the store failed as trial k's outcome was recorded (its result, or a failure): the
            trials before k keep the outcomes recorded, k and the later ones are ``failed`` with the reason, their
            runs closed as failed where the store lets them be.
    """
    from bench.fused import run_fused_trials

    if len(specs) == 1:
        return [execute_trial(specs[0], tracker, options[0], trial_number=trial_numbers[0],
                              extra_tags=extra_tags[0], on_epoch=on_epochs[0])]
    opened: list[TrialRun] = []
    try:
        runs = [tracker.start_trial(spec, device=opt.device, trial_number=number,
                                    extra_tags={**extra, "fused_trials": str(len(specs))}, opened=opened)
                for spec, opt, number, extra in zip(specs, options, trial_numbers, extra_tags, strict=True)]
        logged: list[list[int]] = [[] for _ in specs]
        with contextlib.ExitStack() as stack:
            folders = [stack.enter_context(_artifact_dir(o)) for o in options]
            crash: Exception | None = None
            try:
                loggers = [_epoch_logger(run, done, f) for run, done, f in zip(runs, logged, on_epochs, strict=True)]
                results = run_fused_trials(specs, [replace(o, artifact_dir=d, on_epoch=f)
                                                   for o, d, f in zip(options, folders, loggers, strict=True)])
            except Exception as err:
                log.exception("fused trials %s failed", ", ".join(s.label for s in specs))
                crash = err
            outcomes: list[TrialOutcome] = []
            for k, (spec, run) in enumerate(zip(specs, runs, strict=True)):
                try:
                    outcomes.append(_record_failure(tracker, run, spec, crash) if crash is not None
                                    else _finish_or_fail(tracker, run, results[k], logged[k]))
                except _StoreFailed as failed:
                    raise _group_not_recorded(specs, runs, outcomes, failed, crash) from failed.store_error
            return outcomes
    except KeyboardInterrupt:  # every trial of the group is re-queued, those already recorded too
        _close_interrupted(opened)
        raise
    except RecordingFailed:
        raise
    except Exception as err:  # the store failed: the caller fails every trial of the group
        _close_failed(opened, err)
        raise


def _group_not_recorded(specs: Sequence[TrialSpec], runs: Sequence[TrialRun], recorded: list[TrialOutcome],
                        failed: _StoreFailed, crash: Exception | None) -> RecordingFailed:
    """The `RecordingFailed` of a fused group whose store failed as trial k = ``len(recorded)`` was recorded: the
    outcomes ``recorded`` before it stay; k fails with its error and the store's, each later trial with its crash
    and the store's error, or, trained, with the reason it was not recorded; their runs closed as failed. A later
    trial's run gets a ``traceback.txt`` like any failed trial's (the crash's, or the store error's), where the
    store takes it."""
    k = len(recorded)
    store = f"{type(failed.store_error).__name__}: {failed.store_error}"
    outcomes = list(recorded)
    for i in range(k, len(specs)):
        if i == k:
            error = failed.error
        elif crash is not None:
            error = _with_store_error(f"{type(crash).__name__}: {crash}", failed.store_error)
        else:
            error = (f"not recorded: the tracking store failed as {specs[k].label} seed={specs[k].seed}, trained "
                     f"with this trial, was recorded ({store})")
        if i > k:  # k's own recording (`_record_failure`) logged its traceback, or failed on it
            _log_traceback(runs[i], error, crash if crash is not None else failed.store_error)
        _close_as_failed(runs[i], error)
        outcomes.append(TrialOutcome(specs[i], runs[i].run_id, "failed", None, error))
    return RecordingFailed(outcomes, failed.store_error)


def _log_traceback(run: TrialRun, error: str, cause: BaseException) -> None:
    """Logs ``traceback.txt`` on a failed trial's run: its ``error`` (as recorded), then ``cause``'s traceback.

    Best effort, on a store that just failed: its own failure is logged, never raised, so that ``error`` stays the
    trial's error and the run is still closed."""
    text = "".join(traceback.format_exception(type(cause), cause, cause.__traceback__))
    try:
        run.log_text(f"{error}\n\n{text}", "traceback.txt")
    except Exception:
        log.exception("run %s: the traceback of its failure could not be logged (%s)", run.run_id, error[:200])


def _record_failure(tracker: StudyTracker, run: TrialRun, spec: TrialSpec, err: Exception) -> TrialOutcome:
    """`StudyTracker.record_failure` of a trial's ``err``: its ``failed`` outcome.

    Raises:
        _StoreFailed: the store failed as it was recorded; its ``error`` names both errors.
    """
    error = f"{type(err).__name__}: {err}"
    try:
        tracker.record_failure(run, err)
    except Exception as store_error:
        log.exception("run %s: the tracking store failed as the trial's %s was recorded", run.run_id,
                      type(err).__name__)
        raise _StoreFailed(_with_store_error(error, store_error), store_error) from store_error
    return TrialOutcome(spec, run.run_id, "failed", None, error)


def _close_interrupted(runs: Sequence[TrialRun]) -> None:
    """Closes runs as ``interrupted`` (MLflow KILLED), signals held (`interrupts_held`); a run already closed
    by its result is closed again so, as its trial goes back to the queue.

    A store error here is logged, not raised: raised, it replaced the interrupt, and the worker recorded a failed
    trial and went on training. A run left RUNNING is closed by the next process that claims its trial."""
    with interrupts_held():
        for run in runs:
            try:
                run.finish("interrupted")
            except Exception:
                log.exception("run %s: could not be closed as interrupted", run.run_id)


def _close_failed(runs: Sequence[TrialRun], err: Exception) -> None:
    """Closes the runs not closed yet as ``failed``, ``err`` (the tracking store's) in their ``error`` tag.

    Best effort: the store may still be failing. A run it cannot close is logged and left RUNNING (the next
    process that claims its trial closes it as ``interrupted``); ``err`` stays the error the caller raises."""
    for run in runs:
        _close_as_failed(run, f"{type(err).__name__}: {err}")


def _close_as_failed(run: TrialRun, error: str) -> None:
    """Closes a run not closed yet as ``failed``, ``error`` in its ``error`` tag; best effort (`_close_failed`)."""
    if run.closed_as is not None:  # recorded before the store failed (a fused group's earlier trials)
        return
    try:
        run.set_tags({"error": error[:5000]})
        run.finish("failed")
    except Exception:
        log.exception("run %s: could not be closed as failed (%s)", run.run_id, error[:200])


@contextlib.contextmanager
def _artifact_dir(options: TrialOptions) -> Iterator[Path]:
    """``options.artifact_dir``, else a temporary folder for the trial's pictures, removed once its run has
    logged them (`bench.trial` would make one that nobody removes: one per trial, pictures and all)."""
    if options.artifact_dir is not None:
        yield options.artifact_dir
        return
    with tempfile.TemporaryDirectory(prefix="marginbench-", ignore_cleanup_errors=True) as folder:
        yield Path(folder)


def _epoch_logger(run: TrialRun, logged: list[int], on_epoch: Callable[[int, dict[str, float]], None] | None
                  ) -> Callable[[int, dict[str, float]], None]:
    """The trial's ``on_epoch``: logs the epoch to the run (noting it in ``logged``), then calls ``on_epoch``."""
    def log_epoch(epoch: int, metrics: dict[str, float]) -> None:
        run.log_epoch(epoch, metrics)
        logged.append(epoch)
        if on_epoch is not None:
            on_epoch(epoch, metrics)
    return log_epoch


def _finish_or_fail(tracker: StudyTracker, run: TrialRun, result: TrialResult, logged: list[int]) -> TrialOutcome:
    """`_finish_run`, or, when recording the result raises (an epoch's metric write that failed in the
    background surfaces at its flush), the run closed as ``failed`` with the error: a run whose history lost
    an epoch is no result, and it must not stay RUNNING.

    Raises:
        _StoreFailed: recording that failure failed too (`_record_failure`).
    """
    try:
        return _finish_run(run, result, logged)
    except Exception as err:
        log.exception("trial %s seed %s: recording its result failed", result.spec.label, result.spec.seed)
        return _record_failure(tracker, run, result.spec, err)


def _finish_run(run: TrialRun, result: TrialResult, logged: list[int]) -> TrialOutcome:
    """Logs what a trained trial leaves besides its epochs (throughput, divergence, pictures) and closes its run."""
    spec = result.spec
    tags: dict[str, Any] = {"images_per_second": f"{result.images_per_second:.1f}",
                            "train_seconds": f"{result.train_seconds:.2f}", "device": result.device}
    first = min(logged) if logged else len(result.history)
    if first > 0 and result.history:  # resumed from a checkpoint: this run also gets the epochs before it,
        times = result.epoch_times  # at the time they were trained (now for a checkpoint that did not keep it)
        for epoch, metrics in enumerate(result.history[:first]):
            run.log_epoch(epoch, metrics, timestamp=times[epoch] if epoch < len(times) else None)
        tags["resumed_from_epoch"] = str(first)
    if result.diverged is not None:
        tags["diverged"] = f"epoch={result.diverged['epoch']} step={result.diverged['step']}"
        tags["diverged_reason"] = result.diverged["reason"]
    if result.skipped:
        tags["skipped_samples"] = str(len(result.skipped))
        run.log_text("\n".join(f"{p}\t{r}" for p, r in sorted(result.skipped.items())), "skipped_samples.tsv")
    run.set_tags(tags)
    for path in result.artifacts:
        run.log_artifact(Path(path), "plots")
    run.flush()
    run.set_tags({"logging_seconds": f"{run.log_seconds:.4f}"})
    run.finish(result.status)
    return TrialOutcome(spec, run.run_id, result.status, result)


def run_grid(grid: Grid, *, tracking_uri: str | None = None, device: str | None = None,
             progress: bool = True, echo: Callable[[str], None] = print,
             plots: bool | None = None, storage: str | None = None) -> list[TrialOutcome]:
    """Runs the grid's study in this process (one worker): every cell x seed once, resuming where a previous
    run stopped; see `bench.workers.run_study` for several workers and GPUs.

    Returns:
        The outcomes of the trials trained by this call (trials already settled are not run again).
    """
    from bench.workers import run_study

    report = run_study(grid, storage=storage, tracking_uri=tracking_uri, workers=1, device=device, plots=plots,
                       progress=progress, echo=echo)
    return report.outcomes
