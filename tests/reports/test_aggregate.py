"""Aggregation checked against numbers computed in the test, from runs logged to a temporary MLflow store the
way `bench run` logs them: means, sample std, the 95% t interval, seed counts, diverged/pruned/failed cells,
duplicates of a trial counted once, final vs best epoch."""

from __future__ import annotations

import math
import statistics

import pandas as pd
import pytest
from scipy import stats

from reports.markdown import render_results
from reports.results import load_results, results_frame, write_results
from reports.runs import latest_runs, load_runs, load_study
from reports.spec import ReportError, TableSpec
from reports.tables import aggregate, best_run

from .conftest import frame, log_trials, run_row


def _epochs(test_accs, train_losses=None):
    train_losses = train_losses or [1.0 / (i + 1) for i in range(len(test_accs))]
    return [{"test_acc": a, "train_acc": min(1.0, a + 0.01), "train_loss": lo}
            for a, lo in zip(test_accs, train_losses, strict=True)]


SOFTMAX = {0: [0.50, 0.90, 0.80], 1: [0.55, 0.85, 0.84], 2: [0.60, 0.88, 0.86]}
COSFACE = {0: [0.70, 0.93], 1: [0.72, 0.95]}
COSFACE_OLD_SEED0 = [0.10, 0.20]  # an earlier run of the same trial: must not count


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    L = lambda name: {"loss": name}  # noqa: E731
    trials = [(L("softmax"), s, "finished", _epochs(v, [1.0, 0.5, 0.7]), {"loss": "softmax"})
              for s, v in SOFTMAX.items()]
    trials.append((L("cosface"), 0, "finished", _epochs(COSFACE_OLD_SEED0), {"loss": "cosface"}))
    trials += [(L("cosface"), s, "finished", _epochs(v), {"loss": "cosface"}) for s, v in COSFACE.items()]
    trials += [(L("cosface"), 2, "diverged", _epochs([0.3]), {"loss": "cosface"}),
               (L("arcface"), 0, "diverged", _epochs([0.2]), {"loss": "arcface"}),
               (L("arcface"), 1, "diverged", [], {"loss": "arcface"}),
               (L("sphereface"), 0, "pruned", _epochs([0.4]), {"loss": "sphereface"}),
               (L("sphereface"), 1, "pruned", _epochs([0.41]), {"loss": "sphereface"}),
               (L("norm"), 0, "failed", [], {"loss": "norm"}),
               (L("adacos"), 0, "running", _epochs([0.6]), {"loss": "adacos"})]
    uri = f"sqlite:///{tmp_path_factory.mktemp('agg') / 'mlflow.db'}"
    return log_trials(uri, "agg", trials)


def _expected(values):
    n = len(values)
    mean = statistics.fmean(values)
    std = statistics.stdev(values)
    lo, hi = stats.t.interval(0.95, n - 1, loc=mean, scale=std / math.sqrt(n))
    return n, mean, std, lo, hi


def test_load_runs_is_one_row_per_child_run_with_final_and_best(study):
    runs = load_runs("agg", study[0].tracking_uri)
    assert len(runs) == 13  # every child run, the superseded duplicate included; never the parent
    assert set(runs["run_id"]) == set(study[1])
    assert runs["seed"].dtype.kind == "i"
    softmax0 = runs[(runs["label.loss"] == "softmax") & (runs["seed"] == 0)].iloc[0]
    assert softmax0["test_acc"] == pytest.approx(0.80)  # last epoch
    assert softmax0["best.test_acc"] == pytest.approx(0.90)  # best epoch: max for an accuracy
    assert softmax0["train_loss"] == pytest.approx(0.7)
    assert softmax0["best.train_loss"] == pytest.approx(0.5)  # best epoch: min for a loss
    assert softmax0["param.loss"] == "softmax" and softmax0["git_commit"] and softmax0["device_name"]
    assert softmax0["date"].count("-") == 2
    assert set(runs["status"]) == {"finished", "diverged", "pruned", "failed", "running"}
    assert len(latest_runs(runs)) == 12  # the old cosface seed 0 run dropped


def test_means_std_ci_and_counts_match_the_test_computation(study):
    runs = load_runs("agg", study[0].tracking_uri)
    spec = TableSpec(name="t", rows=("loss",), metrics=("test_acc",), ci=True)
    order = {"loss": ["softmax", "cosface", "arcface", "sphereface", "norm", "adacos", "never-ran"]}
    table = aggregate(runs, spec, order=order)
    assert table.row_keys == [(x,) for x in order["loss"]]  # grid order, a cell that never ran included

    n, mean, std, lo, hi = _expected([v[-1] for v in SOFTMAX.values()])
    cell = table.cell("softmax", "test_acc")
    assert cell.n == n == 3 and cell.counts == {"finished": 3}
    assert cell.mean == pytest.approx(mean, abs=1e-12)
    assert cell.std == pytest.approx(std, abs=1e-12)
    assert cell.ci == pytest.approx((lo, hi), abs=1e-12)
    assert cell.text(digits=4, ci=True) == f"{mean:.4f} ± {std:.4f} [{lo:.4f}, {hi:.4f}] (n=3)"

    # cosface: the rerun of seed 0 replaces the older run, the diverged seed is counted beside the mean
    n, mean, std, lo, hi = _expected([v[-1] for v in COSFACE.values()])
    cell = table.cell("cosface", "test_acc")
    assert cell.n == n == 2 and cell.counts == {"finished": 2, "diverged": 1}
    assert cell.mean == pytest.approx(mean, abs=1e-12) and cell.std == pytest.approx(std, abs=1e-12)
    assert cell.text(digits=4, ci=True) == f"{mean:.4f} ± {std:.4f} [{lo:.4f}, {hi:.4f}] (n=2, 1 diverged)"

    assert table.cell("arcface", "test_acc").text() == "diverged"
    assert table.cell("sphereface", "test_acc").text() == "pruned"
    assert table.cell("norm", "test_acc").text() == "failed"
    assert table.cell("adacos", "test_acc").text() == "running"
    assert table.cell("never-ran", "test_acc").text() == "-"
    assert table.counts == {"finished": 5, "diverged": 3, "pruned": 2, "failed": 1, "running": 1}
    assert table.summary() == "Not in the means: 3 diverged, 2 pruned, 1 failed, 1 running."
    markdown = table.to_markdown()
    assert f"**{statistics.fmean([v[-1] for v in COSFACE.values()]):.4f}**" in markdown  # the best row in bold


def test_best_epoch_source(study):
    runs = load_runs("agg", study[0].tracking_uri)
    table = aggregate(runs, TableSpec(name="t", rows=("loss",), metrics=("test_acc", "train_loss"),
                                      metric_source="best"))
    cell = table.cell("softmax", "test_acc")
    assert cell.mean == pytest.approx(statistics.fmean(max(v) for v in SOFTMAX.values()), abs=1e-12)
    assert table.cell("softmax", "train_loss").mean == pytest.approx(0.5)


def test_history_is_long_format(study):
    result = load_study("agg", study[0].tracking_uri)
    hist = result.history
    one = hist[(hist["metric"] == "test_acc") & hist["run_id"].isin(result.runs.query("seed == 1 and "
                                                                                     "`label.loss` == 'softmax'")
                                                                      ["run_id"])]
    assert sorted(one["step"]) == [0, 1, 2] and sorted(one["value"]) == pytest.approx(sorted(SOFTMAX[1]))
    assert result.parent_run_id and result.experiment_id


def test_unknown_axis_or_metric_is_an_error_naming_what_exists(study):
    runs = load_runs("agg", study[0].tracking_uri)
    with pytest.raises(ReportError, match="no axis 'backbone'.*their axes: loss"):
        aggregate(runs, TableSpec(name="t", rows=("backbone",)))
    with pytest.raises(ReportError, match="no metric 'lfw_acc'.*test_acc"):
        aggregate(runs, TableSpec(name="t", rows=("loss",), metrics=("lfw_acc",)))


def test_missing_study_gives_an_empty_frame(study):
    assert load_runs("nope", study[0].tracking_uri).empty


def test_a_pipe_in_a_transposed_tables_first_column_is_escaped():
    # transposed, the metric headers (and a matrix's column labels) are the first column: a pipe in one must be
    # escaped as in the header row, or the line gets one cell too many
    runs = frame([run_row({"loss": "a"}, 0, test_acc=0.9), run_row({"loss": "b"}, 0, test_acc=0.8)])
    spec = TableSpec(name="t", rows=("loss",), metrics=("test_acc",), transpose=True, headers={"test_acc": "acc | %"})
    lines = aggregate(runs, spec).to_markdown().splitlines()
    assert lines[2].startswith("| acc \\| %")
    assert {line.replace("\\|", "").count("|") for line in lines} == {4}  # 3 columns on every line


def test_select_best_by_a_loss_keeps_the_lowest_loss():
    # select: best ranks a loss by min (its best, as for best.<metric>), not by the table's default bold: max
    rows = [run_row({"loss": "a"}, 0, train_loss=0.1, test_acc=0.9, run_id="low"),
            run_row({"loss": "a"}, 0, train_loss=2.0, test_acc=0.5, run_id="high")]
    for i, row in enumerate(rows):
        row["trial_key"] = f"sampled-{i}"
    spec = TableSpec(name="t", rows=("loss",), metrics=("test_acc",), select="best", select_by="train_loss")
    assert aggregate(frame(rows), spec).cell("a", "test_acc").values == (0.9,)
    # an explicit bold entry still decides
    spec = TableSpec(name="t", rows=("loss",), metrics=("test_acc",), select="best", select_by="train_loss",
                     bold={"train_loss": "max"})
    assert aggregate(frame(rows), spec).cell("a", "test_acc").values == (0.5,)


def test_select_best_skips_non_finite_values_of_the_ranking_metric():
    # inf is no value, as NaN (aggregate, format_mean_std): an overflowed run used to win the cell by max (or -inf by
    # min), then its value was dropped and the cell showed n/a instead of the best finite run
    rows = [run_row({"loss": "a"}, 0, test_acc=math.inf, train_loss=-math.inf, run_id="a-inf"),
            run_row({"loss": "a"}, 0, test_acc=0.7, train_loss=0.3, run_id="a-low"),
            run_row({"loss": "a"}, 0, test_acc=0.8, train_loss=0.2, run_id="a-high"),
            run_row({"loss": "b"}, 0, test_acc=math.nan, train_loss=math.inf, run_id="b-nan"),
            run_row({"loss": "b"}, 0, test_acc=-math.inf, train_loss=math.nan, run_id="b-inf")]
    for i, row in enumerate(rows):
        row["trial_key"] = f"sampled-{i}"
    by_acc = aggregate(frame(rows), TableSpec(name="t", rows=("loss",), metrics=("test_acc",), select="best"))
    assert by_acc.cell("a", "test_acc").values == (0.8,) and by_acc.cell("a", "test_acc").pool == 3
    assert by_acc.cell("b", "test_acc").values == () and by_acc.cell("b", "test_acc").pool == 2
    assert "| a      | 0.8000 (n=1, best of 3) |" in by_acc.to_markdown()
    by_loss = TableSpec(name="t", rows=("loss",), metrics=("test_acc",), select="best", select_by="train_loss")
    assert aggregate(frame(rows), by_loss).cell("a", "test_acc").values == (0.8,)  # min of 0.3, 0.2; not -inf
    assert best_run(frame(rows[3:]), by_loss, "train_loss").empty  # no finite value: no run


def test_cells_with_the_same_params_keep_their_runs_in_the_results_frame_and_csv(tmp_path):
    # two cells whose params are equal (the same trial key) but whose labels differ are two cells: the results
    # frame and its CSV have no joined `label` column, and re-de-duplicating by key and seed alone emptied one
    rows = [run_row({"loss": label}, seed, test_acc=acc + 0.01 * seed)
            for label, acc in (("baseline", 0.9), ("baseline-again", 0.8)) for seed in (0, 1)]
    for row in rows:
        row["trial_key"] = f"same-params-{row['seed']}"
    spec = TableSpec(name="t", rows=("loss",), metrics=("test_acc",))
    results = results_frame(frame(rows), spec, grid="g", order={"loss": ["baseline", "baseline-again"]})
    back = load_results(write_results(results, tmp_path))
    for table in (aggregate(results.frame, spec, order=results.order), aggregate(back.frame, back.spec,
                                                                                 order=back.order)):
        assert table.cell("baseline", "test_acc").values == (0.9, 0.91)
        assert table.cell("baseline-again", "test_acc").values == (0.8, 0.81)


def test_a_where_label_no_run_or_cell_has_is_an_error_naming_the_labels():
    # a typo in where used to filter every run out and print a table of "-" without a word
    runs = frame([run_row({"loss": "a", "backbone": "resnet18"}, 0, test_acc=0.9)])
    spec = TableSpec(name="t", rows=("loss",), metrics=("test_acc",), where={"backbone": ("resnet81",)})
    with pytest.raises(ReportError, match=r"where\.backbone: .*'resnet81' \(did you mean 'resnet18'\?\); labels: "
                                          r"resnet18$"):
        aggregate(runs, spec)
    # a label of the grid that has not run yet is no typo: its cells show "-"
    table = aggregate(runs, spec, order={"loss": ["a"], "backbone": ["resnet18", "resnet81"]})
    assert table.to_markdown().splitlines()[2] == "| a      | -          |"


def test_a_pattern_does_not_take_the_results_frames_provenance_columns_for_metrics(tmp_path):
    # the results frame (what bench report and the README render) carries grid, dataset and epochs beside the
    # metrics: a pattern matching one of those names showed it as a column ("epochs": 20.0000 ± 0.0000)
    runs = frame([run_row({"loss": "a"}, seed, test_acc=0.9, eer=0.1) for seed in (0, 1)])
    spec = TableSpec(name="t", rows=("loss",), pattern="e*")
    results = results_frame(runs, spec, grid="g")
    assert results.metrics == ["eer"]
    assert aggregate(results.frame, spec).col_keys == ["eer"]
    back = load_results(write_results(results, tmp_path))
    assert aggregate(back.frame, back.spec).col_keys == ["eer"]


def test_best_epoch_skips_a_nan_epoch_wherever_it_falls(tmp_path):
    """max(nan, 0.6, 0.7) is nan in Python (every comparison with nan is false), so a first NaN epoch (a
    verification metric of a degenerate embedding, say) made the best epoch NaN; a NaN-only history stays NaN."""
    nan = math.nan
    epochs = [{"test_acc": nan, "train_loss": nan, "lfw_auc": nan},
              {"test_acc": 0.6, "train_loss": 0.9, "lfw_auc": nan},
              {"test_acc": 0.7, "train_loss": 0.8, "lfw_auc": nan}]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log_trials(uri, "nanbest", [({"loss": "softmax"}, 0, "finished", epochs, {"loss": "softmax"})])
    row = load_runs("nanbest", uri).iloc[0]
    assert row["best.test_acc"] == pytest.approx(0.7)
    assert row["best.train_loss"] == pytest.approx(0.8)
    assert math.isnan(row["best.lfw_auc"])


def test_by_default_a_loss_column_bolds_its_lowest_mean_and_an_accuracy_its_highest():
    rows = [run_row({"loss": loss}, seed, test_acc=acc + 0.01 * seed, train_loss=lo + 0.01 * seed)
            for loss, acc, lo in (("softmax", 0.80, 0.90), ("cosface", 0.95, 0.20)) for seed in (0, 1)]
    spec = TableSpec.from_dict({"name": "t", "rows": "loss", "columns": ["test_acc", "train_loss"]}, axes=["loss"])
    markdown = aggregate(frame(rows), spec).to_markdown()
    assert "**0.9550**" in markdown and "**0.2050**" in markdown  # cosface: higher accuracy, lower loss
    assert "**0.8050**" not in markdown and "**0.9050**" not in markdown


def test_a_finished_run_without_a_finite_value_is_named_under_the_mean():
    """Its NaN stays out of the mean (numpy's nanmean here), and the note says one run is missing from n."""
    import numpy as np

    values = [0.81, 0.83, math.nan]
    rows = [run_row({"loss": "cosface"}, seed, test_acc=v, train_acc=0.9) for seed, v in enumerate(values)]
    table = aggregate(frame(rows), TableSpec(name="t", rows=("loss",), metrics=("test_acc", "train_acc")))
    assert table.cell("cosface", "test_acc").mean == pytest.approx(np.nanmean(values))
    assert table.cell("cosface", "test_acc").text().endswith("(n=2, 1 without a value)")
    assert table.cell("cosface", "train_acc").text().endswith("(n=3)")


def test_a_mean_row_over_fewer_rows_says_how_many():
    # B has no class_0 value: its Mean covers 2 of the 3 classes and must say so, or 0.950 reads as better than
    # A's 0.800 over all three; A's mean (0.5 + 0.9 + 1.0) / 3 is complete and unmarked
    rows = [run_row({"model": "A"}, 0, **{"test_acc.class_0": 0.5, "test_acc.class_1": 0.9, "test_acc.class_2": 1.0}),
            run_row({"model": "B"}, 0, **{"test_acc.class_1": 0.9, "test_acc.class_2": 1.0})]
    spec = TableSpec(name="t", rows=("model",), pattern="test_acc.class_*", transpose=True, mean_row=True, digits=3)
    headers, body = aggregate(frame(rows), spec).layout()
    assert body[-1] == ["Mean", "0.800", "0.950 (2 of 3)"]
    # a row of the grid that never ran ("-") counts as a row without a value too
    spec = TableSpec(name="t", rows=("model",), metrics=("test_acc.class_1",), mean_row=True, digits=3)
    _, body = aggregate(frame(rows), spec, order={"model": ["A", "B", "C"]}).layout()
    assert body[-1] == ["Mean", "0.900 (2 of 3)"]


_PUNCTUATION = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


def _gfm_cells(line: str) -> list[str]:
    """A table row split as cmark-gfm splits it: a backslash and the punctuation after it are one unit, every
    other pipe separates cells; each cell with its escaped pipes unescaped, then trimmed."""
    cells, cur, i = [], "", 0
    while i < len(line):
        if line[i] == "\\" and i + 1 < len(line) and line[i + 1] in _PUNCTUATION:
            cur += line[i:i + 2]
            i += 2
            continue
        if line[i] == "|":
            cells.append(cur)
            cur = ""
        else:
            cur += line[i]
        i += 1
    cells.append(cur)
    return [c.replace("\\|", "|").strip() for c in cells[1:-1]]  # the outer pipes leave empty ends


def _unescaped(cell: str) -> tuple[str, str]:
    """``(text, markup)``: the cell as CommonMark shows it when nothing in it is markup (a backslash before
    punctuation dropped), and the characters left unescaped that could be markup."""
    text, markup, i = "", "", 0
    while i < len(cell):
        if cell[i] == "\\" and i + 1 < len(cell) and cell[i + 1] in _PUNCTUATION:
            text += cell[i + 1]
            i += 2
            continue
        text += cell[i]
        markup += cell[i] if cell[i] in "*_`~<[" else ""
        i += 1
    return text, markup


def test_labels_and_headers_render_as_their_text_in_one_table_row():
    # labels and headers come from the grid YAML as plain text: a newline must not split the row, a backslash
    # before a pipe must not unescape it (one cell too many), and pairs of * _ ` ~, a tag or a link must not
    # turn into italics, code, strike-through, HTML or a link; a lone * (cos(m1*theta + m2)) and _ inside a
    # word (class_1_acc) are left as they are
    labels = ["two\nlines", "m1*theta*m2", "cos(m1*theta + m2)", "a<b>c", "`x` | y", "class_1_acc", "_a_",
              "[a](b)", "x\\|y", "~~old~~", "a&amp;b", "x\\"]
    rows = [run_row({"loss": label}, 0, test_acc=0.9) for label in labels]
    spec = TableSpec(name="t", rows=("loss",), metrics=("test_acc",), bold="none",
                     headers={"test_acc": "acc *%*", "loss": "loss\nname"})
    lines = aggregate(frame(rows), spec, order={"loss": labels}).to_markdown().splitlines()
    assert len(lines) == 2 + len(labels)
    cells = [_gfm_cells(line) for line in lines]
    assert {len(c) for c in cells} == {2}
    shown = [_unescaped(c[0]) for c in [cells[0]] + cells[2:]]
    assert [text for text, _ in shown] == ["loss name"] + [label.replace("\n", " ") for label in labels]
    for (_, markup), label in zip(shown[1:], labels, strict=True):
        # what is left unescaped cannot pair up: at most one of each, _ only inside a word
        assert all(markup.count(c) <= 1 for c in "*`~") and "<" not in markup and "[" not in markup, (label, markup)
    assert cells[0][1] == "acc \\*%\\*"
    assert cells[4][0] == "cos(m1*theta + m2)" and cells[7][0] == "class_1_acc"  # readable labels stay as they are


def test_a_title_renders_as_one_paragraph_of_its_text():
    # a title that starts like a heading, a list or a code fence, or spans lines, stays one paragraph of its text
    rows = [run_row({"loss": "a"}, 0, train_acc=0.5, test_acc=0.25)]
    for title, expected in [("# runs per loss", "\\# runs per loss"), ("- a *b* c", "\\- a \\*b\\* c"),
                            ("```python", "\\`\\`\\`python"), ("1. first\n2. second", "1\\. first 2. second"),
                            ("plain: cos(m1*theta + m2) → LFW", "plain: cos(m1*theta + m2) → LFW")]:
        spec = TableSpec(name="t", rows=("loss",), title=title)
        text = render_results(results_frame(frame(rows), spec, grid="g", order={"loss": ["a"]}))
        assert text.split("\n\n")[0] == expected, title


def test_the_provenance_line_is_one_emphasis_of_its_text():
    # the line is *...*: a device or dataset name with a * or a pair of _ must neither end the italics early nor
    # add its own; what markdown shows is the text itself
    rows = [run_row({"loss": "a"}, 0, test_acc=0.9, **{"param.dataset": "set_a_*b", "device_name": "GPU *x* _y_"})]
    spec = TableSpec(name="t", rows=("loss",), metrics=("test_acc",))
    line = render_results(results_frame(frame(rows), spec, grid="g", order={"loss": ["a"]})).split("\n\n")[-1]
    assert line.startswith("*") and line.endswith("*")
    text, markup = _unescaped(line[1:-1])
    assert "set_a_*b" in text and "GPU *x* _y_" in text, text
    assert "*" not in markup and markup.count("_") <= 1, markup


def test_an_export_interrupted_between_the_csv_and_its_meta_is_refused(tmp_path, monkeypatch):
    # write_results replaces the CSV, then the meta: stopped between the two, a new CSV (two metrics, three runs)
    # sits beside the old meta (one metric, two runs); load_results must refuse the pair, not table the new runs
    # with the old spec
    from pathlib import Path

    old_rows = [run_row({"loss": "a"}, s, test_acc=0.9) for s in (0, 1)]
    old = results_frame(frame(old_rows), TableSpec(name="t", rows=("loss",), metrics=("test_acc",)), grid="g")
    csv_path = write_results(old, tmp_path)
    old_meta = csv_path.with_name("t.meta.json").read_text()
    assert load_results(csv_path).frame["test_acc"].tolist() == [0.9, 0.9]

    new_rows = [run_row({"loss": "a"}, s, test_acc=0.8, train_acc=0.95) for s in (0, 1, 2)]
    new = results_frame(frame(new_rows), TableSpec(name="t", rows=("loss",), metrics=("train_acc", "test_acc")),
                        grid="g")
    replace = Path.replace

    def interrupted(self, target):
        if str(target).endswith(".meta.json"):
            raise KeyboardInterrupt
        return replace(self, target)

    monkeypatch.setattr(Path, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_results(new, tmp_path)
    monkeypatch.undo()
    assert csv_path.with_name("t.meta.json").read_text() == old_meta  # the old meta, beside the new CSV
    assert len(pd.read_csv(csv_path)) == 3 and not list(tmp_path.glob("g/*.tmp"))
    with pytest.raises(ReportError, match=r"t\.csv is not the CSV that t\.meta\.json was written with.*"
                                          r"bench report --grid g --export"):
        load_results(csv_path)
    # an export that completes makes a consistent pair again
    assert len(load_results(write_results(new, tmp_path)).frame) == 3


def test_rows_no_grid_order_lists_follow_in_numeric_order_of_their_values():
    """Labels of runs the grid no longer has (or a results CSV read without an order) follow the grid's own, sorted
    as numbers: a margin axis 0.35, 0.4, 0.5, where digit runs put 0.4 and 0.5 before 0.35."""
    margins = ["0.5", "0.35", "0.4", "0.25"]
    rows = [run_row({"m": m}, 0, test_acc=0.9) for m in margins]
    table = aggregate(frame(rows), TableSpec(name="t", rows=("m",), metrics=("test_acc",)), order={"m": ["0.5"]})
    assert [key[0] for key in table.row_keys] == ["0.5"] + sorted(margins[1:], key=float)


def test_an_infinite_value_is_a_run_without_a_finite_value_as_nan_is():
    """numpy's mean and std (ddof=1) of the finite values; the infinite one named under the mean, as the module
    says, where it made the cell 'inf ± nan'."""
    import numpy as np

    values = [0.52, 0.47, math.inf, 0.61]
    rows = [run_row({"loss": "cosface"}, seed, test_acc=0.9, train_loss=v) for seed, v in enumerate(values)]
    table = aggregate(frame(rows), TableSpec(name="t", rows=("loss",), metrics=("train_loss",)))
    finite = np.array([v for v in values if np.isfinite(v)], dtype=np.float64)
    cell = table.cell("cosface", "train_loss")
    assert (cell.mean, cell.std) == (pytest.approx(finite.mean(), abs=1e-15), pytest.approx(finite.std(ddof=1)))
    assert cell.text() == f"{finite.mean():.4f} ± {finite.std(ddof=1):.4f} (n=3, 1 without a value)"


def test_a_percent_rounds_the_mean_itself_as_its_fraction_does():
    """``percent: true`` shows the fraction's digits moved two places: the mean of 0.0007 and 0.0008 (0.00075 as a
    double, a hair above) is 0.0008 as a fraction and must be 0.08 %, where rounding the product 0.075 (a double a
    hair below) gave 0.07. Checked on every 5-decimal tie 0.00005..0.99995 against Python's rounding of the
    fraction."""
    from decimal import Decimal

    from reports.tables import _fmt

    ties = [float(f"0.{k:05d}") for k in range(5, 100000, 10)]
    shown = [_fmt(v, 2, True) for v in ties]
    assert shown == [f"{Decimal(f'{v:.4f}') * 100:.2f}" for v in ties]
    rows = [run_row({"loss": "a"}, seed, test_acc=v) for seed, v in enumerate([0.0007, 0.0008])]
    table = aggregate(frame(rows), TableSpec(name="t", rows=("loss",), metrics=("test_acc",), percent=True, digits=2))
    assert table.cell("a", "test_acc").text(digits=2, percent=True).startswith("0.08 ± ")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_random_matrix_with_percent_ci_bold_and_mean_row_equals_numpy_and_scipy(seed):
    """Every cell of a matrix of random run sets (0-4 runs a cell: finished, some without a value, diverged,
    failed) rebuilt from the module's description with numpy (mean, std ddof=1 in float64), scipy's t interval,
    and the mean's exact decimal value x 100 rounded half-even."""
    from decimal import ROUND_HALF_EVEN, Decimal, localcontext

    import numpy as np

    rng = np.random.default_rng(seed)
    losses, dims = ["softmax", "cosface", "arcface", "sphereface"], ["2", "3", "512"]
    rows, cells = [], {}
    for loss in losses:
        for dim in dims:
            runs = [(str(rng.choice(["finished"] * 5 + ["diverged", "failed"])),
                     math.nan if rng.random() < 0.15 else float(rng.uniform(0.9, 1.0)))
                    for _ in range(int(rng.integers(0, 5)))]
            cells[loss, dim] = runs
            rows += [run_row({"loss": loss, "dim": dim}, s, status, test_acc=v) for s, (status, v) in enumerate(runs)]

    def pct(x: float) -> str:
        with localcontext() as ctx:
            ctx.prec = 800
            return str((Decimal(x) * 100).quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN))

    def finite(runs):
        return np.array([v for status, v in runs if status == "finished" and np.isfinite(v)], dtype=np.float64)

    shown_means = {key: float(pct(finite(r).mean())) for key, r in cells.items() if finite(r).size}
    best = {dim: max((m for (_, d), m in shown_means.items() if d == dim), default=None) for dim in dims}

    def expected(key) -> str:
        runs, values = cells[key], finite(cells[key])
        others = [(s, sum(st == s for st, _ in runs)) for s in ("diverged", "failed")]
        others = [(s, k) for s, k in others if k]
        if not runs:
            return "-"
        listed = ", ".join(f"{k} {s}" for s, k in others)
        if not values.size and any(st == "finished" for st, _ in runs):
            return "n/a" + (f" ({listed})" if others else "")
        if not values.size:
            return others[0][0] if len(others) == 1 else listed
        mean = pct(values.mean())
        text = f"**{mean}**" if sum(1 for (_, d) in shown_means if d == key[1]) >= 2 and \
            float(mean) == best[key[1]] else mean
        if values.size >= 2:
            std = values.std(ddof=1)
            lo, hi = stats.t.interval(0.95, values.size - 1, loc=values.mean(), scale=std / math.sqrt(values.size))
            text += f" ± {pct(std)} [{pct(lo)}, {pct(hi)}]"
        missing = sum(st == "finished" for st, _ in runs) - values.size
        notes = [f"n={values.size}"] + [f"{k} {s}" for s, k in others] + \
            ([f"{missing} without a value"] if missing else [])
        return f"{text} ({', '.join(notes)})"

    spec = TableSpec(name="t", rows=("loss",), column_axis="dim", metric="test_acc", ci=True, percent=True, digits=2,
                     mean_row=True)
    headers, body = aggregate(frame(rows), spec, order={"loss": losses, "dim": dims}).layout()
    assert headers == ["loss", *dims]
    assert [row[1:] for row in body[:-1]] == [[expected((loss, dim)) for dim in dims] for loss in losses]
    mean_row = ["Mean"]
    for dim in dims:
        means = [finite(cells[loss, dim]).mean() for loss in losses if finite(cells[loss, dim]).size]
        text = pct(np.mean(means)) if means else "-"
        mean_row.append(text + (f" ({len(means)} of {len(losses)})" if means and len(means) < len(losses) else ""))
    assert body[-1] == mean_row


def test_a_cell_of_finished_runs_without_a_value_beside_a_diverged_one_does_not_read_all_diverged():
    """"diverged" alone says every run of the cell diverged; here one finished without a value (NaN), so the cell
    is "n/a" (no value) and names the diverged run beside it."""
    rows = [run_row({"loss": "a"}, 0, test_acc=math.nan), run_row({"loss": "a"}, 1, "diverged", test_acc=math.nan),
            run_row({"loss": "b"}, 0, "diverged"), run_row({"loss": "b"}, 1, "failed")]
    table = aggregate(frame(rows), TableSpec(name="t", rows=("loss",), metrics=("test_acc",)))
    assert table.cell("a", "test_acc").text() == "n/a (1 diverged)"
    assert table.cell("b", "test_acc").text() == "1 diverged, 1 failed"
