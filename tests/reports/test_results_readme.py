"""bench report end to end: MLflow runs -> results CSVs (+ plots logged to the parent run) -> README blocks
rebuilt from the CSVs alone; --check passes on a fresh README and fails with a diff after a one-digit edit."""

from __future__ import annotations

import json
import math
import shutil

import pandas as pd
import pytest

from bench.cli import main
from reports.markdown import render_results
from reports.readme import splice
from reports.results import find_results, load_results, results_frame, write_results
from reports.spec import ReportError, TableSpec

from .conftest import frame, log_trials, run_row

GRID = """
name: rep
base: {dataset: digits, backbone: lenet++, embedding_dim: 2, epochs: 2}
grid:
  loss:
    - {label: softmax, loss: softmax}
    - {label: cosface, loss: {name: cosface, s: 10.0, m: 0.1}}
seeds: [0, 1]
report:
  tables:
    - name: losses
      rows: loss
      columns: [train_acc, test_acc]
      ci: true
    - name: best
      rows: loss
      columns: [test_acc]
      metric_source: best
"""
README = """# Project

Some text.

<!-- bench:table rep/losses -->
stale content
<!-- bench:end -->

More text; markers in code are documentation, not blocks:

```
<!-- bench:table NAME -->
<!-- bench:end -->
```

<!-- bench:table best -->
<!-- bench:end -->
"""


def _epochs(values):
    return [{"train_acc": v + 0.01, "test_acc": v, "train_loss": 1 - v} for v in values]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Runs of grid ``rep`` in <dir>/mlflow.db, exported with ``bench report --grid rep.yaml --export`` (once per
    module: each test gets a copy, see `reported`)."""
    import contextlib
    import io

    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("exported")
    (root / "rep.yaml").write_text(GRID)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    L = lambda name: {"loss": name}  # noqa: E731
    softmax = {"loss": "softmax", "epochs": 2}  # the grid's trials, as `bench run` would log them
    cosface = {"loss": "cosface", "loss_params": {"s": 10.0, "m": 0.1}, "epochs": 2}
    _, ids = log_trials(uri, "rep", [
        (L("softmax"), 0, "finished", _epochs([0.51, 0.91234567891]), softmax),
        (L("softmax"), 1, "finished", _epochs([0.52, 0.9]), softmax),
        (L("cosface"), 0, "finished", _epochs([0.6, 0.95]), cosface),
        (L("cosface"), 1, "diverged", _epochs([0.2]), cosface),
    ])
    gif = root / "embeddings.gif"
    gif.write_bytes(b"GIF89a")  # stands in for the trial's embedding animation
    MlflowClient(uri).log_artifact(ids[0], str(gif), "plots")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["report", "--grid", str(root / "rep.yaml"), "--export", "--tracking-uri", uri,
                     "--results-dir", str(root / "reports" / "results")])
    assert code == 0
    return root, ids, out.getvalue()


@pytest.fixture
def reported(exported, tmp_path, monkeypatch):
    """A copy of `exported` as the working directory: ``(dir, run_ids, printed markdown)``."""
    root, ids, out = exported
    work = tmp_path / "work"
    shutil.copytree(root, work)
    monkeypatch.chdir(work)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return work, ids, out


def test_export_writes_sorted_csv_with_run_ids_and_provenance(reported):
    root, ids, _ = reported
    csv = root / "reports" / "results" / "rep" / "losses.csv"
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    assert sorted(frame["run_id"]) == sorted(ids)  # every run the table counts, by MLflow run id
    # grid order (softmax before cosface), then seed
    assert list(zip(frame["label.loss"], frame["seed"], strict=True)) == [
        ("softmax", "0"), ("softmax", "1"), ("cosface", "0"), ("cosface", "1")]
    assert list(frame["status"]) == ["finished", "finished", "finished", "diverged"]
    for col in ("grid", "git_commit", "device_name", "dataset", "epochs", "date"):
        assert col in frame.columns and frame[col].iloc[0] != "", col
    assert frame["grid"].iloc[0] == "rep" and frame["dataset"].iloc[0] == "digits"
    assert float(frame["test_acc"].iloc[0]) == 0.91234567891  # shortest round-trip decimals, exact
    meta = json.loads((csv.with_name("losses.meta.json")).read_text())
    assert meta["order"]["loss"] == ["softmax", "cosface"] and meta["table"]["ci"] is True
    best = pd.read_csv(csv.with_name("best.csv"))
    assert "best.test_acc" in best.columns and "train_acc" not in best.columns


def test_tables_from_csv_alone_equal_the_tables_from_mlflow(reported):
    root, _, out = reported
    (root / "mlflow.db").unlink()  # no MLflow store any more
    shutil.rmtree(root / "mlartifacts", ignore_errors=True)
    for name in ("losses", "best"):
        from_csv = render_results(load_results(root / "reports" / "results" / "rep" / f"{name}.csv"))
        assert f"### rep/{name}\n\n{from_csv}" in out
    assert "(n=1, 1 diverged)" in out


def client_uri_root(root, run_id):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{root / 'mlflow.db'}").get_run(run_id).info.artifact_uri


def test_plots_are_written_and_logged_to_the_parent_run(reported):
    from mlflow.tracking import MlflowClient

    root, ids, _ = reported
    folder = root / "reports" / "results" / "rep"
    for suffix in ("accuracy.png", "curves.png", "gifs.md"):
        assert (folder / f"losses.{suffix}").stat().st_size > 0
    links = (folder / "losses.gifs.md").read_text()
    assert all(run_id in links for run_id in ids)
    gif_uri = f"{client_uri_root(root, ids[0])}/plots/embeddings.gif"
    assert f"- softmax seed=0 (finished): [embeddings.gif]({gif_uri})" in links
    assert "- softmax seed=1 (finished): no GIF" in links
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    parent = client.get_run(client.get_run(ids[0]).data.tags["mlflow.parentRunId"])
    logged = {f.path for f in client.list_artifacts(parent.info.run_id, "reports/losses")}
    assert logged == {"reports/losses/losses.accuracy.png", "reports/losses/losses.curves.png",
                      "reports/losses/losses.gifs.md"}


def test_readme_blocks_are_rebuilt_and_check_fails_after_a_one_digit_edit(reported, capsys):
    root, ids, out = reported
    readme = root / "README.md"
    readme.write_text(README)
    assert main(["report", "--readme", "README.md", "--check"]) == 1  # stale
    capsys.readouterr()
    assert main(["report", "--readme", "README.md"]) == 0
    text = readme.read_text()
    assert "stale content" not in text and text.startswith("# Project\n\nSome text.\n")
    assert "```\n<!-- bench:table NAME -->\n<!-- bench:end -->\n```" in text  # code left alone
    assert "run ids: [reports/results/rep/losses.csv](reports/results/rep/losses.csv)" in text
    block = render_results(load_results(root / "reports" / "results" / "rep" / "losses.csv"),
                           source="reports/results/rep/losses.csv")
    assert f"<!-- bench:table rep/losses -->\n\n{block}\n\n<!-- bench:end -->\n" in text
    assert main(["report", "--readme", "README.md", "--check"]) == 0
    assert main(["report", "--readme", "README.md"]) == 0 and readme.read_text() == text  # idempotent
    capsys.readouterr()

    # one digit of one cell changed by hand: --check exits 1 and prints the diff
    mean = text.split("| softmax | ")[1].split(" ")[0]
    edited = mean[:-1] + str((int(mean[-1]) + 1) % 10)
    readme.write_text(text.replace(f"| softmax | {mean}", f"| softmax | {edited}", 1))
    assert main(["report", "--readme", "README.md", "--check"]) == 1
    captured = capsys.readouterr()
    assert f"-| softmax | {edited}" in captured.out and f"+| softmax | {mean}" in captured.out
    assert "README.md differs from the results files (out of date: rep/losses);" in captured.err  # not `best`


def test_readme_names_resolve_by_grid_or_bare_and_errors_name_the_fix(tmp_path):
    results = tmp_path / "results"
    for grid in ("a", "b"):
        (results / grid).mkdir(parents=True)
        (results / grid / "t.csv").write_text("run_id\n")
    (results / "a" / "only.csv").write_text("run_id\n")
    assert find_results("a/t", results) == results / "a" / "t.csv"
    assert find_results("only", results) == results / "a" / "only.csv"
    with pytest.raises(ReportError, match="several grids.*a/t, b/t.*<grid>/<table>"):
        find_results("t", results)
    with pytest.raises(ReportError, match="no results for table 'nope'.*available: a/only, a/t, b/t"):
        find_results("nope", results)
    with pytest.raises(ReportError, match="README.md:2: block 'a/t' is not closed"):
        splice("x\n<!-- bench:table a/t -->\nno end\n", results, source="README.md")
    with pytest.raises(ReportError, match="README.md:1: <!-- bench:end --> without"):
        splice("<!-- bench:end -->\n", results, source="README.md")
    assert splice("no blocks\n", results) == ("no blocks\n", [])


def test_report_cli_errors(reported, capsys):
    in_tmp = reported[0]
    assert main(["report"]) == 2
    assert "give --grid FILE" in capsys.readouterr().err
    assert main(["report", "--readme", "missing.md"]) == 2
    assert "missing.md not found" in capsys.readouterr().err
    (in_tmp / "empty.yaml").write_text(GRID.replace("name: rep", "name: rep-empty"))
    assert main(["report", "--grid", "empty.yaml"]) == 0  # no runs yet: says so
    assert "no runs of rep-empty yet" in capsys.readouterr().out
    assert main(["report", "--grid", "empty.yaml", "--export"]) == 1  # nothing to export is a failure
    assert main(["report", "--grid", "rep.yaml", "--table", "nope"]) == 2
    assert "no table 'nope'" in capsys.readouterr().err
    capsys.readouterr()
    (in_tmp / "bad.yaml").write_text(GRID.replace("rows: loss\n      columns: [test_acc]", "rows: los\n      "
                                                                                            "columns: [test_acc]"))
    assert main(["report", "--grid", "bad.yaml"]) == 2
    assert "report.tables[1].rows: 'los' is not an axis of the grid (did you mean 'loss'?)" in capsys.readouterr().err


def test_a_metric_the_trials_never_log_is_an_error_before_reading_the_runs(reported, capsys):
    root, _, _ = reported
    (root / "typo.yaml").write_text(GRID.replace("columns: [test_acc]", "columns: [test_accuracy]"))
    assert main(["report", "--grid", "typo.yaml"]) == 2
    assert ("typo.yaml: report.tables[1].columns[0]: no metric 'test_accuracy' in the trials of this grid (did you "
            "mean 'test_acc' or 'test_acc.class_0' or 'test_acc.class_1'?); metrics, closest first: test_acc, "
            "test_acc.class_0, ") in capsys.readouterr().err


def test_a_metric_the_runs_never_logged_is_an_error_naming_file_key_and_theirs(reported, capsys):
    # digits trials log lr, but these runs (logged by hand) have none: the same error as the grid check's, from
    # the runs' metrics, closest first
    root, _, _ = reported
    (root / "nolr.yaml").write_text(GRID.replace("columns: [test_acc]", "columns: [lr]"))
    assert main(["report", "--grid", "nolr.yaml"]) == 2
    assert ("nolr.yaml: report.tables[1].columns[0]: no metric 'lr' in the runs of rep; metrics, closest first: "
            "test_acc, train_acc, train_loss") in capsys.readouterr().err


def test_markers_in_code_blocks_stay_text_whatever_the_fence(tmp_path):
    # CommonMark: a fence closes only with the same character, at least as many, and no info string. A README
    # that shows the markers in a 4-backtick fence around a ``` one, in a ``` fence with a ```yaml line inside
    # (text, not a closing fence) or in a ~~~~ fence, keeps them as written; the real block after them is rebuilt
    results = tmp_path / "results"
    (results / "g").mkdir(parents=True)
    rows = [run_row({"loss": "a"}, 0, train_acc=0.5, test_acc=0.25)]
    write_results(results_frame(frame(rows), TableSpec(name="t", rows=("loss",), metrics=("test_acc",)), grid="g"),
                  results)
    docs = ("````markdown\n```\n<!-- bench:table g/t -->\n<!-- bench:end -->\n````\n\n"
            "```\nexample\n```yaml\n<!-- bench:table g/t -->\n<!-- bench:end -->\n```\n\n"
            "~~~~\n~~~\n<!-- bench:table g/t -->\n<!-- bench:end -->\n~~~~\n\n")
    new, names = splice(docs + "<!-- bench:table g/t -->\n<!-- bench:end -->\n", results)
    assert names == ["g/t"]
    assert new.startswith(docs) and "| a " in new[len(docs):]


def test_a_stored_header_that_names_no_column_is_an_error_before_the_readme_is_written(tmp_path, monkeypatch,
                                                                                         capsys):
    # a .meta.json from before the grid check of headers: (or edited by hand) used to show its table with
    # 'tset_acc' silently dropped; now the same message as the grid check, naming the meta file and the fix
    monkeypatch.chdir(tmp_path)
    results = tmp_path / "reports" / "results"
    rows = [run_row({"loss": "a", "dim": "2"}, 0, train_acc=0.5, test_acc=0.25),
            run_row({"loss": "a", "dim": "3"}, 0, train_acc=0.6, test_acc=0.35)]
    good = TableSpec(name="good", rows=("loss",), column_axis="dim", metric="test_acc",
                     headers={"loss": "Loss", "3": "three"})  # a matrix: its column labels, from the CSV
    bad = TableSpec(name="bad", rows=("loss", "dim"), metrics=("test_acc",), headers={"loss": "Loss"})
    for spec in (good, bad):
        write_results(results_frame(frame(rows), spec, grid="g"), results)
    meta_path = results / "g" / "bad.meta.json"  # as edited by hand (export refuses such headers)
    stored = json.loads(meta_path.read_text())
    stored["table"]["headers"] = {"tset_acc": "Test", "loss": "Loss", "dimm": "Dim"}
    meta_path.write_text(json.dumps(stored))
    readme = tmp_path / "README.md"
    text = ("<!-- bench:table g/good -->\nold\n<!-- bench:end -->\n\n"
            "<!-- bench:table g/bad -->\nold\n<!-- bench:end -->\n")
    readme.write_text(text)
    assert main(["report", "--readme", "README.md"]) == 2
    meta = "reports/results/g/bad.meta.json"  # the default results folder, relative to the README's
    assert capsys.readouterr().err == (
        f"bench report: {meta}: table.headers.tset_acc: 'tset_acc' is not a column or axis of table 'bad', so its "
        f"display name would never show (did you mean 'test_acc'?); keys it has: loss, dim, test_acc\n"
        f"{meta}: table.headers.dimm: 'dimm' is not a column or axis of table 'bad', so its display name would "
        f"never show (did you mean 'dim'?); keys it has: loss, dim, test_acc\n"
        f"fix headers: in the report section of grid 'g', export the table again (bench report --grid g --export), "
        f"then run bench report --readme again\n")
    assert readme.read_text() == text  # the good block before it is not written either
    assert main(["report", "--readme", "README.md", "--check"]) == 2
    assert "table.headers.tset_acc" in capsys.readouterr().err

    readme.write_text(text.split("\n\n")[0] + "\n")
    assert main(["report", "--readme", "README.md"]) == 0
    assert "| Loss   | 2            | three        |" in readme.read_text()


PATTERN_GRID = """
name: pat
base: {dataset: tiny-blobs, backbone: lenet++, embedding_dim: 2, epochs: 1}
grid:
  loss:
    - {label: softmax, loss: softmax}
seeds: [0]
report:
  tables:
    - name: accs
      rows: loss
      columns: [test_acc]
    - name: classes
      rows: loss
      columns: {pattern: "test_acc.class_*"}
      headers: {test_acc.class_9: Nine, loss: Loss}
"""


def test_export_refuses_a_pattern_header_the_runs_have_no_metric_for_and_writes_nothing(tmp_path, monkeypatch,
                                                                                         capsys, tiny_dataset):
    # tiny-blobs does not say what its trials log, so the grid check takes any header key the pattern matches; export
    # then stored 'test_acc.class_9' in classes.meta.json, a file `bench report --readme` refuses. Now export refuses
    # it with the same message, before any table's files (or plots) are written
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pat.yaml").write_text(PATTERN_GRID)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    history = [{"train_acc": 0.5, "test_acc": 0.4, "test_acc.class_0": 0.3, "test_acc.class_1": 0.5}]
    log_trials(uri, "pat", [({"loss": "softmax"}, 0, "finished", history, {"dataset": "tiny-blobs", "epochs": 1})])
    capsys.readouterr()
    code = main(["report", "--grid", "pat.yaml", "--export", "--tracking-uri", uri, "--results-dir", "results"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err == (
        f"bench report: {tmp_path / 'pat.yaml'}: report.tables[1].headers.test_acc.class_9: 'test_acc.class_9' is not "
        "a column or axis of table 'classes', so its display name would never show (did you mean 'test_acc.class_0'?); "
        "keys it has: loss, test_acc.class_0, test_acc.class_1\n"
        "fix headers: in the report section of grid 'pat' and run the export again: bench report --grid pat --export\n")
    assert not (tmp_path / "results").exists()  # not the good table 'accs' either, nor any plot

    spec = TableSpec(name="classes", rows=("loss",), pattern="test_acc.class_*", headers={"test_acc.class_9": "Nine"})
    table = results_frame(frame([run_row({"loss": "a"}, 0, **{"test_acc.class_0": 0.3})]), spec, grid="g")
    with pytest.raises(ReportError, match=r"^table 'classes': 'test_acc\.class_9' is not a column"):
        write_results(table, tmp_path / "direct")  # any caller, not only bench report --export
    assert not (tmp_path / "direct").exists()


def _meta_without(key):
    def edit(meta):
        del meta[key]
    return edit


def _meta_with(key, value):
    def edit(meta):
        meta[key] = value
    return edit


FIX = "fix: export the table again, which rewrites its CSV and meta: bench report --grid g --export"
META = "reports/results/g/t.meta.json"
CSV = "reports/results/g/t.csv"


@pytest.mark.parametrize("meta_text, edit, csv_edit, message", [
    ("{not json", None, None, f"{META}: not JSON (Expecting property name enclosed in double quotes: line 1 column 2 "
                              f"(char 1))\n{FIX}"),
    ("[1, 2]", None, None, f"{META}: must be a JSON object with keys schema, grid, table, metrics, value_columns, "
                           f"order, description, csv_sha256, but got [1, 2]\n{FIX}"),
    (None, _meta_with("schema", 2), None,
     f"{META}: schema: written by a newer marginbench (schema 2, this reads 1)\n{FIX}, or update this "
     "marginbench checkout to read it as it is"),
    (None, _meta_with("schema", 0), None, f"{META}: schema: written by an older marginbench (schema 0, this reads 1)"
                                          f"\n{FIX}"),
    (None, _meta_without("schema"), None,
     f"{META}: schema: missing; it holds the results files' format number, an integer\n{FIX}"),
    (None, _meta_with("schema", "1"), None,
     f"{META}: schema: must be the results files' format number, an integer, but got '1'\n{FIX}"),
    (None, _meta_with("value_columns", ["test_acc", "tst_acc"]), None,
     f"{META}: value_columns: 'tst_acc' is the value column of no metric in metrics (did you mean 'test_acc'?); "
     f"the value columns of metrics: test_acc\n{FIX}"),
    (None, lambda meta: meta.update(metrics=["test_acc", "train_acc"], order=["a"]), None,
     f"{META}: order: must be each axis's labels in grid order, a mapping of lists, but got ['a']\n"
     f"{META}: metrics: 'train_acc' has no value column in value_columns (it would be 'train_acc'); value_columns: "
     f"test_acc\n{FIX}"),
    (None, lambda meta: meta["table"].update(metric_source="best"), None,
     f"{META}: value_columns: 'test_acc' is the value column of no metric in metrics (did you mean "
     f"'best.test_acc'?); the value columns of metrics (metric_source: best): best.test_acc\n"
     f"{META}: metrics: 'test_acc' has no value column in value_columns (metric_source: best, so it would be "
     f"'best.test_acc'); value_columns: test_acc\n{FIX}"),
    (None, _meta_without("grid"), None, f"{META}: grid: missing; it holds the grid's name, a string\n{FIX}"),
    (None, _meta_without("table"), None, f"{META}: table: missing; it holds the table's spec, a mapping\n{FIX}"),
    (None, _meta_without("value_columns"), None,
     f"{META}: value_columns: missing; it holds the CSV's value columns, a list of names\n{FIX}"),
    (None, _meta_with("metrics", "test_acc"), None,
     f"{META}: metrics: must be the table's metric columns, a list of names, but got 'test_acc'\n{FIX}"),
    (None, _meta_with("order", ["a"]), None,
     f"{META}: order: must be each axis's labels in grid order, a mapping of lists, but got ['a']\n{FIX}"),
    (None, _meta_with("table", {"name": "t", "rows": "loss", "digits": "4"}), None,
     f"{META}: table.digits: must be an integer in 0..12, but got '4'\n{FIX}"),
    (None, None, lambda text: "", f"{CSV}: empty, not even a header line\n{FIX}"),
    (None, None, lambda text: text.replace("test_acc", "tst_acc"),
     f"{CSV}: no column 'test_acc', which the table of t.meta.json reads; columns it has: run_id, run_name, "
     f"label.loss, seed, status, diverged, trial_key, tst_acc, grid, dataset, epochs, device_name, git_commit, "
     f"torch_version, date\n{FIX}"),
    (None, None, lambda text: text.replace(",seed,", ",sed,"),
     f"{CSV}: no column 'seed', which the table of t.meta.json reads; columns it has: run_id, run_name, label.loss, "
     f"sed, status, diverged, trial_key, test_acc, grid, dataset, epochs, device_name, git_commit, torch_version, "
     f"date\n{FIX}"),
    (None, None, lambda text: text.replace("seed=0,b,0,", "seed=0,b,zero,"),
     f"{CSV}:3: seed: must be an integer, but got 'zero'\n{FIX}"),
], ids=["not-json", "not-object", "schema-newer", "schema-older", "no-schema", "schema-a-string",
        "value-column-of-no-metric", "metric-without-value-column-and-order", "value-columns-of-another-source",
        "no-grid", "no-table", "no-value-columns", "metrics-a-string", "order-a-list",
        "table-digits-a-string", "empty-csv", "csv-without-a-metric", "csv-without-seed", "seed-not-an-integer"])
def test_a_broken_results_file_is_an_error_naming_file_key_and_fix_and_the_readme_is_untouched(
        tmp_path, monkeypatch, capsys, meta_text, edit, csv_edit, message):
    # each of these was a traceback (KeyError, TypeError, JSONDecodeError, EmptyDataError) or, for a mistyped key or
    # a seed that is not a number, a table rebuilt from nonsense
    monkeypatch.chdir(tmp_path)
    rows = [run_row({"loss": "a"}, 0, test_acc=0.25), run_row({"loss": "b"}, 0, test_acc=0.5)]
    csv = write_results(results_frame(frame(rows), TableSpec(name="t", rows=("loss",), metrics=("test_acc",)),
                                      grid="g"), tmp_path / "reports" / "results")
    meta_path = csv.with_name("t.meta.json")
    meta = json.loads(meta_path.read_text())
    if csv_edit is not None:  # a CSV edited by hand, beside a meta from before csv_sha256 (else that check refuses it)
        del meta["csv_sha256"]
        csv.write_text(csv_edit(csv.read_text()))
    if edit is not None:
        edit(meta)
    meta_path.write_text(meta_text if meta_text is not None else json.dumps(meta))
    readme = tmp_path / "README.md"
    text = "<!-- bench:table g/t -->\nold\n<!-- bench:end -->\n"
    readme.write_text(text)
    for check in ([], ["--check"]):
        assert main(["report", "--readme", "README.md", *check]) == 2
        assert capsys.readouterr().err == f"bench report: {message}\n"
        assert readme.read_text() == text


def _hand_edited(tmp_path, rows, spec):
    """``rows`` exported under ``tmp_path/reports/results/g``, then its meta's ``csv_sha256`` dropped, as a meta from
    before the hash was kept (the CSV may then be edited by hand); the README holding the table's block: ``(csv,
    readme path, readme text)``."""
    csv = write_results(results_frame(frame(rows), spec, grid="g"), tmp_path / "reports" / "results")
    meta_path = csv.with_name(f"{spec.name}.meta.json")
    meta = json.loads(meta_path.read_text())
    del meta["csv_sha256"]
    meta_path.write_text(json.dumps(meta))
    readme = tmp_path / "README.md"
    text = f"<!-- bench:table g/{spec.name} -->\nold\n<!-- bench:end -->\n"
    readme.write_text(text)
    return csv, readme, text


def test_a_value_cell_that_is_not_a_number_is_an_error_naming_file_row_column_and_fix(tmp_path, monkeypatch, capsys):
    # a hand-edited '0.9x' or 'n/a' was read as no value, and the README showed 'n/a' for the run's cell, exit 0
    monkeypatch.chdir(tmp_path)
    rows = [run_row({"loss": "a"}, 0, run_id="ra", train_acc=0.5, test_acc=0.25),
            run_row({"loss": "b"}, 1, run_id="rb", train_acc=0.6, test_acc=0.5)]
    csv, readme, text = _hand_edited(tmp_path, rows, TableSpec(name="t", rows=("loss",),
                                                                metrics=("train_acc", "test_acc")))
    csv.write_text(csv.read_text().replace(",0.5,0.25,", ",0.5,0.9x,").replace(",0.6,0.5,", ",n/a,0.5,"))
    for check in ([], ["--check"]):
        assert main(["report", "--readme", "README.md", *check]) == 2
        assert capsys.readouterr().err == (
            f"bench report: {CSV}:2: test_acc: must be a number, or empty for a run without the metric, but got "
            f"'0.9x' (run ra, seed 0)\n"
            f"{CSV}:3: train_acc: must be a number, or empty for a run without the metric, but got 'n/a' "
            f"(run rb, seed 1)\n{FIX}\n")
        assert readme.read_text() == text

    # a CSV with 'n/a' in every value cell lists the first ten, then counts the others
    header, *lines = csv.read_text().replace(",0.5,0.9x,", ",n/a,n/a,").replace(",n/a,0.5,", ",n/a,n/a,").splitlines()
    csv.write_text("\n".join([header, *lines * 6]) + "\n")  # 12 rows, 2 bad cells each
    with pytest.raises(ReportError) as err:
        load_results(csv)
    listed = str(err.value).splitlines()
    assert len(listed) == 12 and listed[-2:] == [f"{csv}: and 14 more cells like these", FIX]


def test_an_empty_value_cell_is_a_run_without_the_metric_as_export_writes_it(tmp_path, monkeypatch):
    # export writes a metric a run never logged (NaN) as an empty cell: it stays no value, and a number written in
    # an edited CSV is read as one (inf as export writes it too)
    monkeypatch.chdir(tmp_path)
    rows = [run_row({"loss": "a"}, 0, run_id="ra", train_acc=0.5, test_acc=0.25),
            run_row({"loss": "b"}, 0, run_id="rb", train_acc=0.6)]
    csv, readme, _ = _hand_edited(tmp_path, rows, TableSpec(name="t", rows=("loss",),
                                                             metrics=("train_acc", "test_acc")))
    assert csv.read_text().splitlines()[2].split(",")[7:9] == ["0.6", ""]
    assert main(["report", "--readme", "README.md"]) == 0
    assert "| b      | **0.6000** (n=1) | n/a          |" in readme.read_text()
    csv.write_text(csv.read_text().replace(",0.5,0.25,", ",0.5, 0.375 ,").replace(",0.6,,", ",0.6,inf,"))
    table = load_results(csv)
    assert table.frame["test_acc"].tolist() == [0.375, math.inf]
    assert table.frame["test_acc"].dtype == float
