"""Markdown for a table: title, the table, the not-in-the-means summary, and a provenance line.

`render_results` is the one renderer: `bench report` (from MLflow) and README splicing (from the results
CSVs) both go through it, so the two print the same text for the same runs.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import pandas as pd

from reports.results import ResultsTable, grid_order, results_frame
from reports.spec import ReportError, TableSpec, default_tables, natural_key, parse_tables
from reports.tables import aggregate, escape_inline, escape_line, metric_columns, verification_accuracies

__all__ = ["render_results", "provenance_line", "grid_tables", "study_results", "default_table"]


def _unique(values: pd.Series) -> list[str]:
    out = sorted({str(v) for v in values if str(v) not in ("", "nan", "None")}, key=natural_key)
    return out


def _join(values: list[str], limit: int = 3) -> str:
    return ", ".join(values[:limit]) + (f" (+{len(values) - limit} more)" if len(values) > limit else "")


def provenance_line(results: ResultsTable) -> str:
    """``*4 runs of grid quickstart · digits, 10 epochs · cpu (...) · torch 2.14.1 · commit a3865ea · 2026-11-22*``."""
    frame = results.frame
    parts = [f"{len(frame)} run{'s' if len(frame) != 1 else ''} of grid {results.grid}"]
    if frame.empty:
        return _emphasis(parts[0])
    data = _join(_unique(frame["dataset"]))
    epochs = _unique(frame["epochs"])
    if data or epochs:
        parts.append(", ".join(p for p in (data, f"{_join(epochs)} epoch{'s' if epochs != ['1'] else ''}"
                                           if epochs else "") if p))
    devices = _unique(frame["device_name"])
    if devices:
        parts.append(_join(devices))
    torch_versions = _unique(frame["torch_version"])
    if torch_versions:
        parts.append("torch " + _join(torch_versions))
    commits = sorted({c[:7] + ("-dirty" if c.endswith("-dirty") else "") for c in _unique(frame["git_commit"])
                      if c != "unknown"})
    if commits:
        parts.append(("commit " if len(commits) == 1 else "commits ") + _join(commits))
    dates = sorted(_unique(frame["date"]))
    if dates:
        parts.append(dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}")
    return _emphasis(" · ".join(parts))


def _emphasis(text: str) -> str:
    """``text`` in italics, rendering as itself: what would pair inside is escaped (see `escape_inline`), and so
    is any ``*`` left, which would close the emphasis early (a device or dataset name such as ``a*b``)."""
    return "*" + re.sub(r"(?<!\\)\*", r"\\*", escape_inline(text, pipes=False)) + "*"


def render_results(results: ResultsTable, *, source: str | None = None) -> str:
    """A table's markdown section: title, table, summary of runs not in the means, provenance.

    Args:
        results: the table's source data (`study_results` from MLflow or `load_results` from a CSV).
        source: the results CSV's path as the README links it (appended to the provenance line).
    """
    table = aggregate(results.frame, results.spec, order=results.order)
    parts = []
    if results.spec.title:
        parts.append(escape_line(results.spec.title))
    parts.append(table.to_markdown())
    summary = table.summary()
    line = provenance_line(results)
    if source:
        line = line[:-1] + f" · run ids: [{source}]({source})*"
    if summary:
        parts.append(summary)
    selection = table.selection_note(results.grid)
    if selection:
        parts.append(selection)
    parts.append(line)
    if results.note:
        parts.append(results.note)
    return "\n\n".join(parts)


def grid_tables(grid: Any) -> list[TableSpec]:
    """The grid's ``report:`` tables, or the default table (every axis as rows, train and test accuracy)."""
    return parse_tables(grid.report, axes=grid.axes, source=str(grid.path)) or default_tables(grid.name, grid.axes)


def fit_default_table(spec: TableSpec, runs: pd.DataFrame) -> TableSpec:
    """The default table with the accuracies the runs have: train and test accuracy, and the verification
    accuracy of each pairs set (``lfw_acc``, a ``<pairs>_acc`` beside a ``<pairs>_auc``) of a face grid."""
    available = metric_columns(runs)
    verification = verification_accuracies(available)
    metrics = [m for m in ("train_acc", "test_acc") if m in available] + verification
    return replace(spec, metrics=tuple(metrics)) if metrics else spec


def study_results(grid: Any, runs: pd.DataFrame, specs: list[TableSpec] | None = None) -> list[ResultsTable]:
    """Each table's results frame from a study's tidy runs frame: the runs of the grid's trials as loaded
    (`reports.matching`: a smoke run with other ``--set`` options is not averaged in), the others named in
    each table's ``note``."""
    from reports.matching import split_runs

    order = grid_order(grid)
    split = split_runs(grid, runs)
    runs = split.kept
    if specs is None:
        specs = grid_tables(grid)
    if not grid.report and not runs.empty:  # the default table: the accuracies these runs have
        specs = [fit_default_table(spec, runs) for spec in specs]
    return [replace(results_frame(runs, spec, grid=grid.name, order=order, description=grid.description),
                    note=split.note(grid.name)) for spec in specs]


def default_table(grid: Any, tracking_uri: str | None = None) -> str:
    """Every table of the grid (its ``report:`` section, or the default table), from its MLflow runs, as markdown
    with a ``### <grid>/<table>`` heading each. What `bench run` prints at the end.

    Never raises for a table that cannot be built (a metric not logged, an invalid ``report:`` section): the
    table's place says why, so a finished study's output is not lost to a report problem.
    """
    from reports.runs import load_runs

    runs = load_runs(grid.name, tracking_uri)
    if runs.empty:
        return f"(no runs of {grid.name} yet: bench run --grid {grid.path})"
    try:
        specs = grid_tables(grid)
    except ReportError as err:
        return f"(no tables: {err})"
    sections = []
    for spec in specs:
        try:
            (results,) = study_results(grid, runs, [spec])
            sections.append(f"### {grid.name}/{spec.name}\n\n{render_results(results)}")
        except ReportError as err:
            sections.append(f"### {grid.name}/{spec.name}\n\n(cannot build this table: {err})")
    return "\n\n".join(sections)
