"""The tables `bench run` and `bench report` print."""

from __future__ import annotations

from typing import Any

from reports.runs import load_runs
from reports.tables import mean_std_table

__all__ = ["default_table"]


def default_table(grid: Any, tracking_uri: str | None = None) -> str:
    """One row per value of the grid's first axis, train and test accuracy as mean ± std over seeds."""
    runs = load_runs(grid.name, tracking_uri)
    if runs.empty:
        return f"(no runs of {grid.name} yet: bench run --grid {grid.path})"
    rows = grid.axes[0] if grid.axes else "label"
    if rows == "label":
        runs = runs.assign(label=runs["run_name"])
    metrics = [m for m in ("train_acc", "test_acc") if m in runs.columns]
    return f"### {grid.name}\n\n" + mean_std_table(runs, rows, metrics)
