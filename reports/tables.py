"""Aggregation over seeds and markdown rendering."""

from __future__ import annotations

import math

import pandas as pd
from tabulate import tabulate

__all__ = ["mean_std_table", "format_mean_std"]


def format_mean_std(values: list[float], digits: int = 4) -> str:
    """``"0.9712 ± 0.0031 (n=2)"``; a single value has no std."""
    clean = [v for v in values if v is not None and not math.isnan(v)]
    if not clean:
        return "-"
    s = pd.Series(clean)
    if len(clean) == 1:
        return f"{s.iloc[0]:.{digits}f} (n=1)"
    return f"{s.mean():.{digits}f} ± {s.std(ddof=1):.{digits}f} (n={len(clean)})"


def mean_std_table(runs: pd.DataFrame, rows: str, metrics: list[str], *, digits: int = 4) -> str:
    """Markdown table, one row per value of ``rows`` (a ``label.<axis>`` column or any column), one column
    per metric, cells mean ± sample std over seeds; a row whose runs all diverged shows ``diverged``."""
    if runs.empty:
        return "(no runs)"
    key = rows if rows in runs.columns else f"label.{rows}"
    if key not in runs.columns:
        raise KeyError(f"no column {rows!r} in the runs; grid axes: "
                       f"{', '.join(c[6:] for c in runs.columns if c.startswith('label.')) or 'none'}")
    body = []
    for value, group in runs.groupby(key, sort=False):
        finished = group[group["status"] == "finished"]
        if finished.empty:
            body.append([value] + [group["status"].iloc[0]] * len(metrics))
            continue
        body.append([value] + [format_mean_std(list(finished[m].astype(float)) if m in finished else [], digits)
                               for m in metrics])
    return tabulate(body, headers=[rows] + metrics, tablefmt="github")
