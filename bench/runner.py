"""Runs a grid's trials and records each as an MLflow child run.

`execute_trial` is the unit every driver calls (a study worker, `bench.distributed`, `bench perf`): it opens
the child run, trains, logs each epoch as it ends, logs pictures and the outcome, and never lets one
trial's failure stop the study. `run_grid` runs a grid's Optuna study in this process (`bench.workers`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.grid import Grid
from bench.spec import TrialSpec
from bench.tracking import StudyTracker, TrialRun
from bench.trial import TrialOptions, TrialResult, run_trial

__all__ = ["execute_trial", "run_grid", "TrialOutcome"]

log = logging.getLogger(__name__)


@dataclass
class TrialOutcome:
    """A trial's result (None when it raised) and its MLflow run id."""

    spec: TrialSpec
    run_id: str
    status: str
    result: TrialResult | None = None
    error: str | None = None


def execute_trial(spec: TrialSpec, tracker: StudyTracker, options: TrialOptions | None = None, *,
                  trial_number: int | None = None, extra_tags: dict[str, str] | None = None,
                  on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> TrialOutcome:
    """Runs one trial inside its own MLflow child run.

    A diverged trial closes its run FAILED with a ``diverged`` tag (epoch, step); a pruned one KILLED;
    an exception is logged with its traceback as an artifact and returned as status ``failed``. A trial
    resumed from its checkpoint logs the restored epochs too (tag ``resumed_from_epoch``), so the run
    holds the whole history. KeyboardInterrupt closes the run as ``interrupted`` and propagates.
    """
    options = options or TrialOptions()
    run: TrialRun = tracker.start_trial(spec, device=options.device, trial_number=trial_number, extra_tags=extra_tags)

    logged: list[int] = []

    def log_epoch(epoch: int, metrics: dict[str, float]) -> None:
        run.log_epoch(epoch, metrics)
        logged.append(epoch)
        if on_epoch is not None:
            on_epoch(epoch, metrics)

    try:
        result = run_trial(spec, replace(options, on_epoch=log_epoch))
    except Exception as err:  # one trial's crash must not end the study
        log.exception("trial %s seed %s failed", spec.label, spec.seed)
        tracker.record_failure(run, err)
        return TrialOutcome(spec, run.run_id, "failed", None, f"{type(err).__name__}: {err}")
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: close the run as interrupted; the caller re-queues the trial
        run.finish("interrupted")
        raise
    tags: dict[str, Any] = {"images_per_second": f"{result.images_per_second:.1f}",
                            "train_seconds": f"{result.train_seconds:.2f}", "device": result.device}
    first = min(logged) if logged else len(result.history)
    if first > 0 and result.history:  # resumed from a checkpoint: this run also gets the epochs before it
        for epoch, metrics in enumerate(result.history[:first]):
            run.log_epoch(epoch, metrics)
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
