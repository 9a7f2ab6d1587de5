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

from reports.markdown import default_table, render_results
from reports.readme import splice, splice_file
from reports.results import ResultsTable, load_results, results_frame, write_results
from reports.runs import latest_runs, load_runs, load_study
from reports.spec import ReportError, TableSpec, parse_tables
from reports.tables import CellStats, Table, aggregate, mean_std_table

__all__ = ["load_runs", "load_study", "latest_runs", "TableSpec", "ReportError", "parse_tables", "aggregate",
           "Table", "CellStats", "mean_std_table", "ResultsTable", "results_frame", "write_results", "load_results",
           "render_results", "default_table", "splice", "splice_file"]
