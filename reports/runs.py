"""A study's MLflow child runs as a tidy DataFrame: one row per run."""

from __future__ import annotations

import pandas as pd

__all__ = ["load_runs"]

_STATUS_TAG = "marginbench.status"


def load_runs(study: str, tracking_uri: str | None = None) -> pd.DataFrame:
    """Every trial run of ``study``.

    Returns:
        One row per run with columns ``run_id``, ``status`` (finished/diverged/pruned/failed/running),
        ``seed``, ``label.<axis>`` for each grid axis, ``param.<key>`` for the spec, and for each metric
        ``<metric>`` (last epoch) and ``best.<metric>`` (max over epochs). Empty when there are no runs.
    """
    from mlflow.tracking import MlflowClient

    from bench.tracking import ROLE_TAG, resolve_tracking_uri

    client = MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri))
    experiment = client.get_experiment_by_name(study)
    if experiment is None:
        return pd.DataFrame()
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{ROLE_TAG}` = 'trial'",
                              max_results=50000)
    rows = []
    for run in runs:
        tags = run.data.tags
        row: dict[str, object] = {"run_id": run.info.run_id, "run_name": run.info.run_name,
                                  "status": tags.get(_STATUS_TAG, run.info.status.lower()),
                                  "seed": int(tags.get("seed", run.data.params.get("seed", 0))),
                                  "device_name": tags.get("device_name", ""), "git_commit": tags.get("git_commit", ""),
                                  "diverged": tags.get("diverged", ""), "start_time": run.info.start_time}
        row.update({k: v for k, v in tags.items() if k.startswith("label.")})
        row.update({f"param.{k}": v for k, v in run.data.params.items()})
        row.update(run.data.metrics)
        for key in run.data.metrics:
            history = client.get_metric_history(run.info.run_id, key)
            if history:
                row[f"best.{key}"] = max(m.value for m in history)
                row[f"epochs.{key}"] = len(history)
        rows.append(row)
    return pd.DataFrame(rows)
