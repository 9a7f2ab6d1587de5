"""Runs a grid's trials and records each as an MLflow child run.

`execute_trial` is the unit every driver calls (the sequential loop here, an Optuna objective, a worker
process): it opens the child run, trains, logs each epoch as it ends, logs pictures and the outcome, and
never lets one trial's failure stop the study.
"""

from __future__ import annotations

import logging
import time
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
    an exception is logged with its traceback as an artifact and returned as status ``failed``.
    """
    options = options or TrialOptions()
    run: TrialRun = tracker.start_trial(spec, device=options.device, trial_number=trial_number, extra_tags=extra_tags)

    def log_epoch(epoch: int, metrics: dict[str, float]) -> None:
        run.log_epoch(epoch, metrics)
        if on_epoch is not None:
            on_epoch(epoch, metrics)

    try:
        result = run_trial(spec, replace(options, on_epoch=log_epoch))
    except Exception as err:  # one trial's crash must not end the study
        log.exception("trial %s seed %s failed", spec.label, spec.seed)
        tracker.record_failure(run, err)
        return TrialOutcome(spec, run.run_id, "failed", None, f"{type(err).__name__}: {err}")
    tags: dict[str, Any] = {"images_per_second": f"{result.images_per_second:.1f}",
                            "train_seconds": f"{result.train_seconds:.2f}", "device": result.device}
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
             plots: bool | None = None) -> list[TrialOutcome]:
    """Runs every cell x seed of ``grid`` one after another, skipping trials already finished in the store."""
    tracker = StudyTracker(grid.name, tracking_uri, description=grid.description, grid_path=str(grid.path))
    done = tracker.finished_keys()
    options = TrialOptions(device=device, plots=grid.plots if plots is None else plots, progress=progress)
    outcomes = []
    trials = grid.trials()
    for i, spec in enumerate(trials, 1):
        if spec.key() in done:
            echo(f"[{i}/{len(trials)}] {spec.label} seed={spec.seed}: already finished, skipped")
            continue
        t0 = time.perf_counter()
        outcome = execute_trial(spec, tracker, options)
        summary = ", ".join(f"{k}={v:.4f}" for k, v in (outcome.result.metrics if outcome.result else {}).items()
                            if k in ("train_acc", "test_acc") or k.endswith("_acc"))
        echo(f"[{i}/{len(trials)}] {spec.label} seed={spec.seed}: {outcome.status}"
             f"{' ' + summary if summary else ''} ({time.perf_counter() - t0:.1f} s)"
             + (f" {outcome.error}" if outcome.error else ""))
        outcomes.append(outcome)
    return outcomes
