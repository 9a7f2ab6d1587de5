"""MLflow runs -> tidy DataFrame -> aggregated tables -> markdown."""

from __future__ import annotations

from reports.runs import load_runs
from reports.tables import mean_std_table

__all__ = ["load_runs", "mean_std_table"]
