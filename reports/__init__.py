"""MLflow runs -> tidy DataFrame -> tables declared in the grid's ``report:`` section -> markdown; results CSVs
that rebuild the tables without MLflow; README splicing; report plots.

```python
from reports import load_runs, parse_tables, aggregate
runs = load_runs("quickstart")                        # one row per MLflow child run
(spec,) = parse_tables(grid.report, axes=grid.axes)   # what the grid asks for
print(aggregate(runs, spec).to_markdown())            # mean ± std (n=k) per cell, best in bold
```
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public names and the module that defines each: imported on first use, so that `reports.spec` (which grid
#: validation needs) does not pull in pandas, tabulate and matplotlib before a grid error can be reported.
_EXPORTS = {
    "default_table": "markdown", "render_results": "markdown",
    "splice": "readme", "splice_file": "readme",
    "ResultsTable": "results", "load_results": "results", "results_frame": "results", "write_results": "results",
    "latest_runs": "runs", "load_runs": "runs", "load_study": "runs",
    "ReportError": "spec", "TableSpec": "spec", "parse_tables": "spec",
    "CellStats": "tables", "Table": "tables", "aggregate": "tables", "mean_std_table": "tables",
}

__all__ = ["load_runs", "load_study", "latest_runs", "TableSpec", "ReportError", "parse_tables", "aggregate",
           "Table", "CellStats", "mean_std_table", "ResultsTable", "results_frame", "write_results", "load_results",
           "render_results", "default_table", "splice", "splice_file"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"reports.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'reports' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
