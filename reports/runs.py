"""A study's MLflow child runs as a tidy DataFrame: one row per run, plus the per-epoch history.

Columns of the runs frame (`RUN_COLUMNS` first, then the rest sorted):

- ``run_id``, ``run_name``, ``status`` (finished/diverged/pruned/failed/running), ``seed`` (int),
  ``trial_key``, ``start_time`` (ms since the epoch, UTC), ``date`` (``YYYY-MM-DD`` of the start, UTC),
  ``label`` (all labels joined), ``diverged`` (``"epoch=3 step=120"`` or empty);
- provenance tags: ``git_commit``, ``device_name``, ``torch_version``, ``cuda_version``, ``host``;
- ``label.<axis>`` for every grid axis, ``param.<key>`` for the flat `TrialSpec`;
- for every metric: ``<metric>`` (the last epoch's value) and ``best.<metric>`` (the best epoch's: max, or min
  for losses, error rates and spreads, see `reports.spec.metric_direction`; NaN epochs left out).
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from reports.spec import metric_direction

__all__ = ["load_runs", "load_study", "latest_runs", "StudyRuns", "RUN_COLUMNS", "PROVENANCE_TAGS", "run_date"]

STATUS_TAG = "marginbench.status"
ROLE_TAG = "marginbench.role"
TRIAL_KEY_TAG = "marginbench.trial_key"
#: Tags copied to columns of the same name (where a number came from).
PROVENANCE_TAGS = ("git_commit", "device_name", "torch_version", "cuda_version", "host")
#: The leading columns of the runs frame.
RUN_COLUMNS = ("run_id", "run_name", "status", "seed", "trial_key", "start_time", "date", "label", "diverged",
               *PROVENANCE_TAGS)
_TERMINAL = ("finished", "diverged")


@dataclass
class StudyRuns:
    """Everything `reports` reads from MLflow for one study.

    Attributes:
        study: the study (experiment) name.
        tracking_uri: the resolved MLflow URI.
        experiment_id: None when the experiment does not exist.
        parent_run_id: the study's parent run (None when absent).
        runs: one row per child run (see the module docstring); empty when there are none.
        history: long format, one row per logged value: ``run_id``, ``metric``, ``step``, ``value``.
    """

    study: str
    tracking_uri: str
    experiment_id: str | None
    parent_run_id: str | None
    runs: pd.DataFrame
    history: pd.DataFrame


def run_date(start_time_ms: Any) -> str:
    """``YYYY-MM-DD`` (UTC) of an MLflow start time in milliseconds; empty when unknown."""
    try:
        return _dt.datetime.fromtimestamp(int(start_time_ms) / 1000, tz=_dt.timezone.utc).strftime("%Y-%m-%d")
    except (TypeError, ValueError, OverflowError):
        return ""


def load_study(study: str, tracking_uri: str | None = None) -> StudyRuns:
    """Reads every trial run of ``study`` and its metric histories.

    Args:
        study: the grid's name (the MLflow experiment).
        tracking_uri: MLflow URI (None: ``$MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db`` here).
    """
    from mlflow.tracking import MlflowClient

    from bench.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    empty_history = pd.DataFrame(columns=["run_id", "metric", "step", "value"])
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        # no store yet: opening one would create an empty mlflow.db just to read nothing from it
        return StudyRuns(study, uri, None, None, pd.DataFrame(columns=list(RUN_COLUMNS)), empty_history)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(study)
    if experiment is None:
        return StudyRuns(study, uri, None, None, pd.DataFrame(columns=list(RUN_COLUMNS)), empty_history)
    eid = experiment.experiment_id
    parents = client.search_runs([eid], filter_string=f"tags.`{ROLE_TAG}` = 'study'",
                                 order_by=["attributes.start_time ASC"], max_results=1)
    runs = client.search_runs([eid], filter_string=f"tags.`{ROLE_TAG}` = 'trial'", max_results=50000,
                              order_by=["attributes.start_time ASC"])
    rows: list[dict[str, Any]] = []
    history: list[tuple[str, str, int, float]] = []
    for run in runs:
        tags, info = run.data.tags, run.info
        row: dict[str, Any] = {
            "run_id": info.run_id, "run_name": info.run_name or "",
            "status": tags.get(STATUS_TAG, str(info.status).lower()),
            "seed": int(tags.get("seed", run.data.params.get("seed", 0))),
            "trial_key": tags.get(TRIAL_KEY_TAG, ""), "start_time": int(info.start_time or 0),
            "date": run_date(info.start_time), "label": tags.get("label", ""), "diverged": tags.get("diverged", ""),
        }
        row.update({k: tags.get(k, "") for k in PROVENANCE_TAGS})
        row.update({k: v for k, v in tags.items() if k.startswith("label.")})
        row.update({f"param.{k}": v for k, v in run.data.params.items()})
        row.update({k: float(v) for k, v in run.data.metrics.items()})
        for key in run.data.metrics:
            values = client.get_metric_history(info.run_id, key)
            history += [(info.run_id, key, int(m.step), float(m.value)) for m in values]
            if values:
                pick = min if metric_direction(key) == "min" else max
                finite = [float(m.value) for m in values if math.isfinite(m.value)]  # max(nan, 0.7) is nan
                row[f"best.{key}"] = pick(finite) if finite else math.nan
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        frame = pd.DataFrame(columns=list(RUN_COLUMNS))
    else:
        rest = sorted(c for c in frame.columns if c not in RUN_COLUMNS)
        frame = frame[list(RUN_COLUMNS) + rest]
    hist = pd.DataFrame(history, columns=["run_id", "metric", "step", "value"]) if history else empty_history
    return StudyRuns(study, uri, eid, parents[0].info.run_id if parents else None, frame, hist)


def load_runs(study: str, tracking_uri: str | None = None) -> pd.DataFrame:
    """Every trial run of ``study`` as a tidy frame, one row per run (duplicates included; see `latest_runs`).

    Returns:
        The frame described in the module docstring; empty (with the leading columns) when there are no runs.
    """
    return load_study(study, tracking_uri).runs


def latest_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """One run per trial (``trial_key``, ``seed`` and the labels): the latest finished or diverged run when there is
    one, else the latest run of any status. Rows without a trial key are all kept.

    A trial run twice (a resumed study, a rerun after a code change) would otherwise count twice in a mean.
    """
    if runs.empty or "trial_key" not in runs.columns:
        return runs
    frame = runs.copy()
    keyed = frame["trial_key"].fillna("").astype(str) != ""
    start = frame["start_time"] if "start_time" in frame.columns else pd.Series(0, index=frame.index)
    frame["_terminal"] = frame["status"].isin(_TERMINAL)
    frame["_start"] = pd.to_numeric(start, errors="coerce").fillna(0)
    frame["_order"] = range(len(frame))
    ranked = frame[keyed].sort_values(["_terminal", "_start", "_order"])
    by = [ranked["trial_key"].astype(str), ranked["seed"].astype(str)]
    # two cells with the same params but different labels are different cells; a results CSV has no joined
    # ``label``, only the table's ``label.<axis>`` columns
    for col in ("label", *sorted(str(c) for c in ranked.columns if str(c).startswith("label."))):
        if col in ranked.columns:
            by.append(ranked[col].fillna("").astype(str))
    kept = ranked.groupby(by, sort=False).tail(1)
    out = pd.concat([kept, frame[~keyed]]).sort_values("_order")
    return out.drop(columns=["_terminal", "_start", "_order"])
