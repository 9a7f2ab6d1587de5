"""Fixtures for the report tests: hand-built tidy run frames and MLflow stores with runs of known metrics."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

GOLDEN = Path(__file__).parent / "golden"
_COUNTER = itertools.count()


def run_row(labels: dict[str, str], seed: int, status: str = "finished", *, run_id: str | None = None,
            start: int | None = None, **metrics: float) -> dict[str, Any]:
    """One row of a tidy runs frame, as `reports.runs.load_runs` returns it (fixed provenance)."""
    i = next(_COUNTER)
    label = " / ".join(labels.values())
    row: dict[str, Any] = {
        "run_id": run_id or f"run{i:04d}", "run_name": f"{label} seed={seed}", "status": status, "seed": seed,
        "trial_key": f"key-{label}-{seed}", "start_time": 1_790_000_000_000 + (start if start is not None else i),
        "date": "2026-09-21", "label": label, "diverged": "epoch=2 step=40" if status == "diverged" else "",
        "git_commit": "0123456789abcdef0123456789abcdef01234567", "device_name": "NVIDIA H100 80GB HBM3",
        "torch_version": "2.14.1", "cuda_version": "13.0", "host": "gpu1", "param.dataset": "mnist",
        "param.epochs": "20",
    }
    row.update({f"label.{k}": v for k, v in labels.items()})
    row.update(metrics)
    return row


def frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(rows)


@pytest.fixture
def golden(request) -> Callable[[str, str], None]:
    """``golden(name, text)``: asserts ``text`` equals ``tests/reports/golden/<name>`` exactly.

    ``pytest --update-golden`` is not a thing here: set ``UPDATE_GOLDEN=1`` to rewrite the files, then read the
    diff before committing it.
    """
    import os

    def check(name: str, text: str) -> None:
        path = GOLDEN / name
        text += "\n"  # the files end with a newline, as editors leave them
        if os.environ.get("UPDATE_GOLDEN") == "1":
            path.write_text(text, encoding="utf-8")
        assert path.is_file(), f"no golden file {path}; create it with UPDATE_GOLDEN=1 and review it"
        expected = path.read_text(encoding="utf-8")
        assert text == expected, f"{name} differs from the golden file:\n--- expected\n{expected}\n--- got\n{text}"

    return check


Trial = tuple[dict[str, str], int, str, list[dict[str, float]], dict[str, Any]]


def log_trials(uri: str, study: str, trials: list[Trial]) -> tuple[Any, list[str]]:
    """Logs ``trials`` as child runs of ``study`` through `bench.tracking.StudyTracker`, exactly as `bench run`
    logs them. Each trial is ``(labels, seed, status, per_epoch_metrics, spec_changes)``; status ``running``
    leaves the run open. Returns the tracker and the run ids."""
    from bench.spec import TrialSpec
    from bench.tracking import StudyTracker

    tracker = StudyTracker(study, uri)
    ids = []
    for labels, seed, status, history, changes in trials:
        spec = TrialSpec(labels=labels, seed=seed, **changes)
        run = tracker.start_trial(spec, device="cpu")
        for epoch, metrics in enumerate(history):
            run.log_epoch(epoch, metrics)
        if status == "diverged":
            run.flush()
            run.set_tags({"diverged": f"epoch={len(history)} step=3"})
        if status == "running":
            run.flush()  # left open, as a trial still training is
        else:
            run.finish(status)
        ids.append(run.run_id)
    return tracker, ids
