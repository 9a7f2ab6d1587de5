"""Report plots for each table shape: written without error, the same bytes twice, curves from the history."""

from __future__ import annotations

import pandas as pd
import pytest

from reports.plots import write_plots
from reports.results import results_frame
from reports.spec import TableSpec

from .conftest import frame, run_row


def _history(rows):
    out = []
    for row in rows:
        for metric in ("train_loss", "train_acc", "test_acc"):
            for step in range(3):
                out.append((row["run_id"], metric, step, 0.3 * step + (0.1 if metric != "train_loss" else 1.0)))
    return pd.DataFrame(out, columns=["run_id", "metric", "step", "value"])


@pytest.mark.parametrize("table", [
    {"name": "metrics", "rows": ["loss", "backbone"], "ci": True},
    {"name": "matrix", "rows": "loss", "columns": "backbone", "metric": "test_acc", "percent": True},
    {"name": "classes", "rows": ["loss", "backbone"], "columns": {"pattern": "test_acc.class_*"}, "transpose": True,
     "mean_row": True},
])
def test_plots_for_every_shape(tmp_path, table):
    rows = [run_row({"loss": loss, "backbone": bb}, seed, status, train_acc=0.8 + 0.01 * seed,
                    test_acc=0.7 + 0.02 * seed, **{f"test_acc.class_{c}": 0.5 + 0.01 * c for c in range(3)})
            for loss in ("softmax", "cosface") for bb in ("a", "b") for seed in (0, 1)
            for status in (["diverged"] if (loss, bb) == ("cosface", "b") else ["finished"])]
    spec = TableSpec.from_dict(table, axes=["loss", "backbone"])
    results = results_frame(frame(rows), spec, grid="g", order={"loss": ["softmax", "cosface"], "backbone": ["a", "b"]})
    written = write_plots(results, _history(rows), tmp_path / "one")
    assert [p.name for p in written] == [f"{spec.name}.accuracy.png", f"{spec.name}.curves.png", f"{spec.name}.gifs.md"]
    again = write_plots(results, _history(rows), tmp_path / "two")
    for a, b in zip(written, again, strict=True):
        assert a.read_bytes() == b.read_bytes(), f"{a.name} differs between two exports of the same runs"


def test_no_history_means_no_curves(tmp_path):
    rows = [run_row({"loss": "softmax"}, 0, test_acc=0.9, train_acc=0.95)]
    results = results_frame(frame(rows), TableSpec(name="t", rows=("loss",)), grid="g")
    written = write_plots(results, pd.DataFrame(columns=["run_id", "metric", "step", "value"]), tmp_path)
    assert [p.name for p in written] == ["t.accuracy.png", "t.gifs.md"]


class _OneEpochClient:
    """An MLflow client whose runs each logged one embedding scatter and no GIF (a 1-epoch run with --plots)."""

    def list_artifacts(self, run_id, path):
        return [type("File", (), {"path": "plots/embeddings_epoch000.png"})()]

    def download_artifacts(self, run_id, path, dst):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        out = f"{dst}/{run_id}.png"
        plt.imsave(out, [[0.0, 1.0], [1.0, 0.0]])
        return out


def test_one_epoch_runs_with_plots_get_the_embedding_montage(tmp_path):
    rows = [run_row({"loss": loss}, 0, test_acc=0.9, train_acc=0.95) for loss in ("softmax", "cosface")]
    results = results_frame(frame(rows), TableSpec(name="t", rows=("loss",)), grid="g")
    written = write_plots(results, _history(rows), tmp_path, client=_OneEpochClient())
    assert "t.embeddings.png" in [p.name for p in written]
    assert (tmp_path / "t.embeddings.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_select_best_curves_draw_the_run_the_table_shows(tmp_path, monkeypatch):
    """A search cell's runs are sampled settings, not seeds: the curve is the one run `select: best` keeps (by the
    lowest train_loss here), not the mean of all of them."""
    from matplotlib.figure import Figure

    finals = {"lr-a": (0.9, 0.40), "lr-b": (0.6, 0.10), "lr-c": (0.8, 0.70)}  # run: (final test_acc, train_loss)
    rows = [{**run_row({"loss": "cosface"}, 0, run_id=run, test_acc=acc, train_loss=loss), "trial_key": run}
            for run, (acc, loss) in finals.items()]  # sampled settings: a trial key each
    epochs = [(run, step, acc - 0.1 * (2 - step), loss + 0.2 * (2 - step))
              for run, (acc, loss) in finals.items() for step in range(3)]
    history = pd.DataFrame([(run, "test_acc", step, acc) for run, step, acc, _ in epochs]
                           + [(run, "train_loss", step, loss) for run, step, _, loss in epochs],
                           columns=["run_id", "metric", "step", "value"])
    spec = TableSpec.from_dict({"name": "s", "rows": "loss", "columns": ["test_acc"], "select": "best",
                                "select_by": "train_loss"}, axes=["loss"])
    results = results_frame(frame(rows), spec, grid="g", order={"loss": ["cosface"]})
    drawn: list[Figure] = []
    save = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (drawn.append(fig), save(fig, *a, **k))[1])
    write_plots(results, history, tmp_path)
    curves = next(f for f in drawn if "best run by train_loss" in f.get_suptitle())
    by_title = {ax.get_title(): ax.lines[0].get_ydata().tolist() for ax in curves.axes}
    assert by_title["test_acc"] == pytest.approx([0.4, 0.5, 0.6])  # lr-b's own epochs, not the mean of three runs
    assert by_title["train_loss"] == pytest.approx([0.5, 0.3, 0.1])


def test_an_export_stopped_while_a_png_is_written_leaves_the_old_png_whole(tmp_path, monkeypatch):
    # the PNGs sit beside the README's tables and are committed; savefig stopped midway (Ctrl-C) wrote half a
    # file in their place, which `bench report --readme --check` does not look at
    from matplotlib.figure import Figure

    rows = [run_row({"loss": "softmax"}, s, test_acc=0.9, train_acc=0.95) for s in (0, 1)]
    results = results_frame(frame(rows), TableSpec(name="t", rows=("loss",)), grid="g", order={"loss": ["softmax"]})
    written = write_plots(results, _history(rows), tmp_path)
    before = {p.name: p.read_bytes() for p in written}

    def interrupted(self, fname, *args, **kwargs):
        with open(fname, "wb") as f:
            f.write(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_plots(results, _history(rows), tmp_path)
    assert {p.name: p.read_bytes() for p in written} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before)  # no temporary file left
