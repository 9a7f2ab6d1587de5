"""The ``report:`` section of a grid: which tables to build, validated, as frozen `TableSpec` objects.

A grid declares its tables::

    report:
      tables:
        - name: losses                     # results file reports/results/<grid>/losses.csv; README block name
          rows: loss                       # grid axis (or list of axes) giving the rows
          columns: [train_acc, test_acc]   # metrics as columns (final-epoch values by default)
        - name: backbones
          rows: loss
          columns: backbone                # an axis: a matrix of `metric`
          metric: test_acc
        - name: per-class
          rows: model
          columns: {pattern: "test_acc.class_*"}   # every metric matching the shell pattern, natural order
          transpose: true                  # classes as rows, models as columns
          mean_row: true                   # a Mean row (the mean over classes: mIOU-style)

Options of a table (all but ``name`` and ``rows`` optional):

- ``metric_source``: ``final`` (last epoch, default) or ``best`` (best epoch: max, min for losses).
- ``ci``: add the 95% t confidence interval of the mean to each cell.
- ``bold``: ``auto`` (default: max, min for losses, error rates and spreads, see `metric_direction`), ``max``,
  ``min`` or ``none``: the best mean among the rows, per metric column, in bold
  (among the columns of a row when transposed); a mapping ``{metric: min}`` sets it per metric.
- ``mean_row``: add a Mean row (the mean of the cell means of each column). A column where some cells have
  no value (``-``, ``diverged``, ``n/a``) shows the mean of the others with how many rows it covers,
  ``0.9650 (3 of 4)``, since it is not comparable to a mean over every row.
- ``digits``: decimals (default 4); ``percent``: show values x 100.
- ``title``: a line above the table; ``headers``: display names ``{train_acc: Train Acc., loss: Loss}``.
  Titles, headers and labels are text, not markdown: a newline reads as a space, and what markdown would
  change (a pipe, a pair of ``*``, a leading ``#``) is escaped so the table shows them as written.
- ``where``: keep only some cells, ``{backbone: mobilenetv3}`` or ``{backbone: [a, b]}``.
- ``transpose``: swap rows and columns after aggregation.
- ``select``: ``all`` (default: every finished run of a cell is a sample, seeds) or ``best``: only the cell's
  best finished run by ``select_by`` (default: the first metric; max, min for losses and error rates unless
  ``bold: {metric: ...}`` says), shown as ``(n=1, best of 20)``; for grids
  with ``search:`` ranges, whose runs in a cell are sampled hyperparameters, not seeds. ``best of k`` counts
  every finished run of the cell in the study, also those of an earlier run of the grid with a larger
  ``n_trials`` or other search ranges (they were made, and the value is the best of them all); a line under
  the table says so.

An axis that varies inside a table's cells (neither in ``rows``/``columns`` nor fixed by ``where``) is an
error: its runs would be averaged together as if they were seeds. The metrics a table names (``columns``,
``metric``, ``select_by``, ``bold`` keys; a ``pattern`` must match one) are checked against those the grid's trials
log when the grid is loaded (`bench.grid`, `bench.metric_names`), and against the runs' by `bench report`; the
``headers`` keys, against what the table shows (`TableSpec.header_problems`), when the grid is loaded, when a
table is exported with its runs' metrics (`reports.results.write_results`) and when a results file's stored spec is
read (`reports.results.load_results`).
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TableSpec", "ReportError", "parse_tables", "default_tables", "TABLE_KEYS", "natural_key",
           "metric_direction", "closest_first", "unknown_metric", "did_you_mean"]

#: Keys of one table in ``report.tables`` and what they mean.
TABLE_KEYS = {
    "name": "table id: results file reports/results/<grid>/<name>.csv and README block name",
    "rows": "grid axis (or list of axes) whose labels are the rows",
    "columns": "list of metrics, an axis (matrix of `metric`), or {pattern: 'test_acc.class_*'}",
    "metric": "the metric in each cell when `columns` is an axis",
    "metric_source": "final (last epoch) or best (best epoch)",
    "ci": "true: 95% t confidence interval of the mean in each cell",
    "bold": "auto (max, min for losses), max, min or none (best per column in bold), or {metric: max|min|none}",
    "mean_row": "true: a Mean row under the table",
    "digits": "decimals shown",
    "percent": "true: values x 100",
    "title": "a line above the table",
    "headers": "display names for metrics and axes, {train_acc: Train Acc.}",
    "where": "keep only cells with these labels, {axis: label or [labels]}",
    "transpose": "true: swap rows and columns",
    "select": "all (every finished run is a sample) or best (each cell's best run: for search grids)",
    "select_by": "with select: best, the metric that picks the run (default: the first metric)",
}
_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
_MINIMIZE = re.compile(r"(loss|_eer|error|err|_std)$")


class ReportError(ValueError):
    """An invalid ``report:`` table or a table that cannot be built; the message names the key and the fix.

    Attributes:
        problems: from `TableSpec.from_dict`, each ``(key, message)`` of the table (``report.tables[1].rows``, the
            key from the grid's top, without the file), one per line of the message; empty otherwise.
    """

    def __init__(self, *args: object, problems: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(*args)
        self.problems = list(problems)


_NUMBER = re.compile(r"(\d+(?:\.\d+)*)")


def natural_key(text: str) -> list[Any]:
    """Sort key that orders ``class_2`` before ``class_10``, decimal fractions by value (``m=0.35`` before ``m=0.4``:
    a margin axis's labels are its values as text), and dotted versions part by part (``2.9.0`` before ``2.14.1``)."""
    key: list[Any] = []
    for i, part in enumerate(_NUMBER.split(str(text))):
        if not i % 2:
            key.append(part.lower())
        elif part.count(".") == 1:
            key.append(float(part))
        else:  # an integer, or a version: its parts as integers, the dots between them as text (str, int alternate)
            numbers = part.split(".")
            key += [int(numbers[0])] + [x for n in numbers[1:] for x in (".", int(n))]
    return key


def _close(name: str, choices: Sequence[str]) -> list[str]:
    """The ``choices`` difflib finds close to ``name`` (ratio >= 0.6, as `difflib.get_close_matches`), closest first,
    ties in natural order."""
    matcher = difflib.SequenceMatcher(b=name)
    scored = []
    for choice in choices:
        matcher.set_seq1(choice)
        if matcher.ratio() >= 0.6:
            scored.append((-matcher.ratio(), natural_key(choice), choice))
    return [choice for *_, choice in sorted(scored)]


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`registry._suggest.did_you_mean`'s aside: `` (did you mean 'loss'?)`` for a close choice, else ``""``."""
    # imported here, on the error path: importing registry registers its torch-backed entries, and reports loads
    # without torch
    from registry._suggest import did_you_mean as hint

    return hint(word, choices, aside=True)


def closest_first(name: str, choices: Iterable[str]) -> list[str]:
    """``choices`` with those close to ``name`` first (closest first, difflib's ratio), then the others in natural
    order."""
    ordered = sorted(set(choices), key=natural_key)
    close = _close(name, ordered)
    return close + [c for c in ordered if c not in close]


def unknown_metric(metric: str, have: Iterable[str], of: str) -> str:
    """The message for a metric name ``of`` (``"the runs of quickstart"``) never logs: the close names, then all the
    names, closest first (`closest_first`)."""
    ordered = sorted(set(have), key=natural_key)
    close = _close(metric, ordered)
    hint = f" (did you mean {' or '.join(repr(c) for c in close[:3])}?)" if close else ""
    listed = close + [c for c in ordered if c not in close]
    return f"no metric {metric!r} in {of}{hint}; metrics, closest first: {', '.join(listed) or 'none'}"


def metric_direction(metric: str) -> str:
    """``"min"`` for losses, error rates and spreads (``train_loss``, ``lfw_eer``, ``lfw_acc_std``), else
    ``"max"``."""
    return "min" if _MINIMIZE.search(metric) else "max"


@dataclass(frozen=True)
class TableSpec:
    """One declared table.

    Attributes:
        name: table id (file name and README block name).
        rows: grid axes whose labels make the rows (``("loss",)``); ``("label",)`` is the joined label.
        metrics: metric columns (empty for a matrix or a pattern).
        pattern: shell pattern selecting metric columns (``test_acc.class_*``), resolved against the runs.
        column_axis: the axis whose labels are the columns of a matrix.
        metric: the metric in each cell of a matrix.
        metric_source: ``final`` or ``best``.
        ci: add the 95% t interval.
        bold: ``auto`` (each metric's own direction), ``max``/``min``/``none`` for every metric, or per metric.
        mean_row: add a Mean row.
        digits: decimals shown.
        percent: show values x 100.
        title: a line above the table.
        headers: display names.
        where: ``{axis: (labels...)}`` filter.
        transpose: swap rows and columns.
        select: ``all`` or ``best``.
        select_by: the metric ``select: best`` ranks by (None: the first metric).
        origin: where the table was declared, ``<grid file>: report.tables[1]`` (errors name it; empty for a
            table not read from a grid).
    """

    name: str
    rows: tuple[str, ...]
    metrics: tuple[str, ...] = ()
    pattern: str | None = None
    column_axis: str | None = None
    metric: str | None = None
    metric_source: str = "final"
    ci: bool = False
    bold: str | Mapping[str, str] = "auto"
    mean_row: bool = False
    digits: int = 4
    percent: bool = False
    title: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    where: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    transpose: bool = False
    select: str = "all"
    select_by: str | None = None
    origin: str = field(default="", compare=False, repr=False)

    @property
    def is_matrix(self) -> bool:
        return self.column_axis is not None

    @property
    def axes(self) -> tuple[str, ...]:
        """The axes that identify a cell."""
        return self.rows + ((self.column_axis,) if self.column_axis else ())

    def resolve_metrics(self, available: Sequence[str]) -> list[str]:
        """The metric columns: the declared list, the matrix metric, or the pattern's matches in natural order."""
        if self.is_matrix:
            return [str(self.metric)]
        if self.pattern is not None:
            return sorted({m for m in available if fnmatch.fnmatchcase(m, self.pattern)}, key=natural_key)
        return list(self.metrics)

    def named_metrics(self) -> list[tuple[str, str]]:
        """``(key, metric)`` for each metric the table names, the key below the table's (``columns[1]``, ``metric``,
        ``select_by``, ``bold.<metric>``); a pattern's matches are not named."""
        out = [(f"columns[{i}]", m) for i, m in enumerate(self.metrics)]
        out += [(key, m) for key, m in (("metric", self.metric), ("select_by", self.select_by)) if m]
        if isinstance(self.bold, Mapping):
            out += [(f"bold.{m}", m) for m in self.bold]
        return out

    def at(self, sub: str = "") -> str:
        """Where key ``sub`` of the table was declared, for errors: ``<grid file>: report.tables[1].columns``, or
        ``table 'name'`` for a table not read from a file."""
        if not self.origin:
            return f"table {self.name!r}"
        return f"{self.origin}.{sub}" if sub else self.origin

    def key_of(self, metric: str) -> str:
        """`at` the key that names ``metric`` (``columns[0]``, ``select_by``...; the table when none does)."""
        return self.at(next((key for key, m in self.named_metrics() if m == metric), ""))

    def selection_metric(self, metrics: Sequence[str]) -> str | None:
        """The metric ``select: best`` ranks runs by; None for ``select: all``."""
        if self.select != "best":
            return None
        return self.select_by or (metrics[0] if metrics else None)

    def column_header(self, metric: str) -> str:
        """Display name of a metric column; a pattern's match drops the literal prefix up to its last dot."""
        if metric in self.headers:
            return str(self.headers[metric])
        if self.pattern is not None:
            literal = re.split(r"[*?\[]", self.pattern, maxsplit=1)[0]
            cut = literal.rfind(".") + 1
            if cut and metric.startswith(literal[:cut]):
                return metric[cut:]
        return metric

    def header(self, key: str) -> str:
        return str(self.headers.get(key, key))

    def header_keys(self, metrics: Iterable[str] = (),
                    labels: Mapping[str, Sequence[str]] | None = None) -> list[str]:
        """The keys ``headers`` can rename, each shown somewhere in the table: the row axes; the metric columns
        (for a pattern, those of ``metrics`` it matches); for a matrix its column axis and that axis's labels
        (from ``labels``, each axis's labels, ``label`` the joined ones); ``metric``, the corner of a transposed
        table of metric columns. A key outside them would never show.

        Example:
            >>> TableSpec(name="t", rows=("loss",), metrics=("test_acc",)).header_keys()
            ['loss', 'test_acc']
        """
        keys = list(self.rows)
        if self.is_matrix:
            keys += [str(self.column_axis), *(labels or {}).get(str(self.column_axis), ())]
        else:
            keys += self.resolve_metrics(list(metrics))
            if self.transpose:
                keys.append("metric")
        return list(dict.fromkeys(keys))

    def header_problems(self, metrics: Iterable[str] = (), labels: Mapping[str, Sequence[str]] | None = None, *,
                        metrics_unknown: bool = False) -> list[tuple[str, str]]:
        """``(key, message)`` for each key of ``headers`` that names nothing the table shows (`header_keys` of
        ``metrics`` and ``labels``): its display name would be dropped without a word. ``key`` is below the table's
        (``headers.tset_acc``); the grid check (`bench.grid`) and the results files (`reports.results`) both
        report these. ``metrics_unknown``: some shown metrics are not known, so any key the pattern matches is taken.

        Example:
            >>> TableSpec(name="t", rows=("loss",), metrics=("test_acc",), headers={"tset_acc": "Test"}
            ...           ).header_problems()[0][0]
            'headers.tset_acc'
        """
        keys = self.header_keys(metrics, labels)
        lenient = self.pattern is not None and metrics_unknown
        problems = []
        for key in self.headers:
            if key in keys or (lenient and fnmatch.fnmatchcase(key, str(self.pattern))):
                continue
            matching = f", or a metric matching {self.pattern!r}" if lenient else ""
            problems.append((f"headers.{key}",
                             f"{key!r} is not a column or axis of table {self.name!r}, so its display name would "
                             f"never show{did_you_mean(key, keys)}; keys it has: {', '.join(keys) or 'none'}"
                             + matching))
        return problems

    def direction(self, metric: str) -> str:
        """``max``, ``min`` or ``none`` for the bold mark of ``metric``."""
        if isinstance(self.bold, Mapping):
            return str(self.bold.get(metric, metric_direction(metric)))
        return metric_direction(metric) if self.bold == "auto" else self.bold

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain data (what the results' ``.meta.json`` stores; `from_dict` reads it back)."""
        out: dict[str, Any] = {"name": self.name, "rows": list(self.rows)}
        if self.is_matrix:
            out["columns"] = self.column_axis
            out["metric"] = self.metric
        elif self.pattern is not None:
            out["columns"] = {"pattern": self.pattern}
        else:
            out["columns"] = list(self.metrics)
        out.update({"metric_source": self.metric_source, "ci": self.ci,
                    "bold": dict(self.bold) if isinstance(self.bold, Mapping) else self.bold,
                    "mean_row": self.mean_row, "digits": self.digits, "percent": self.percent, "title": self.title,
                    "headers": dict(self.headers), "where": {k: list(v) for k, v in self.where.items()},
                    "transpose": self.transpose})
        if self.select != "all":
            out["select"] = self.select
            if self.select_by:
                out["select_by"] = self.select_by
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, axes: Sequence[str] | None = None, source: str = "",
                  key: str = "table", grid_labels: Mapping[str, Sequence[str]] | None = None) -> TableSpec:
        """Validates one table mapping (``axes``: the grid's axes, and ``grid_labels``: each axis's labels, checked
        when given). Each key is checked on its own, so a table's independent problems are reported together; a
        check across keys (an axis that varies inside the cells, ``metric`` without a matrix, ``select_by``
        without ``select: best``) runs only when the keys it reads are valid and none is unknown (a misspelt
        ``where`` would make it a consequence, not a problem).

        Raises:
            ReportError: naming ``source``, each key and its fix, one line per problem (its ``problems``).
        """
        where = f"{source}: {key}" if source else key
        if not isinstance(data, Mapping):
            raise ReportError(f"{where}: a table is a mapping with at least name and rows, but got {data!r}")
        known_axes = list(axes) if axes is not None else None
        problems: list[tuple[str, str]] = []

        def checked(default: Any, check: Any, *args: Any) -> Any:
            """``check(*args)``, or ``default`` with its problem added to ``problems``."""
            try:
                return check(*args)
            except _Invalid as err:
                problems.append((err.sub, err.message))
                return default

        unknown = [str(k) for k in data if k not in TABLE_KEYS]
        problems += [(k, f"unknown table key {k!r}{did_you_mean(k, TABLE_KEYS)}; valid keys: {', '.join(TABLE_KEYS)}")
                     for k in unknown]
        name = checked(None, _checked_name, data.get("name"))
        rows = checked(None, _checked_rows, data.get("rows"), known_axes)
        columns = checked(None, _checked_columns, data.get("columns", ["train_acc", "test_acc"]), data.get("metric"),
                          rows or (), known_axes)
        metrics, pattern, column_axis, metric = columns or ((), None, None, None)
        source_ = checked("final", _checked_choice, "metric_source", data.get("metric_source", "final"),
                          ("final", "best"))
        bold = checked("auto", _checked_bold, data.get("bold", "auto"))
        digits = checked(4, _checked_digits, data.get("digits", 4))
        flags = {flag: checked(False, _checked_flag, flag, data.get(flag, False))
                 for flag in ("ci", "mean_row", "percent", "transpose")}
        title = checked("", _checked_title, data.get("title", ""))
        headers = checked({}, _checked_headers, data.get("headers", {}) or {})
        filters = checked(None, _checked_filters, data.get("where", {}) or {})
        where_ = {str(axis): checked(None, _checked_where_axis, axis, labels, rows or (), column_axis, known_axes,
                                     grid_labels) for axis, labels in (filters or {}).items()}
        select = checked(None, _checked_choice, "select", data.get("select", "all"), ("all", "best"))
        select_by = data.get("select_by")
        sound = not problems  # every key valid and known: the checks across keys read what was meant
        if sound:
            checked(None, _checked_across, data, rows, column_axis, where_, select, select_by, known_axes)
        if problems:
            raise _table_error(where, key, problems)
        return cls(name=name, rows=rows, metrics=metrics, pattern=pattern, column_axis=column_axis, metric=metric,
                   metric_source=source_, ci=flags["ci"], bold=bold, mean_row=flags["mean_row"], digits=digits,
                   percent=flags["percent"], title=title, headers={str(k): str(v) for k, v in headers.items()},
                   where=where_, transpose=flags["transpose"], select=select, select_by=select_by,
                   origin=where if source else "")


class _Invalid(Exception):
    """One problem of a table mapping: ``sub``, its key below the table's (``where.backbone``), and the message."""

    def __init__(self, sub: str, message: str) -> None:
        super().__init__(message)
        self.sub, self.message = sub, message


def _table_error(where: str, key: str, problems: Sequence[tuple[str, str]]) -> ReportError:
    """One `ReportError` for a table's problems, a line each; its ``problems`` hold ``(key.sub, message)``."""
    return ReportError("\n".join(f"{where}.{sub}: {message}" if sub else f"{where}: {message}"
                                 for sub, message in problems),
                       problems=[(f"{key}.{sub}" if sub else key, message) for sub, message in problems])


def _checked_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise _Invalid("name", f"a name of letters, digits, '_', '-', '.' is required, but got {name!r}")
    return name


def _checked_axis(sub: str, axis: Any, known_axes: Sequence[str] | None) -> str:
    if not isinstance(axis, str) or not axis:
        raise _Invalid(sub, f"an axis name is required, but got {axis!r}")
    if known_axes is not None and axis not in known_axes and axis != "label":
        raise _Invalid(sub, f"{axis!r} is not an axis of the grid{did_you_mean(axis, known_axes)}; axes: "
                            f"{', '.join(known_axes) or 'none'} (or 'label': all labels joined)")
    return axis


def _checked_rows(rows_raw: Any, known_axes: Sequence[str] | None) -> tuple[str, ...]:
    if rows_raw is None:
        raise _Invalid("rows", "required: the grid axis whose labels are the rows, e.g. rows: loss")
    rows_list = rows_raw if isinstance(rows_raw, list) else [rows_raw]
    if not rows_list:
        raise _Invalid("rows", "needs at least one axis")
    rows = tuple(_checked_axis(f"rows[{i}]" if isinstance(rows_raw, list) else "rows", a, known_axes)
                 for i, a in enumerate(rows_list))
    if len(set(rows)) != len(rows):
        raise _Invalid("rows", f"an axis repeats: {list(rows)}")
    return rows


def _checked_columns(columns: Any, metric: Any, rows: Sequence[str], known_axes: Sequence[str] | None,
                     ) -> tuple[tuple[str, ...], str | None, str | None, str | None]:
    """``(metrics, pattern, column_axis, metric)`` of ``columns`` (and ``metric``, for a matrix)."""
    if isinstance(columns, str) and (known_axes is None or columns in known_axes or columns == "label"):
        column_axis = _checked_axis("columns", columns, known_axes)
        if column_axis in rows:
            raise _Invalid("columns", f"axis {column_axis!r} is already in rows")
        if not isinstance(metric, str) or not metric:
            raise _Invalid("metric", f"columns is the axis {column_axis!r}: name the metric in each cell, "
                                     f"e.g. metric: test_acc")
        return (), None, column_axis, metric
    if isinstance(columns, str):
        raise _Invalid("columns", f"{columns!r} is not an axis of the grid; for metric columns write a list, "
                                  f"columns: [{columns}]; axes: {', '.join(known_axes or []) or 'none'}")
    if isinstance(columns, Mapping):
        if set(columns) != {"pattern"} or not isinstance(columns["pattern"], str) or not columns["pattern"]:
            raise _Invalid("columns", f"a mapping must be {{pattern: 'test_acc.class_*'}}, but got {dict(columns)!r}")
        return (), columns["pattern"], None, None
    if isinstance(columns, list) and columns and all(isinstance(c, str) and c for c in columns):
        if len(set(columns)) != len(columns):
            raise _Invalid("columns", f"a metric repeats: {columns}")
        return tuple(columns), None, None, None
    raise _Invalid("columns", f"a list of metrics, an axis or {{pattern: ...}} is required, but got {columns!r}")


def _checked_choice(sub: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise _Invalid(sub, f"must be {' or '.join(choices)}, but got {value!r}")
    return str(value)


def _checked_bold(bold: Any) -> str | dict[str, str]:
    if isinstance(bold, Mapping):
        bad = {k: v for k, v in bold.items() if v not in ("max", "min", "none")}
        if bad:
            raise _Invalid("bold", f"each direction must be max, min or none, but got {bad!r}")
        return {str(k): str(v) for k, v in bold.items()}
    if bold is False or bold is None:
        return "none"
    if bold not in ("auto", "max", "min", "none"):
        raise _Invalid("bold", f"must be auto, max, min, none or {{metric: max|min|none}}, but got {bold!r}")
    return str(bold)


def _checked_digits(digits: Any) -> int:
    if not isinstance(digits, int) or isinstance(digits, bool) or not 0 <= digits <= 12:
        raise _Invalid("digits", f"must be an integer in 0..12, but got {digits!r}")
    return digits


def _checked_flag(flag: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(flag, f"must be true or false, but got {value!r}")
    return value


def _checked_title(title: Any) -> str:
    if not isinstance(title, str):
        raise _Invalid("title", f"must be a string, but got {title!r}")
    return title


def _checked_headers(headers: Any) -> Mapping[str, Any]:
    if not isinstance(headers, Mapping):
        raise _Invalid("headers", f"must map metric or axis names to display names, but got {headers!r}")
    return headers


def _checked_filters(filters: Any) -> Mapping[str, Any]:
    if not isinstance(filters, Mapping):
        raise _Invalid("where", f"must map axes to a label or a list of labels, but got {filters!r}")
    return filters


def _checked_where_axis(axis: Any, labels: Any, rows: Sequence[str], column_axis: str | None,
                        known_axes: Sequence[str] | None, grid_labels: Mapping[str, Sequence[str]] | None,
                        ) -> tuple[str, ...]:
    """The labels ``where.<axis>`` keeps."""
    _checked_axis(f"where.{axis}", axis, known_axes)
    if axis in rows or axis == column_axis:
        raise _Invalid(f"where.{axis}", f"axis {axis!r} is already in rows/columns; filter another axis")
    labels = labels if isinstance(labels, list) else [labels]
    if not labels:
        raise _Invalid(f"where.{axis}", "needs at least one label")
    kept = tuple(str(v) for v in labels)
    known = grid_labels.get(str(axis)) if grid_labels is not None else None
    missing = [v for v in kept if known is not None and v not in known]
    if known is not None and missing:  # else the table is all "-" after training, without a word
        raise _Invalid(f"where.{axis}", f"no cell of the grid has the label {missing[0]!r}"
                                        f"{did_you_mean(missing[0], known)}; labels of {axis}: {', '.join(known)}")
    return kept


def _checked_across(data: Mapping[str, Any], rows: tuple[str, ...], column_axis: str | None,
                    where_: Mapping[str, tuple[str, ...]], select: str, select_by: Any,
                    known_axes: Sequence[str] | None) -> None:
    """The checks across keys, each key valid on its own: ``metric`` only for a matrix, ``select_by`` only with
    ``select: best``, and no axis varying inside the cells."""
    if "metric" in data and column_axis is None:
        raise _Invalid("metric", "only for a matrix (columns: <axis>); with metric columns leave it out")
    if select_by is not None and (select != "best" or not isinstance(select_by, str) or not select_by):
        raise _Invalid("select_by", f"a metric name, with select: best; but got {select_by!r} with select: {select}")
    if known_axes is not None:
        free = [a for a in known_axes if a not in rows and a != column_axis and a not in where_]
        if free and "label" not in rows and column_axis != "label":
            raise _Invalid("rows", f"axis {free[0]!r} varies inside the table's cells and its runs would be averaged "
                                   f"as if they were seeds; add it to rows (rows: [{', '.join(rows + (free[0],))}]), "
                                   f"make it the columns, or fix it with where: {{{free[0]}: <label>}}")


def parse_tables(report: Mapping[str, Any] | None, *, axes: Sequence[str] | None = None,
                 source: str = "", grid_labels: Mapping[str, Sequence[str]] | None = None) -> list[TableSpec]:
    """The tables of a grid's ``report:`` section (empty list when there is none).

    Args:
        report: the parsed ``report`` mapping (``grid.report``).
        axes: the grid's axes, to check ``rows``/``columns``/``where`` against.
        source: the grid file, for error messages.
        grid_labels: each axis's labels, to check ``where`` labels against (a typo is an error before training).

    Raises:
        ReportError: naming the file, the key (``report.tables[1].rows``) and the fix.

    Example:
        >>> parse_tables({"tables": [{"name": "t", "rows": "loss"}]}, axes=["loss"])[0].metrics
        ('train_acc', 'test_acc')
    """
    if not report:
        return []
    prefix = f"{source}: " if source else ""
    if not isinstance(report, Mapping):
        raise ReportError(f"{prefix}report: must be a mapping with a 'tables' list, but got {report!r}")
    unknown = [k for k in report if k != "tables"]
    if unknown:
        raise ReportError(f"{prefix}report.{unknown[0]}: unknown key; the report section holds 'tables'")
    tables = report.get("tables") or []
    if not isinstance(tables, list):
        raise ReportError(f"{prefix}report.tables: must be a list of tables, but got {tables!r}")
    specs = [TableSpec.from_dict(t, axes=axes, source=source, key=f"report.tables[{i}]", grid_labels=grid_labels)
             for i, t in enumerate(tables)]
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ReportError(f"{prefix}report.tables: table names must be unique; repeated: {dup}")
    return specs


def default_tables(name: str, axes: Sequence[str]) -> list[TableSpec]:
    """The table a grid without a ``report:`` section gets: all axes as rows, train and test accuracy."""
    return [TableSpec(name=name, rows=tuple(axes) or ("label",), metrics=("train_acc", "test_acc"))]
