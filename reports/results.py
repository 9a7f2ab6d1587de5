"""Results files: each table's source data as a sorted CSV with a ``.meta.json`` beside it.

``reports/results/<grid>/<table>.csv`` holds one row per run that the table counts (after filtering and
de-duplication): ``run_id``, ``run_name``, the ``label.<axis>`` columns, ``seed``, ``status``, ``diverged``,
``trial_key``, the metric columns the table reads (``test_acc`` or ``best.test_acc``, shortest round-trip
decimals), and provenance: ``grid``, ``dataset``, ``epochs``, ``device_name``, ``git_commit``,
``torch_version``, ``date``. Rows are sorted by the grid's label order, then seed, then run id.

``<table>.meta.json`` holds the table's spec, the grid's label order and the metric columns, so that
`load_results` + `reports.tables.aggregate` rebuild exactly the markdown `bench report` printed from MLflow,
on a machine without the MLflow store. It also holds the CSV's SHA-256 (``csv_sha256``, of its text with
``\n`` line ends): the two files are replaced one after the other, and `load_results` refuses a CSV that is
not the one its meta was written with (an export interrupted between the two, or a CSV edited by hand),
rather than rebuild a table from a new CSV with an old spec. A file that is not what the export writes (a meta
that is not JSON, of another ``schema``, lacks a key or lists value columns that are not its metrics'; a CSV that
is empty, lacks a column the table reads or has a value that is not a number) is refused the same way: an error
naming the file, the key and the fix (export again), before a README is written.
"""

from __future__ import annotations

import hashlib
import json
import math
import reprlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from reports.runs import latest_runs
from reports.spec import ReportError, TableSpec, did_you_mean, natural_key
from reports.tables import label_column, metric_columns, missing_metric, value_column

__all__ = ["ResultsTable", "results_frame", "write_results", "load_results", "find_results", "grid_order",
           "check_headers", "PROVENANCE_COLUMNS", "DEFAULT_RESULTS_DIR"]

DEFAULT_RESULTS_DIR = Path("reports") / "results"
#: Provenance columns of a results CSV and the runs-frame column each comes from.
PROVENANCE_COLUMNS = {"grid": None, "dataset": "param.dataset", "epochs": "param.epochs",
                      "device_name": "device_name", "git_commit": "git_commit", "torch_version": "torch_version",
                      "date": "date"}
_SCHEMA = 1


def _is_names(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


#: The keys of a ``.meta.json`` that `load_results` reads: ``key: (required, valid, what it holds)``.
_META_KEYS: dict[str, tuple[bool, Callable[[Any], bool], str]] = {
    "schema": (True, lambda v: isinstance(v, int) and not isinstance(v, bool),
               "the results files' format number, an integer"),
    "grid": (True, lambda v: isinstance(v, str) and bool(v), "the grid's name, a string"),
    "table": (True, lambda v: isinstance(v, dict), "the table's spec, a mapping"),
    "metrics": (True, _is_names, "the table's metric columns, a list of names"),
    "value_columns": (True, _is_names, "the CSV's value columns, a list of names"),
    "order": (False, lambda v: isinstance(v, dict) and all(_is_names(x) for x in v.values()),
              "each axis's labels in grid order, a mapping of lists"),
    "description": (False, lambda v: isinstance(v, str), "the grid's description, a string"),
    "csv_sha256": (False, lambda v: isinstance(v, str), "the CSV's SHA-256, a hex string"),
}


@dataclass
class ResultsTable:
    """A table's source data: the runs it counts and what is needed to rebuild it.

    Attributes:
        grid: the study name.
        spec: the table.
        order: labels per axis in grid order.
        metrics: the metric columns (a pattern resolved).
        frame: one row per run (the CSV's content).
        description: the grid's description.
        note: a line under the table about runs of the study it does not count (`reports.matching`); not
            kept in the results files, which hold only the runs counted.
    """

    grid: str
    spec: TableSpec
    order: dict[str, list[str]]
    metrics: list[str]
    frame: pd.DataFrame
    description: str = ""
    note: str = ""

    @property
    def value_columns(self) -> list[str]:
        return [value_column(self.spec, m) for m in self.metrics]

    def meta(self, csv_text: str | None = None) -> dict[str, Any]:
        """The ``.meta.json`` content; ``csv_text``: the CSV written beside it (its hash is kept)."""
        out = {"schema": _SCHEMA, "grid": self.grid, "description": self.description,
               "table": self.spec.to_dict(), "metrics": self.metrics, "value_columns": self.value_columns,
               "order": self.order, "generated_by": "bench report --export"}
        if csv_text is not None:
            out["csv_sha256"] = _csv_hash(csv_text)
        return out


def grid_order(grid: Any) -> dict[str, list[str]]:
    """Labels per axis in the grid file's order, and ``label`` (all labels joined) in cell order."""
    order: dict[str, list[str]] = {axis: [] for axis in grid.axes}
    joined: list[str] = []
    for cell in grid.cells:
        for axis, label in cell.labels.items():
            if label not in order.setdefault(axis, []):
                order[axis].append(label)
        text = " / ".join(cell.labels.values()) if cell.labels else cell.spec.loss
        if text not in joined:
            joined.append(text)
    order["label"] = joined
    return order


def results_frame(runs: pd.DataFrame, spec: TableSpec, *, grid: str, order: Mapping[str, Sequence[str]] | None = None,
                  description: str = "") -> ResultsTable:
    """The runs a table counts, reduced to the results-file columns and sorted."""
    order = {k: list(v) for k, v in (order or {}).items()}
    runs = latest_runs(runs)
    axes = list(dict.fromkeys(spec.axes + tuple(spec.where)))
    for axis in axes:
        if not runs.empty and label_column(axis) not in runs.columns:
            have = [c[len("label."):] for c in runs.columns if str(c).startswith("label.")]
            raise ReportError(f"table {spec.name!r}: the runs have no axis {axis!r} (tag label.{axis}); "
                              f"their axes: {', '.join(have) or 'none'}")
    for axis, labels in spec.where.items():
        if not runs.empty:
            runs = runs[runs[label_column(axis)].astype(str).isin(labels)]
    metrics = spec.resolve_metrics(metric_columns(runs))
    if spec.pattern is not None and not metrics and not runs.empty:
        raise ReportError(f"{spec.at('columns.pattern')}: no metric matches {spec.pattern!r}; metrics: "
                          f"{', '.join(metric_columns(runs)) or 'none'}")
    finished = runs[runs["status"] == "finished"] if not runs.empty else runs
    select_by = spec.selection_metric(metrics)
    if select_by is not None and select_by not in metrics:
        metrics = [*metrics, select_by]  # kept in the CSV so the same run is chosen from it
    for metric in metrics:
        if not finished.empty and value_column(spec, metric) not in runs.columns:
            raise missing_metric(spec, metric, runs, of=f"the runs of {grid}")
    values = [value_column(spec, m) for m in metrics]
    columns = _csv_columns(spec, values)
    out = pd.DataFrame(index=runs.index)
    for col in columns:
        if col == "grid":
            out[col] = grid
        elif col in PROVENANCE_COLUMNS:
            src = PROVENANCE_COLUMNS[col]
            out[col] = runs[src].fillna("").astype(str) if src in runs.columns else ""
        elif col in values:
            out[col] = pd.to_numeric(runs[col], errors="coerce") if col in runs.columns else math.nan
        elif col == "seed":
            out[col] = pd.to_numeric(runs[col], errors="coerce").fillna(0).astype(int) if col in runs else 0
        else:
            out[col] = runs[col].fillna("").astype(str) if col in runs.columns else ""
    out = _sort(out.reset_index(drop=True), axes, order)
    return ResultsTable(grid, spec, order, metrics, out, description)


def _csv_columns(spec: TableSpec, values: Sequence[str]) -> list[str]:
    """The columns of a table's results CSV, ``values`` its value columns."""
    labels = [label_column(a) for a in dict.fromkeys(spec.axes + tuple(spec.where))]
    return ["run_id", "run_name", *labels, "seed", "status", "diverged", "trial_key", *values, *PROVENANCE_COLUMNS]


def _sort(frame: pd.DataFrame, axes: Sequence[str], order: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    if frame.empty:
        return frame

    def rank(axis: str, label: str) -> tuple[int, list[Any]]:
        known = list(order.get(axis, []))
        return (known.index(label), []) if label in known else (len(known), natural_key(label))

    keys = [tuple(rank(a, str(row[label_column(a)])) for a in axes) + (int(row["seed"]), str(row["run_id"]))
            for _, row in frame.iterrows()]
    positions = sorted(range(len(frame)), key=lambda i: keys[i])
    return frame.iloc[positions].reset_index(drop=True)


def _csv_text(table: ResultsTable) -> str:
    frame = table.frame.copy()
    for col in table.value_columns:
        frame[col] = [("" if v is None or math.isnan(float(v)) else repr(float(v))) for v in frame[col]]
    return frame.to_csv(index=False, lineterminator="\n")


def _csv_hash(text: str) -> str:
    """SHA-256 of a CSV's text with ``\n`` line ends (a checkout that turns them into ``\r\n`` matches)."""
    return hashlib.sha256(text.replace("\r\n", "\n").encode("utf-8")).hexdigest()


def write_results(table: ResultsTable, results_dir: Path | str = DEFAULT_RESULTS_DIR) -> Path:
    """Writes ``<results_dir>/<grid>/<table>.csv`` and ``.meta.json``; returns the CSV path.

    Both are written to temporary files first, then each replaces its file; the meta holds the CSV's hash, so
    an interruption between the two replacements leaves a pair that `load_results` refuses, not a CSV read
    with another export's spec.

    Raises:
        ReportError: a ``headers`` key names nothing the table shows (`check_headers`); nothing is written.
    """
    check_headers(table)
    folder = Path(results_dir) / table.grid
    folder.mkdir(parents=True, exist_ok=True)
    csv_path = folder / f"{table.spec.name}.csv"
    meta_path = folder / f"{table.spec.name}.meta.json"
    csv_text = _csv_text(table)
    pairs = [(csv_path, csv_text), (meta_path, json.dumps(table.meta(csv_text), indent=2, ensure_ascii=False) + "\n")]
    tmps = [path.with_name(path.name + ".tmp") for path, _ in pairs]
    try:
        for tmp, (_, text) in zip(tmps, pairs, strict=True):
            tmp.write_text(text, encoding="utf-8")
        for tmp, (path, _) in zip(tmps, pairs, strict=True):
            tmp.replace(path)
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
    return csv_path


def load_results(csv_path: Path | str) -> ResultsTable:
    """Reads a results CSV and its ``.meta.json`` back (no MLflow needed).

    Raises:
        FileNotFoundError: either file missing, with how to create them.
        ReportError: a file that is not what ``bench report --export`` writes (a meta that is not JSON, written
            with another ``schema``, lacks a key, holds one of the wrong type or value columns that are not those of
            its metrics; a CSV that is empty, lacks a column the table reads, has a seed that
            is not an integer or a value that is neither a number nor empty), or a CSV that is not the one the meta
            was written with (``csv_sha256``; a meta written before the hash was kept is not checked). Each names
            the file, the key and the fix.
    """
    csv_path = Path(csv_path)
    meta_path = csv_path.with_name(csv_path.name[: -len(".csv")] + ".meta.json")
    for path in (csv_path, meta_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; write it with: bench report --grid {csv_path.parent.name} "
                                    f"--export")
    meta, spec = _read_meta(meta_path, csv_path)
    grid = meta["grid"]
    expected = meta.get("csv_sha256")
    if expected is not None and _csv_hash(_read_text(csv_path, grid)) != expected:
        raise ReportError(f"{csv_path} is not the CSV that {meta_path.name} was written with (csv_sha256 differs): "
                          f"an export interrupted between the two files, or a CSV edited by hand; export both "
                          f"again: bench report --grid {grid} --export")
    frame = _read_csv(csv_path, meta_path, spec, meta["value_columns"], grid)
    table = ResultsTable(grid, spec, {k: list(v) for k, v in meta.get("order", {}).items()},
                         list(meta["metrics"]), frame, meta.get("description", ""))
    check_headers(table, reading=True)
    return table


def _export_again(grid: str) -> str:
    """The fix for a results file `load_results` refuses: export it again (both files are rewritten)."""
    return f"fix: export the table again, which rewrites its CSV and meta: bench report --grid {grid} --export"


def _read_text(path: Path, grid: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ReportError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})\n{_export_again(grid)}") from err


def _read_meta(meta_path: Path, csv_path: Path) -> tuple[dict[str, Any], TableSpec]:
    """A ``.meta.json``'s content and its table spec, checked: its ``schema`` first (a meta of another schema is
    refused alone: its other keys may mean something else), then each key `load_results` reads, of its type
    (`_META_KEYS`), the table spec, and its ``value_columns`` against its ``metrics``.

    Raises:
        ReportError: not JSON, not a mapping, of another schema, or listing each problem of its keys.
    """
    grid = csv_path.parent.name  # the folder is named after the grid: the fix when the meta cannot say
    try:
        meta = json.loads(_read_text(meta_path, grid))
    except json.JSONDecodeError as err:
        raise ReportError(f"{meta_path}: not JSON ({err})\n{_export_again(grid)}") from err
    if not isinstance(meta, dict):
        raise ReportError(f"{meta_path}: must be a JSON object with keys {', '.join(_META_KEYS)}, but got "
                          f"{reprlib.repr(meta)}\n{_export_again(grid)}")
    grid = meta["grid"] if _valid(meta, "grid") else grid
    _check_schema(meta, meta_path, grid)
    problems = []
    for key, (required, valid, holds) in _META_KEYS.items():
        if key not in meta:
            if required:
                problems.append(f"{meta_path}: {key}: missing; it holds {holds}")
        elif not valid(meta[key]):
            problems.append(f"{meta_path}: {key}: must be {holds}, but got {reprlib.repr(meta[key])}")
    spec = None
    if _valid(meta, "table"):
        try:
            spec = TableSpec.from_dict(meta["table"], source=str(meta_path))
        except ReportError as err:
            problems += str(err).splitlines()
    if spec is not None and _valid(meta, "metrics") and _valid(meta, "value_columns"):
        problems += _value_column_problems(meta_path, spec, meta["metrics"], meta["value_columns"])
    if problems or spec is None:
        raise ReportError("\n".join([*problems, _export_again(grid)]))
    return meta, spec


def _valid(meta: dict[str, Any], key: str) -> bool:
    """Whether ``meta`` holds ``key`` of its type (`_META_KEYS`)."""
    return key in meta and _META_KEYS[key][1](meta[key])


def _check_schema(meta: dict[str, Any], meta_path: Path, grid: str) -> None:
    """Refuses a meta written by a marginbench of another results schema than `_SCHEMA` (a missing or mistyped
    ``schema`` is a problem listed with the others)."""
    if not _valid(meta, "schema") or meta["schema"] == _SCHEMA:
        return
    schema = meta["schema"]
    if schema > _SCHEMA:
        raise ReportError(f"{meta_path}: schema: written by a newer marginbench (schema {schema}, this reads "
                          f"{_SCHEMA})\n{_export_again(grid)}, or update this marginbench checkout to read it as "
                          "it is")
    raise ReportError(f"{meta_path}: schema: written by an older marginbench (schema {schema}, this reads "
                      f"{_SCHEMA})\n{_export_again(grid)}")


def _value_column_problems(meta_path: Path, spec: TableSpec, metrics: Sequence[str],
                           values: Sequence[str]) -> list[str]:
    """A line per value column that is no metric's and per metric without its value column: export writes the
    value column of each metric (`reports.tables.value_column`, which reads ``metric_source``), nothing else."""
    expected = [value_column(spec, m) for m in metrics]
    source = f" (metric_source: {spec.metric_source})" if spec.metric_source != "final" else ""
    problems = [f"{meta_path}: value_columns: {col!r} is the value column of no metric in metrics"
                f"{did_you_mean(col, expected)}; the value columns of metrics{source}: {', '.join(expected) or 'none'}"
                for col in values if col not in expected]
    so = f"metric_source: {spec.metric_source}, so " if source else ""
    problems += [f"{meta_path}: metrics: {metric!r} has no value column in value_columns ({so}it would be {col!r}); "
                 f"value_columns: {', '.join(values) or 'none'}"
                 for metric, col in zip(metrics, expected, strict=True) if col not in values]
    return problems


def _read_csv(csv_path: Path, meta_path: Path, spec: TableSpec, values: Sequence[str], grid: str) -> pd.DataFrame:
    """A results CSV, checked to have the columns its meta's table reads (``values``: its value columns), integer
    seeds and numbers (or empty cells) in its value columns: those as floats (NaN for an empty cell), the seeds as
    integers, the other columns as text.

    Raises:
        ReportError: an empty file, one pandas cannot parse or a missing column; or listing each seed that is not
            an integer and each value that is not a number.
    """
    try:
        frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError as err:
        raise ReportError(f"{csv_path}: empty, not even a header line\n{_export_again(grid)}") from err
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ReportError(f"{csv_path}: not a results CSV ({str(err).strip()})\n{_export_again(grid)}") from err
    missing = [c for c in _csv_columns(spec, values) if c not in frame.columns]
    if missing:
        raise ReportError(f"{csv_path}: no column {', '.join(repr(c) for c in missing)}, which the table of "
                          f"{meta_path.name} reads; columns it has: {', '.join(map(str, frame.columns)) or 'none'}"
                          f"\n{_export_again(grid)}")
    numbers, problems = _numbers(csv_path, frame, values)
    if problems:
        raise ReportError("\n".join([*problems, _export_again(grid)]))
    for col in values:
        frame[col] = pd.Series(numbers[col], index=frame.index, dtype=float)
    frame["seed"] = frame["seed"].astype(int)
    return frame


#: At most this many bad cells of a results CSV are listed; the rest are counted.
_MAX_CELLS_LISTED = 10


def _numbers(csv_path: Path, frame: pd.DataFrame, values: Sequence[str]) -> tuple[dict[str, list[float]], list[str]]:
    """The value columns ``values`` read as numbers (`_number`), and a line per seed that is not an integer and per
    value that is not a number, row by row: ``<csv>:<line>: <column>: ...``, the value's run named by its id and
    seed."""
    numbers: dict[str, list[float]] = {col: [] for col in values}
    problems = []
    for i, row in enumerate(frame.itertuples(index=False)):
        cells = dict(zip(frame.columns, row, strict=True))
        seed = cells["seed"]
        if not seed.strip().lstrip("-").isdigit():
            problems.append(f"{csv_path}:{i + 2}: seed: must be an integer, but got {seed!r}")
        for col in values:
            try:
                numbers[col].append(_number(cells[col]))
            except ValueError:
                problems.append(f"{csv_path}:{i + 2}: {col}: must be a number, or empty for a run without the "
                                f"metric, but got {cells[col]!r} (run {cells['run_id']}, seed {seed})")
    if len(problems) > _MAX_CELLS_LISTED:
        more = len(problems) - _MAX_CELLS_LISTED
        problems = [*problems[:_MAX_CELLS_LISTED], f"{csv_path}: and {more} more cell{'s' * (more > 1)} like these"]
    return numbers, problems


def _number(text: str) -> float:
    """A value cell: a number (``repr`` of a float, as export writes it: ``inf`` too), or empty (or blank) for a run
    without the metric, NaN.

    Raises:
        ValueError: anything else (``0.9x``, ``n/a``).
    """
    return math.nan if not text.strip() else float(text)


def check_headers(table: ResultsTable, *, reading: bool = False) -> None:
    """Raises `ReportError` when a key of the table spec's ``headers`` names nothing the table shows, as the grid
    check does for a grid file (`TableSpec.header_problems`). On export (`write_results`), where the grid check
    took any key a ``pattern`` matches while the trials' metrics were not known, and the runs then had no such
    metric; on reading a results file (`load_results`, ``reading``), whose meta may come from before that check or
    be edited by hand. The labels of ``table.frame`` count beside ``table.order`` for a matrix's column labels.
    The message ends with the fix from where the user is (`_headers_fix`)."""
    spec, frame = table.spec, table.frame
    labels = {axis: list(values) for axis, values in table.order.items()}
    for axis in spec.axes:
        column = label_column(axis)
        if column in frame.columns:
            seen = labels.setdefault(axis, [])
            seen += [str(v) for v in dict.fromkeys(frame[column]) if str(v) not in seen]
    problems = spec.header_problems(table.metrics, labels)
    if problems:
        listed = "\n".join(f"{spec.at(key)}: {message}" for key, message in problems)
        raise ReportError(f"{listed}\n{_headers_fix(table.grid, reading)}")


def _headers_fix(grid: str, reading: bool) -> str:
    """What to do about a bad ``headers`` key: at export, fix the grid and run the export again; on reading a
    results file (``bench report --readme``), the stored spec comes from the last export, so export first, then
    rebuild."""
    if reading:
        return (f"fix headers: in the report section of grid {grid!r}, export the table again (bench report --grid "
                f"{grid} --export), then run bench report --readme again")
    return (f"fix headers: in the report section of grid {grid!r} and run the export again: bench report --grid "
            f"{grid} --export")


def find_results(name: str, results_dir: Path | str = DEFAULT_RESULTS_DIR) -> Path:
    """The CSV a README block names: ``<grid>/<table>``, or a bare ``<table>`` found in exactly one grid.

    Raises:
        ReportError: no such table, or a bare name in several grids (listing the candidates).
    """
    root = Path(results_dir)
    available = sorted(f"{p.parent.name}/{p.stem}" for p in root.glob("*/*.csv"))
    if "/" in name:
        path = root / f"{name}.csv"
        if path.is_file():
            return path
        hits = []
    else:
        hits = sorted(root.glob(f"*/{name}.csv"))
        if len(hits) == 1:
            return hits[0]
    if len(hits) > 1:
        raise ReportError(f"table {name!r} is in several grids under {root}: "
                          f"{', '.join(f'{p.parent.name}/{p.stem}' for p in hits)}; name it <grid>/<table>")
    raise ReportError(f"no results for table {name!r} under {root} (export them with bench report --grid <grid> "
                      f"--export); available: {', '.join(available) or 'none'}")
