"""Which of a study's runs belong to the grid as it is loaded now (its file and ``--set`` overrides).

A study (an MLflow experiment named after the grid) keeps every run ever made under that name: a smoke run
with ``--set epochs=1`` sits beside the full 20-epoch run of the same cell and seed. A table that counted
both would average a one-epoch accuracy with a twenty-epoch one as if they were two seeds. So a run is
tabled only when its logged params equal one of the grid's trials on every key both have, leaving out the
seed (a table aggregates seeds) and the keys the grid's ``search`` samples. Keys only one side has (a spec
field added since the run was logged) do not count against it. The runs left out are named, with how they
differ, so that a report run with other ``--set`` options can table them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import pandas as pd

from bench.spec import parse_param

__all__ = ["RunSplit", "split_runs"]

#: Keys that vary between runs of one cell and never make two runs different trials of it.
_IGNORED = frozenset({"seed"})


@dataclass(frozen=True)
class RunSplit:
    """A study's runs split by whether they belong to the grid as loaded.

    Attributes:
        kept: the runs of the grid's trials (the runs frame's rows, index kept).
        left_out: the other runs.
        differences: ``key=value`` settings of the left-out runs that no trial of the grid has, most common
            first (``epochs=1``), for the note under the table.
    """

    kept: pd.DataFrame
    left_out: pd.DataFrame
    differences: list[str]

    def note(self, grid_name: str) -> str:
        """One markdown line naming the runs left out, or ``""`` when none was."""
        n = len(self.left_out)
        if not n:
            return ""
        shown = ", ".join(self.differences[:4]) + (", ..." if len(self.differences) > 4 else "")
        how = f" ({shown})" if shown else ""
        return (f"*{n} run{'s' if n != 1 else ''} of study {grid_name} with other settings{how} "
                f"{'are' if n != 1 else 'is'} left out of this table; `bench report` with the `--set` options "
                f"they ran with tables them.*")


def _expected(grid: Any) -> dict[str, list[dict[str, Any]]]:
    """Each cell's flat params (typed, seed and searched keys out), by the cell's label."""
    searched = set((getattr(grid, "raw", None) or {}).get("search") or {})
    by_label: dict[str, list[dict[str, Any]]] = {}
    for cell in grid.cells:
        params = {k: parse_param(v) for k, v in cell.spec.to_params().items() if k not in _IGNORED | searched}
        by_label.setdefault(cell.spec.label, []).append(params)
    return by_label


def split_runs(grid: Any, runs: pd.DataFrame) -> RunSplit:
    """Splits ``runs`` (`reports.runs.load_runs`'s frame: ``param.<key>`` columns, ``label``) into the runs of
    ``grid``'s trials and the rest (see the module's docstring)."""
    if runs.empty:
        return RunSplit(runs, runs.iloc[0:0], [])
    by_label = _expected(grid)
    every = [params for cells in by_label.values() for params in cells]
    param_cols = [c for c in runs.columns if str(c).startswith("param.")]
    keep: list[bool] = []
    differences: Counter[str] = Counter()
    for _, row in runs.iterrows():
        logged = {c[len("param."):]: parse_param(row[c]) for c in param_cols
                  if isinstance(row[c], str) or not pd.isna(row[c])}
        candidates = by_label.get(str(row.get("label", "")), []) or every
        mismatches = [[k for k, v in params.items() if k in logged and logged[k] != v] for params in candidates]
        closest = min(mismatches, key=len, default=[])
        keep.append(not closest)
        differences.update(f"{k}={logged[k]}" for k in closest)
    mask = pd.Series(keep, index=runs.index)
    return RunSplit(runs[mask], runs[~mask], [text for text, _ in differences.most_common()])
