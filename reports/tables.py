"""Aggregation over seeds: a tidy runs frame and a `TableSpec` -> a `Table` of `CellStats` -> markdown.

Only runs with status ``finished`` enter the means; a trial run more than once counts once (`latest_runs`).
A cell shows ``mean ± std (n=k)``, with ``ci`` ``mean ± std [lo, hi] (n=k)`` where the interval is the 95%
Student t interval of the mean, ``mean ± t(0.975, n-1) · std / sqrt(n)`` (std with ddof=1). A cell whose
runs all diverged shows ``diverged`` (likewise ``pruned``, ``failed``, ``running``), one whose finished runs have
no value ``n/a``, with the others' count beside, ``n/a (1 diverged)``; finished runs beside
others show the others' count, ``(n=2, 1 diverged)``, and finished runs without a finite value of the metric
their own, ``(n=2, 1 without a value)``; a cell with no run at all shows ``-``.

The Mean row (``mean_row``) shows the mean of a column's cell means. A column with cells without a value
(``-``, ``diverged``, ``n/a``...) shows the mean of the others marked with how many it covers,
``0.9650 (3 of 4)``: a mean over fewer rows than its neighbours' is not comparable to theirs.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Context, Decimal

import pandas as pd
from tabulate import tabulate

from reports.runs import RUN_COLUMNS, latest_runs
from reports.spec import ReportError, TableSpec, did_you_mean, metric_direction, natural_key, unknown_metric

__all__ = ["CellStats", "Table", "aggregate", "escape_inline", "label_column", "metric_columns", "missing_metric",
           "best_run", "verification_accuracies", "value_column", "format_mean_std", "mean_std_table", "STATUS_ORDER",
           "escape_line"]

#: Run statuses in the order counts are reported.
STATUS_ORDER = ("finished", "diverged", "pruned", "failed", "interrupted", "running")


def label_column(axis: str) -> str:
    """The runs-frame column holding an axis's labels (``label.loss``; ``label`` for all labels joined)."""
    return "label" if axis == "label" else f"label.{axis}"


def value_column(spec: TableSpec, metric: str) -> str:
    """The runs-frame column a table reads for ``metric``: ``test_acc`` (final) or ``best.test_acc``."""
    return f"best.{metric}" if spec.metric_source == "best" else metric


def verification_accuracies(metric_names: Iterable[str]) -> list[str]:
    """The pair-set accuracies among ``metric_names``, sorted: each ``<pairs>_acc`` logged beside its
    ``<pairs>_auc`` (``lfw_acc``, ``cfp_fp_acc``..., as `bench.verification.VerificationResult.as_metrics`
    names them)."""
    names = set(metric_names)
    return sorted(m for m in names if m.endswith("_acc") and f"{m[:-4]}_auc" in names)


def missing_metric(spec: TableSpec, metric: str, runs: pd.DataFrame, of: str = "the runs") -> ReportError:
    """The error for a metric a table names that the runs never logged: where the table names it, the close names,
    and the metrics they have, closest first."""
    return ReportError(f"{spec.key_of(metric)}: {unknown_metric(metric, metric_columns(runs), of)}")


def metric_columns(runs: pd.DataFrame) -> list[str]:
    """The metric names present in a runs frame (final-value columns) or a results frame (not its provenance)."""
    from reports.results import PROVENANCE_COLUMNS  # here: reports.results imports this module

    skip = set(RUN_COLUMNS) | set(PROVENANCE_COLUMNS)
    out = []
    for c in runs.columns:
        c = str(c)
        if c in skip or c.startswith(("label.", "param.", "epochs.", "_")):
            continue
        if c.startswith("best."):
            c = c[len("best."):]
        if c not in out:
            out.append(c)
    return out


@dataclass(frozen=True)
class CellStats:
    """The runs of one table cell.

    Attributes:
        values: the metric of each finished run (runs without the metric left out).
        counts: runs per status in the cell, finished included.
        pool: with ``select: best``, the finished runs the value was chosen from (0 otherwise).
    """

    values: tuple[float, ...] = ()
    counts: Mapping[str, int] = field(default_factory=dict)
    pool: int = 0

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def runs(self) -> int:
        return sum(self.counts.values())

    @property
    def mean(self) -> float:
        return math.fsum(self.values) / self.n if self.n else math.nan

    @property
    def std(self) -> float:
        """Sample standard deviation (ddof=1); NaN below two values."""
        if self.n < 2:
            return math.nan
        m = self.mean
        return math.sqrt(math.fsum((v - m) ** 2 for v in self.values) / (self.n - 1))

    @property
    def ci(self) -> tuple[float, float] | None:
        """The 95% Student t interval of the mean; None below two values."""
        if self.n < 2:
            return None
        from scipy.stats import t

        half = float(t.ppf(0.975, self.n - 1)) * self.std / math.sqrt(self.n)
        return self.mean - half, self.mean + half

    @property
    def without_value(self) -> int:
        """Finished runs of the cell left out of the mean for want of a finite value (NaN, or never logged);
        0 with ``select: best``, whose pool note says what the value was chosen from."""
        return 0 if self.pool else max(self.counts.get("finished", 0) - self.n, 0)

    def others(self) -> list[tuple[str, int]]:
        """Counts of runs that are not finished, in `STATUS_ORDER` then alphabetical."""
        keys = [s for s in STATUS_ORDER if s != "finished"] + sorted(set(self.counts) - set(STATUS_ORDER))
        return [(s, self.counts[s]) for s in keys if self.counts.get(s)]

    def text(self, *, digits: int = 4, ci: bool = False, percent: bool = False, bold: bool = False) -> str:
        """The cell as markdown (see the module docstring)."""
        if self.n == 0:
            if self.runs == 0:
                return "-"
            others = self.others()
            if self.counts.get("finished", 0):  # finished runs without a value: not a cell that only diverged
                return "n/a" + (f" ({', '.join(f'{k} {s}' for s, k in others)})" if others else "")
            if len(others) == 1:
                return others[0][0]
            return ", ".join(f"{k} {s}" for s, k in others)
        mean = _fmt(self.mean, digits, percent)
        out = f"**{mean}**" if bold else mean
        if self.n >= 2:
            out += f" ± {_fmt(self.std, digits, percent)}"
            if ci:
                lo, hi = self.ci  # type: ignore[misc]
                out += f" [{_fmt(lo, digits, percent)}, {_fmt(hi, digits, percent)}]"
        notes = [f"n={self.n}"] + ([f"best of {self.pool}"] if self.pool else []) + \
            [f"{k} {s}" for s, k in self.others()] + \
            ([f"{self.without_value} without a value"] if self.without_value else [])
        return f"{out} ({', '.join(notes)})"


def _fmt(value: float, digits: int, percent: bool) -> str:
    if percent and math.isfinite(value):
        # the value's own digits moved two places, rounded as the fraction is: the product value * 100 is rounded
        # to a double first, which moves a tie such as 0.00075 (0.0008 as a fraction) to 0.07499... (0.07 %)
        return f"{Decimal(value).scaleb(2, _EXACT):.{digits}f}"
    return f"{value * 100 if percent else value:.{digits}f}"


_EXACT = Context(prec=800)  # more digits than any double has (767): value * 100 exactly


_PUNCT = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
_NEWLINES = re.compile(r"\s*(?:\r\n|\r|\n)\s*")
_ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")


def escape_inline(text: str, *, pipes: bool = True) -> str:
    """``text`` (a label, header or title: plain text, from the grid YAML) as markdown that renders as that text.

    One line: a newline would end a table row, so it reads as a space (as markdown shows a line break inside a
    paragraph). Escaped with a backslash only where markdown would change the text: a pipe (in a table cell),
    a backslash before punctuation, ``*``, ``` ` ``` and ``~`` when there are two or more (a pair italicizes, makes
    code or strikes through), ``_`` outside a word likewise (``class_1_acc`` is left alone), ``<`` that starts a
    tag, ``&`` that starts an entity, and ``[`` of a link ``[a](b)``. A lone ``*`` stays:
    ``cos(m1*theta + m2)``.
    """
    text = _NEWLINES.sub(" ", str(text))

    def word(i: int) -> bool:
        return 0 <= i < len(text) and text[i].isalnum()

    active_underscores = [i for i, c in enumerate(text) if c == "_" and not (word(i - 1) and word(i + 1))]
    paired = {c for c in "*`~" if text.count(c) >= 2} | ({"_"} if len(active_underscores) >= 2 else set())
    link = "](" in text or "][" in text
    out = []
    for i, c in enumerate(text):
        nxt = text[i + 1] if i + 1 < len(text) else ""
        if c == "\\":
            escape = nxt in _PUNCT or nxt == ""
        elif c == "|":
            escape = pipes
        elif c == "_":
            escape = "_" in paired and i in active_underscores
        elif c in "*`~":
            escape = c in paired
        elif c == "<":
            escape = nxt.isalpha() or nxt in "/!?"
        elif c == "&":
            escape = _ENTITY.match(text, i) is not None
        elif c == "[":
            escape = link
        else:
            escape = False
        out.append("\\" + c if escape else c)
    return "".join(out)


def _escape(text: str) -> str:
    """A label or header as the text of a table cell (see `escape_inline`)."""
    return escape_inline(text)


def escape_line(text: str) -> str:
    """A title as one markdown paragraph that renders as the text (see `escape_inline`): also a first character
    that would start a heading, quote, list, rule or code fence (``# runs``, ``- x``, a code fence) is escaped."""
    line = escape_inline(str(text).strip(), pipes=False)
    ordered = re.match(r"(\d{1,9})([.)])(?=\s|$)", line)
    if ordered:
        return f"{ordered.group(1)}\\{line[ordered.end(1):]}"
    return "\\" + line if line[:1] in ("#", ">", "-", "+", "*", "=", "`", "~", "_") else line


@dataclass
class Table:
    """An aggregated table, before rendering.

    Attributes:
        spec: what was asked for.
        row_keys: one tuple of labels (one per ``spec.rows`` axis) per row, in grid order.
        col_keys: metric names, or the column axis's labels for a matrix.
        cells: ``{(row_key, col_key): CellStats}``.
        counts: runs per status over the whole table.
        runs: the runs that were aggregated (after filtering and de-duplication).
    """

    spec: TableSpec
    row_keys: list[tuple[str, ...]]
    col_keys: list[str]
    cells: dict[tuple[tuple[str, ...], str], CellStats]
    counts: Mapping[str, int]
    runs: pd.DataFrame

    def cell(self, row: tuple[str, ...] | str, col: str) -> CellStats:
        key = (row,) if isinstance(row, str) else tuple(row)
        return self.cells.get((key, col), CellStats())

    def _col_header(self, col: str) -> str:
        return str(self.spec.headers.get(col, col)) if self.spec.is_matrix else self.spec.column_header(col)

    def _metric_of(self, col: str) -> str:
        return str(self.spec.metric) if self.spec.is_matrix else col

    def layout(self) -> tuple[list[str], list[list[str]]]:
        """``(headers, body)`` as strings, in display orientation (transposed when asked), bold and Mean row
        applied."""
        spec = self.spec
        grid = [[self.cell(r, c) for c in self.col_keys] for r in self.row_keys]  # grid[row][col]
        # bold: the best displayed mean among the rows of each column (among the columns of a row when transposed,
        # i.e. always among the entries of the `rows` axes, for one metric)
        bold = [[False] * len(self.col_keys) for _ in self.row_keys]
        for j, col in enumerate(self.col_keys):
            metric = self._metric_of(col)
            direction = spec.direction(metric)
            shown = [(i, float(_fmt(grid[i][j].mean, spec.digits, spec.percent)))
                     for i in range(len(self.row_keys)) if grid[i][j].n]
            if direction == "none" or len(shown) < 2:
                continue
            best = (max if direction == "max" else min)(v for _, v in shown)
            for i, v in shown:
                bold[i][j] = v == best
        texts = [[grid[i][j].text(digits=spec.digits, ci=spec.ci, percent=spec.percent, bold=bold[i][j])
                  for j in range(len(self.col_keys))] for i in range(len(self.row_keys))]
        row_headers = [spec.header(a) for a in spec.rows]
        if not spec.transpose:
            headers = row_headers + [self._col_header(c) for c in self.col_keys]
            body = [[_escape(v) for v in key] + row for key, row in zip(self.row_keys, texts, strict=True)]
            stats = grid
            n_label = len(spec.rows)
        else:
            corner = spec.header(spec.column_axis) if spec.is_matrix else (spec.header("metric"))
            headers = [corner] + [" / ".join(key) for key in self.row_keys]
            body = [[_escape(self._col_header(c))] + [texts[i][j] for i in range(len(self.row_keys))]
                    for j, c in enumerate(self.col_keys)]
            stats = [[grid[i][j] for i in range(len(self.row_keys))] for j in range(len(self.col_keys))]
            n_label = 1
        if spec.mean_row:
            mean_row = ["Mean"] + [""] * (n_label - 1)
            for j in range(len(headers) - n_label):
                means = [row[j].mean for row in stats if row[j].n]
                text = _fmt(math.fsum(means) / len(means), spec.digits, spec.percent) if means else "-"
                if means and len(means) < len(stats):  # over fewer rows than the table has: not comparable
                    text += f" ({len(means)} of {len(stats)})"
                mean_row.append(text)
            body.append(mean_row)
        return [_escape(h) for h in headers], body

    def to_markdown(self) -> str:
        """The table in GitHub markdown (tabulate ``github``), nothing else."""
        headers, body = self.layout()
        return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)

    def selection_note(self, study: str) -> str:
        """With ``select: best``, one line saying what ``best of k`` counts; empty otherwise.

        The pool is every finished run of the cell in the study that the grid as loaded matches
        (`reports.matching`: searched keys are not compared), so it may exceed the grid's ``n_trials`` when an
        earlier run of the study asked for more: those runs were made and finished, and the value shown is the
        best of all of them.
        """
        select_by = self.spec.selection_metric(self.col_keys if not self.spec.is_matrix else [str(self.spec.metric)])
        if select_by is None:
            return ""
        highest = "highest" if _select_direction(self.spec, select_by) == "max" else "lowest"
        optimistic = ("" if select_by.startswith("train") else
                      " Chosen on the held-out data it is measured on (there is no separate validation split), the "
                      "value is an optimistic estimate; for a fair one, fix the chosen values in a grid without "
                      "search and run it with new seeds.")
        return (f"*Each cell shows its finished run with the {highest} {escape_inline(select_by, pipes=False)}; "
                f"\"best of k\" counts all the cell's finished runs in study {escape_inline(study, pipes=False)}, "
                f"also those of an earlier run of the grid with more n_trials or other search ranges.{optimistic}*")

    def summary(self) -> str:
        """``"Not in the means: 1 diverged, 2 pruned."``, or empty when every run finished."""
        others = CellStats(counts=dict(self.counts)).others()
        if not others:
            return ""
        return "Not in the means: " + ", ".join(f"{k} {s}" for s, k in others) + "."


def _ordered(present: Sequence[str], order: Sequence[str] | None) -> list[str]:
    order = list(dict.fromkeys(order or []))
    extra = sorted(set(present) - set(order), key=natural_key)
    return order + extra


def aggregate(runs: pd.DataFrame, spec: TableSpec, *, order: Mapping[str, Sequence[str]] | None = None) -> Table:
    """Aggregates a tidy runs frame (`reports.runs.load_runs` or a results CSV) into a table.

    Args:
        runs: one row per run with ``status``, ``label.<axis>`` and metric columns.
        spec: the table.
        order: labels per axis in grid order (``{"loss": ["softmax", "cosface"]}``); every combination of the
            row axes' labels becomes a row (``-`` where nothing ran); labels not listed follow, in natural order.

    Raises:
        ReportError: an axis or metric the runs do not have.
    """
    order = dict(order or {})
    runs = latest_runs(runs)
    for axis in spec.axes + tuple(spec.where):
        if not runs.empty and label_column(axis) not in runs.columns:
            have = [c[len("label."):] for c in runs.columns if str(c).startswith("label.")]
            raise ReportError(f"table {spec.name!r}: the runs have no axis {axis!r} (tag label.{axis}); "
                              f"their axes: {', '.join(have) or 'none'}")
    for axis, labels in spec.where.items():
        if runs.empty:
            break
        # a label no run and no grid cell has is a typo: filtering by it would leave a table of "-" without a word
        known = sorted(set(runs[label_column(axis)].astype(str)) | set(order.get(axis, [])), key=natural_key)
        missing = [label for label in labels if label not in known]
        if missing:
            raise ReportError(f"table {spec.name!r}: where.{axis}: no run or grid cell has the label {missing[0]!r}"
                              f"{did_you_mean(missing[0], known)}; labels: {', '.join(known)}")
        runs = runs[runs[label_column(axis)].astype(str).isin(labels)]
    metrics = spec.resolve_metrics(metric_columns(runs))
    if spec.pattern is not None and not metrics and not runs.empty:
        raise ReportError(f"{spec.at('columns.pattern')}: no metric matches {spec.pattern!r}; metrics: "
                          f"{', '.join(metric_columns(runs)) or 'none'}")
    finished = runs[runs["status"] == "finished"] if not runs.empty else runs
    select_by = spec.selection_metric(metrics)
    for metric in metrics + ([select_by] if select_by and select_by not in metrics else []):
        col = value_column(spec, metric)
        if not finished.empty and col not in runs.columns:
            raise missing_metric(spec, metric, runs)

    def labels_of(axis: str) -> list[str]:
        present = runs[label_column(axis)].astype(str).unique().tolist() if not runs.empty else []
        return _ordered(present, order.get(axis))

    declared = ([tuple(k) for k in itertools.product(*(list(dict.fromkeys(order[a])) for a in spec.rows))]
                if all(order.get(a) for a in spec.rows) else [])
    present = (set(zip(*(runs[label_column(a)].astype(str) for a in spec.rows), strict=True))
               if not runs.empty else set())
    rank = {a: {label: i for i, label in enumerate(labels_of(a))} for a in spec.rows}
    extra = sorted(present - set(declared), key=lambda k: [rank[a][v] for a, v in zip(spec.rows, k, strict=True)])
    row_keys = declared + extra  # the grid's cells always (``-`` until they run), then whatever else ran
    col_keys = labels_of(spec.column_axis) if spec.is_matrix else metrics

    cells: dict[tuple[tuple[str, ...], str], CellStats] = {}
    if not runs.empty:
        group_cols = [label_column(a) for a in spec.axes]
        keys = runs[group_cols].astype(str)
        for key, group in runs.groupby([keys[c] for c in group_cols], sort=False):
            key = tuple(key)
            row_key = key[: len(spec.rows)]
            counts = dict(Counter(group["status"].astype(str)))
            done = group[group["status"] == "finished"]
            pool = 0
            if select_by is not None:
                pool = len(done)
                done = best_run(done, spec, select_by)
            targets = [(key[-1], str(spec.metric))] if spec.is_matrix else [(m, m) for m in metrics]
            for col_key, metric in targets:
                col = value_column(spec, metric)
                values = pd.to_numeric(done[col], errors="coerce") if col in done.columns else pd.Series(dtype=float)
                values = tuple(float(v) for v in values if math.isfinite(float(v)))  # NaN and inf: no value
                cells[(row_key, col_key)] = CellStats(values, counts, pool)
    counts = dict(Counter(runs["status"].astype(str))) if not runs.empty else {}
    return Table(spec, row_keys, col_keys, cells, counts, runs)


def best_run(done: pd.DataFrame, spec: TableSpec, select_by: str) -> pd.DataFrame:
    """The one run of a cell's finished runs ``done`` that ``select: best`` keeps (no rows when none has a
    finite value of ``select_by``: NaN and inf are no value, as in `aggregate`); ties go to the lowest ``run_id``,
    the same run from MLflow and from the CSV."""
    if "run_id" in done.columns:
        done = done.sort_values("run_id", kind="stable")
    by = value_column(spec, select_by)
    ranked = pd.to_numeric(done[by], errors="coerce") if by in done.columns else pd.Series(dtype=float)
    ranked = ranked[ranked.map(math.isfinite)]
    if ranked.empty:
        return done.iloc[0:0]
    best = ranked.idxmin() if _select_direction(spec, select_by) == "min" else ranked.idxmax()
    return done.loc[[best]]


def _select_direction(spec: TableSpec, metric: str) -> str:
    """``max`` or ``min``: what ``select: best`` keeps. A ``bold: {metric: ...}`` entry, else the metric's own
    direction (min for losses, as for ``best.<metric>``); a table-wide ``bold`` string marks columns and, at its
    default ``max``, would keep a cell's highest loss."""
    if isinstance(spec.bold, Mapping) and spec.bold.get(metric) in ("max", "min"):
        return str(spec.bold[metric])
    return metric_direction(metric)


def format_mean_std(values: Sequence[float], digits: int = 4) -> str:
    """``"0.9712 ± 0.0031 (n=2)"``; one value has no std; none (finite) gives ``-``."""
    clean = tuple(float(v) for v in values if v is not None and math.isfinite(float(v)))
    return CellStats(clean, {"finished": len(clean)}).text(digits=digits) if clean else "-"


def mean_std_table(runs: pd.DataFrame, rows: str, metrics: list[str], *, digits: int = 4) -> str:
    """Markdown table, one row per label of axis ``rows``, one column per metric, mean ± std over seeds
    (kept for callers of the first version; `aggregate` is the general form)."""
    spec = TableSpec(name="table", rows=(rows,), metrics=tuple(metrics), digits=digits, bold="none")
    return aggregate(runs, spec).to_markdown()
