"""Report plots, written beside the results CSVs and logged to the study's parent MLflow run.

- ``<table>.accuracy.png``: each row's mean per metric column with its 95% t interval as an error bar;
- ``<table>.curves.png``: each metric per epoch, one line per row (mean over the finished seeds, ± std band);
- ``<table>.embeddings.png``: every run's last-epoch embedding scatter, tiled (2-D/3-D runs with ``--plots``).
- ``<table>.gifs.md``: a markdown list linking each run's embedding GIF (``plots/embeddings.gif``) by its
  artifact URI, with a link to the run in the MLflow UI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from bench.atomic import replace_file, replace_text
from reports.results import ResultsTable
from reports.tables import Table, aggregate, best_run, label_column

__all__ = ["plot_accuracy", "plot_curves", "gif_links", "embedding_montage", "write_plots"]

_PNG_META = {"Software": None}  # keeps the bytes the same from one export to the next


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save_png(fig: Any, path: Path, **kwargs: Any) -> None:
    """The figure as ``path``, replaced whole: an export stopped midway leaves the old PNG beside the README."""
    replace_file(path, lambda tmp: fig.savefig(tmp, format="png", metadata=_PNG_META, **kwargs))


def _row_name(key: tuple[str, ...]) -> str:
    return " / ".join(key)


def plot_accuracy(table: Table, path: Path) -> Path:
    """Means with 95% t intervals: x = the table's rows, one marker series per column."""
    plt = _pyplot()
    spec = table.spec
    rows, cols = table.row_keys, table.col_keys
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(rows) + 2), 3.6), dpi=100)
    width = 0.8 / max(len(cols), 1)
    scale = 100.0 if spec.percent else 1.0
    for j, col in enumerate(cols):
        xs, ys, lo, hi = [], [], [], []
        for i, row in enumerate(rows):
            cell = table.cell(row, col)
            if not cell.n:
                continue
            xs.append(i - 0.4 + width * (j + 0.5))
            ys.append(cell.mean * scale)
            ci = cell.ci
            lo.append((cell.mean - ci[0]) * scale if ci else 0.0)
            hi.append((ci[1] - cell.mean) * scale if ci else 0.0)
        label = table._col_header(col)
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", capsize=3, label=label)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([_row_name(r) for r in rows], rotation=30 if len(rows) > 4 else 0, ha="right"
                       if len(rows) > 4 else "center")
    ax.set_ylabel((str(spec.metric) if spec.is_matrix else "value") + (" (%)" if spec.percent else ""))
    ax.set_title(spec.title or f"{spec.name}: mean and 95% t interval over seeds", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    if cols:
        ax.legend(fontsize=8, title=spec.header(spec.column_axis) if spec.is_matrix else None)
    fig.tight_layout()
    _save_png(fig, path)
    plt.close(fig)
    return path


def plot_curves(results: ResultsTable, history: pd.DataFrame, path: Path,
                metrics: list[str] | None = None) -> Path | None:
    """Each metric per epoch, one line per table row (matrix: per row and column), mean over finished seeds
    with a ± std band (with ``select: best``, the one run the table shows). None when there is no history to
    draw."""
    spec = results.spec
    frame = results.frame[results.frame["status"] == "finished"]
    if frame.empty or history.empty:
        return None
    wanted = metrics or list(dict.fromkeys(
        ["train_loss", "train_acc", *(results.metrics if not spec.is_matrix else [str(spec.metric)])]))
    if spec.pattern is not None:  # per-class columns: their final values are the table; curves of the rest
        wanted = [m for m in wanted if m not in results.metrics] or wanted[:1]
    present = set(history["metric"])
    wanted = [m for m in wanted if m in present][:6]
    if not wanted:
        return None
    axes_cols = [label_column(a) for a in spec.axes]
    select_by = spec.selection_metric(results.metrics)
    if select_by is not None:  # the table's run of each cell, not the mean of a search's sampled settings
        frame = pd.concat([best_run(cell, spec, select_by)
                           for _, cell in frame.groupby([frame[c].astype(str) for c in axes_cols], sort=False)])
    groups = frame.groupby([frame[c].astype(str) for c in axes_cols], sort=False)
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(wanted), figsize=(4.2 * len(wanted), 3.4), dpi=100, squeeze=False)
    for ax, metric in zip(axes[0], wanted, strict=True):
        hist = history[history["metric"] == metric]
        for key, group in groups:
            sub = hist[hist["run_id"].isin(group["run_id"])]
            if sub.empty:
                continue
            stats = sub.groupby("step")["value"].agg(["mean", "std", "count"]).sort_index()
            steps = stats.index.to_numpy() + 1
            line = ax.plot(steps, stats["mean"].to_numpy(), label=_row_name(tuple(key)), lw=1.5)[0]
            std = stats["std"].fillna(0.0).to_numpy()
            ax.fill_between(steps, stats["mean"] - std, stats["mean"] + std, color=line.get_color(), alpha=0.15,
                            lw=0)
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    what = f"each cell's best run by {select_by}" if select_by is not None else "mean over seeds (± std)"
    fig.suptitle(f"{results.grid}/{spec.name}: {what}", fontsize=10)
    fig.tight_layout()
    _save_png(fig, path)
    plt.close(fig)
    return path


def gif_links(results: ResultsTable, artifact_uris: dict[str, str], path: Path, *,
              ui_base: str | None = None, experiment_id: str | None = None) -> Path:
    """A markdown list: one line per run with its embedding GIF's artifact URI (runs without one say so)."""
    lines = [f"# {results.grid}/{results.spec.name}: embedding GIFs", ""]
    for _, run in results.frame.iterrows():
        name = run["run_name"] or run["run_id"]
        uri = artifact_uris.get(str(run["run_id"]))
        link = f"[embeddings.gif]({uri})" if uri else "no GIF (run with plots: true and a 2-D/3-D embedding)"
        ui = (f" · [run]({ui_base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run['run_id']})"
              if ui_base and experiment_id else "")
        lines.append(f"- {name} ({run['status']}): {link}{ui} · `{run['run_id']}`")
    return replace_text(path, "\n".join(lines) + "\n")


def _plot_files(client: Any, run_ids: list[str]) -> dict[str, list[str]]:
    """Each run's artifact paths under ``plots/``, listed once for the GIF links and the montage (runs whose
    artifact store cannot be read are left out: an unreachable store must not stop the report)."""
    out = {}
    for run_id in run_ids:
        try:
            out[run_id] = [f.path for f in client.list_artifacts(run_id, "plots")]
        except Exception:
            continue
    return out


def _gif_uris(client: Any, files: dict[str, list[str]]) -> dict[str, str]:
    out = {}
    for run_id, paths in files.items():
        if any(p.endswith("embeddings.gif") for p in paths):
            root = client.get_run(run_id).info.artifact_uri
            out[run_id] = f"{root.rstrip('/')}/plots/embeddings.gif"
    return out


def embedding_montage(results: ResultsTable, client: Any, path: Path, *, files: dict[str, list[str]] | None = None,
                      columns: int = 4) -> Path | None:
    """One picture of every run's last-epoch embedding scatter (``plots/embeddings_epoch<N>.png``), tiled in
    the table's row order; None when no run has one (no ``--plots``, or embeddings above 3-D). ``files``: the
    runs' ``plots/`` listings when the caller has them already."""
    import tempfile

    run_ids = results.frame["run_id"].astype(str).tolist()
    if files is None:
        files = _plot_files(client, run_ids)
    frames = []
    with tempfile.TemporaryDirectory() as tmp:
        for run_id in run_ids:
            epochs = sorted(f for f in files.get(run_id, []) if f.rsplit("/", 1)[-1].startswith("embeddings_epoch")
                            and f.endswith(".png"))
            if epochs:
                local = client.download_artifacts(run_id, epochs[-1], tmp)
                frames.append(_pyplot().imread(local))
        if not frames:
            return None
        plt = _pyplot()
        rows = -(-len(frames) // columns)
        fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3 * rows), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for ax, image in zip(axes.flat, frames, strict=False):
            ax.imshow(image)
        fig.tight_layout(pad=0.2)
        _save_png(fig, path, dpi=80)
        plt.close(fig)
    return path


def write_plots(results: ResultsTable, history: pd.DataFrame, folder: Path, *, client: Any = None,
                parent_run_id: str | None = None, experiment_id: str | None = None,
                ui_base: str | None = "http://127.0.0.1:5000") -> list[Path]:
    """Writes a table's plots into ``folder`` and, given a client and the parent run, logs them there under
    ``reports/<table>/``. Returns the files written."""
    table = aggregate(results.frame, results.spec, order=results.order)
    name = results.spec.name
    written = [plot_accuracy(table, folder / f"{name}.accuracy.png")]
    curves = plot_curves(results, history, folder / f"{name}.curves.png")
    if curves is not None:
        written.append(curves)
    files = _plot_files(client, results.frame["run_id"].astype(str).tolist()) if client is not None else {}
    uris = _gif_uris(client, files)
    written.append(gif_links(results, uris, folder / f"{name}.gifs.md", ui_base=ui_base, experiment_id=experiment_id))
    if files:  # a 1-epoch run has its scatter but no GIF; the montage needs only the scatters
        montage = embedding_montage(results, client, folder / f"{name}.embeddings.png", files=files)
        if montage is not None:
            written.append(montage)
    if client is not None and parent_run_id:
        for path in written:
            client.log_artifact(parent_run_id, str(path), f"reports/{name}")
    return written

