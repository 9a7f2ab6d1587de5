"""The report: section: what a valid table parses to, and one error per invalid key, naming the key and the fix."""

from __future__ import annotations

import pytest

from reports.spec import ReportError, TableSpec, default_tables, metric_direction, natural_key, parse_tables

AXES = ["loss", "backbone"]


def _one(**table):
    return TableSpec.from_dict({"name": "t", "rows": ["loss", "backbone"], **table}, axes=AXES, source="g.yaml",
                               key="report.tables[0]")


def test_defaults_are_final_train_and_test_accuracy_bold_by_each_metrics_direction():
    spec = _one()
    assert spec.metrics == ("train_acc", "test_acc") and spec.metric_source == "final"
    assert spec.bold == "auto" and spec.digits == 4 and not spec.ci and not spec.mean_row
    directions = [spec.direction(m) for m in ("test_acc", "train_loss", "lfw_eer", "lfw_acc_std")]
    assert directions == ["max", "min", "min", "min"]
    assert TableSpec.from_dict({"name": "t", "rows": AXES, "bold": "max"}).direction("train_loss") == "max"


def test_matrix_and_pattern_columns():
    matrix = TableSpec.from_dict({"name": "m", "rows": "loss", "columns": "backbone", "metric": "test_acc"}, axes=AXES)
    assert matrix.is_matrix and matrix.axes == ("loss", "backbone") and matrix.resolve_metrics([]) == ["test_acc"]
    per_class = _one(columns={"pattern": "test_acc.class_*"})
    assert per_class.resolve_metrics(["test_acc.class_10", "test_acc", "test_acc.class_2"]) == [
        "test_acc.class_2", "test_acc.class_10"]
    assert per_class.column_header("test_acc.class_10") == "class_10"


def test_spec_round_trips_through_its_dict():
    spec = _one(columns={"pattern": "x.*"}, ci=True, bold={"train_loss": "min"}, where={}, headers={"loss": "Loss"})
    assert TableSpec.from_dict(spec.to_dict(), axes=AXES) == spec


def test_select_best_ranks_by_the_first_metric_unless_told():
    assert _one(select="best").selection_metric(["test_acc", "train_acc"]) == "test_acc"
    assert _one(select="best", select_by="lfw_acc").selection_metric(["test_acc"]) == "lfw_acc"
    assert _one().selection_metric(["test_acc"]) is None


def test_where_fixes_an_axis_left_out_of_rows():
    spec = TableSpec.from_dict({"name": "t", "rows": "loss", "where": {"backbone": "lenet"}}, axes=AXES)
    assert spec.where == {"backbone": ("lenet",)}


def test_direction_of_losses_and_error_rates_is_min():
    assert metric_direction("train_loss") == "min" and metric_direction("lfw_eer") == "min"
    assert metric_direction("lfw_tar_far1e-3") == "max" and metric_direction("test_acc") == "max"
    assert metric_direction("lfw_acc_std") == "min"  # the fold spread: best.lfw_acc_std is its smallest
    assert _one(bold={"train_loss": "min"}).direction("test_acc") == "max"


def test_natural_key_orders_numbers_by_value():
    assert sorted(["c10", "c2", "c1"], key=natural_key) == ["c1", "c2", "c10"]


def test_natural_key_orders_decimal_fractions_by_value():
    # a margin axis's labels are its values as text: 0.35 < 0.4 < 0.5 as numbers, where digit runs compared 35 > 4
    labels = ["m=0.4", "m=0.35", "m=1.0", "m=0.5", "m=0.05", "resnet100", "resnet18", "class_10", "class_2"]
    expected = sorted(labels, key=lambda s: (s.rstrip("0123456789.").rstrip("="),
                                             float(s[len(s.rstrip("0123456789.")):])))
    assert sorted(labels, key=natural_key) == expected
    assert expected[:5] == ["class_2", "class_10", "m=0.05", "m=0.35", "m=0.4"]


def test_natural_key_keeps_dotted_versions_in_the_order_of_their_parts():
    # a provenance line's torch and CUDA versions: 2.9.0 < 2.10.0 < 2.14.1 part by part, not as 2.9 > 2.14
    versions = ["torch 2.14.1", "torch 2.9.0", "torch 2.10.0", "torch 2.9.0+cu128", "torch 10.0.1"]
    expected = sorted(versions, key=lambda v: (tuple(int(p) for p in v[6:].split("+")[0].split(".")), v))
    assert sorted(versions, key=natural_key) == expected
    assert sorted(["m=0.4", "torch 2.9.0", "m=0.35", "torch 2.14.1", "0.5", "1.5.2"], key=natural_key) == [
        "0.5", "1.5.2", "m=0.35", "m=0.4", "torch 2.9.0", "torch 2.14.1"]


@pytest.mark.parametrize(("table", "message"), [
    ({"rows": "loss"}, r"\.name: a name of letters"),
    ({"name": "a b", "rows": "loss"}, r"\.name: a name of letters"),
    ({"name": "t"}, r"\.rows: required"),
    ({"name": "t", "rows": "los", "where": {"backbone": "x"}}, r"\.rows: 'los' is not an axis of the grid "
                                                                r"\(did you mean 'loss'\?\)"),
    ({"name": "t", "rows": ["loss", "loss"]}, r"\.rows: an axis repeats"),
    ({"name": "t", "rows": "loss"}, r"\.rows: axis 'backbone' varies inside the table's cells.*where: "
                                    r"\{backbone: <label>\}"),
    ({"name": "t", "rows": "loss", "columns": "backbone"}, r"\.metric: columns is the axis 'backbone'"),
    ({"name": "t", "rows": "loss", "columns": "test_acc", "where": {"backbone": "x"}},
     r"\.columns: 'test_acc' is not an axis of the grid; for metric columns write a list, columns: \[test_acc\]"),
    ({"name": "t", "rows": "loss", "columns": "loss"}, r"\.columns: axis 'loss' is already in rows"),
    ({"name": "t", "rows": AXES, "columns": {"regex": "x"}}, r"\.columns: a mapping must be \{pattern:"),
    ({"name": "t", "rows": AXES, "columns": []}, r"\.columns: a list of metrics"),
    ({"name": "t", "rows": AXES, "columns": ["a", "a"]}, r"\.columns: a metric repeats"),
    ({"name": "t", "rows": AXES, "metric": "test_acc"}, r"\.metric: only for a matrix"),
    ({"name": "t", "rows": AXES, "metric_source": "last"}, r"\.metric_source: must be final or best"),
    ({"name": "t", "rows": AXES, "bold": "highest"}, r"\.bold: must be auto, max, min, none"),
    ({"name": "t", "rows": AXES, "bold": {"test_acc": "up"}}, r"\.bold: each direction must be max, min or none"),
    ({"name": "t", "rows": AXES, "digits": -1}, r"\.digits: must be an integer in 0..12"),
    ({"name": "t", "rows": AXES, "ci": "yes"}, r"\.ci: must be true or false"),
    ({"name": "t", "rows": AXES, "mean_row": 1}, r"\.mean_row: must be true or false"),
    ({"name": "t", "rows": AXES, "title": 3}, r"\.title: must be a string"),
    ({"name": "t", "rows": AXES, "headers": ["x"]}, r"\.headers: must map"),
    ({"name": "t", "rows": "loss", "where": {"backbone": []}}, r"\.where.backbone: needs at least one label"),
    ({"name": "t", "rows": AXES, "where": {"loss": "x"}}, r"\.where.loss: axis 'loss' is already in rows"),
    ({"name": "t", "rows": AXES, "select": "top"}, r"\.select: must be all or best"),
    ({"name": "t", "rows": AXES, "select_by": "test_acc"}, r"\.select_by: a metric name, with select: best"),
    ({"name": "t", "rows": AXES, "colums": ["x"]}, r"\.colums: unknown table key 'colums' \(did you mean "
                                                     r"'columns'\?\)"),
])
def test_invalid_table_names_the_key_and_the_fix(table, message):
    with pytest.raises(ReportError, match=r"^g\.yaml: report\.tables\[0\]" + message):
        TableSpec.from_dict(table, axes=AXES, source="g.yaml", key="report.tables[0]")


def test_a_tables_independent_problems_are_listed_together():
    # before: the table's first problem only (the unknown key colums); each other one came one round later
    with pytest.raises(ReportError) as err:
        TableSpec.from_dict({"name": "a b", "rows": "los", "colums": ["x"], "digits": -1, "ci": "yes",
                             "where": {"backbone": "nope"}}, axes=AXES, source="g.yaml", key="report.tables[0]",
                            grid_labels={"loss": ["a"], "backbone": ["x"]})
    keys = ["colums", "name", "rows", "digits", "ci", "where.backbone"]
    assert [key for key, _ in err.value.problems] == [f"report.tables[0].{key}" for key in keys]
    lines = str(err.value).splitlines()
    assert [line.split(": ")[1] for line in lines] == [f"report.tables[0].{key}" for key in keys]
    assert lines[3] == "g.yaml: report.tables[0].digits: must be an integer in 0..12, but got -1"
    assert lines[5] == "g.yaml: report.tables[0].where.backbone: no cell of the grid has the label 'nope'; labels of " \
                       "backbone: x"
    # one problem reads as before, a single line
    with pytest.raises(ReportError) as err:
        _one(digits=-1)
    assert str(err.value) == "g.yaml: report.tables[0].digits: must be an integer in 0..12, but got -1"
    assert err.value.problems == [("report.tables[0].digits", "must be an integer in 0..12, but got -1")]


@pytest.mark.parametrize("table", [
    {"name": "t", "rows": "loss", "wher": {"backbone": "x"}},  # the varying backbone: a consequence of the typo
    {"name": "t", "rows": "loss", "colums": "backbone", "metric": "test_acc"},  # metric: only for a matrix
    {"name": "t", "rows": AXES, "select": "bst", "select_by": "test_acc"},  # select_by: only with select: best
])
def test_a_check_across_keys_waits_for_the_keys_it_reads(table):
    with pytest.raises(ReportError) as err:
        TableSpec.from_dict(table, axes=AXES, source="g.yaml", key="report.tables[0]")
    assert len(err.value.problems) == 1 and "\n" not in str(err.value)


def test_report_section_errors():
    with pytest.raises(ReportError, match=r"g.yaml: report.table: unknown key"):
        parse_tables({"table": []}, axes=AXES, source="g.yaml")
    with pytest.raises(ReportError, match=r"report.tables: must be a list"):
        parse_tables({"tables": {"name": "t"}}, axes=AXES)
    with pytest.raises(ReportError, match=r"report.tables: table names must be unique; repeated: \['t'\]"):
        parse_tables({"tables": [{"name": "t", "rows": AXES}, {"name": "t", "rows": AXES}]}, axes=AXES)
    assert parse_tables(None, axes=AXES) == []


def test_default_table_uses_every_axis():
    (spec,) = default_tables("g", AXES)
    assert spec.name == "g" and spec.rows == ("loss", "backbone")
    assert default_tables("g", [])[0].rows == ("label",)
