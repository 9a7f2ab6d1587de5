"""Metric names in a grid's ``objective`` and ``report:`` are checked against what its trials log, before any
training: the error names the file, the key, the bad name and the names that are there, closest first."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.cli import main
from bench.grid import GridError, load_grid

DIGITS = """
name: g
base: {dataset: digits, backbone: lenet++, embedding_dim: 2, epochs: 1}
grid:
  loss: [softmax, cosface]
"""
FACES = "{name: synthetic-faces, identities: 4, images_per_identity: 4, image_size: 16, test_identities: 4}"
#: digits cells beside synthetic-faces ones (their pairs are named ``synthetic``)
MIXED = f"""
name: g
base: {{dataset: digits, backbone: lenet++, embedding_dim: 2, epochs: 1}}
grid:
  data:
    - {{label: digits, dataset: digits}}
    - {{label: faces, dataset: {FACES}}}
"""
DIGITS_METRICS = ["lr", "test_acc", *(f"test_acc.class_{i}" for i in range(10)), "train_acc", "train_loss"]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    return path


def table(**keys: str) -> str:
    keys = {"rows": "loss", **keys}
    return "report:\n  tables:\n    - {name: t, " + ", ".join(f"{k}: {v}" for k, v in keys.items()) + "}\n"


def test_a_misspelt_column_names_file_key_and_the_metrics_closest_first(tmp_path):
    # before: the grid loaded, every trial trained, and bench report then found no column test_accuracy
    path = write(tmp_path, DIGITS + table(columns="[train_acc, test_accuracy]"))
    with pytest.raises(GridError) as err:
        load_grid(path)
    assert err.value.key == "report.tables[0].columns[1]"
    assert str(err.value).startswith(
        f"{path}: report.tables[0].columns[1]: no metric 'test_accuracy' in the trials "
        f"of this grid (did you mean 'test_acc' or 'test_acc.class_0' or "
    )
    # test_acc and the per-class accuracies are the close ones; the rest follow in natural order
    listed = str(err.value).split("metrics, closest first: ")[1].split(";")[0].split(", ")
    assert listed[:11] == ["test_acc", *(f"test_acc.class_{i}" for i in range(10))]
    assert sorted(listed) == sorted(DIGITS_METRICS)


@pytest.mark.parametrize(
    "keys, key, name",
    [
        ({"columns": "loss", "rows": "label", "metric": "tst_acc"}, "metric", "tst_acc"),
        ({"columns": "[test_acc]", "select": "best", "select_by": "train_los"}, "select_by", "train_los"),
        ({"columns": "[test_acc]", "bold": "{train_loss: min, tes_acc: max}"}, "bold.tes_acc", "tes_acc"),
    ],
)
def test_every_key_that_names_a_metric_is_checked(tmp_path, keys, key, name):
    with pytest.raises(GridError) as err:
        load_grid(write(tmp_path, DIGITS + table(**keys)))
    assert err.value.key == f"report.tables[0].{key}"
    assert f"no metric {name!r} in the trials of this grid (did you mean " in str(err.value)


def test_a_pattern_that_matches_no_metric_is_an_error(tmp_path):
    with pytest.raises(GridError) as err:
        load_grid(write(tmp_path, DIGITS + table(columns="{pattern: 'lfw_*'}")))
    assert err.value.key == "report.tables[0].columns.pattern"
    assert "'lfw_*' matches no metric of the trials of this grid" in str(err.value)
    load_grid(write(tmp_path, DIGITS + table(columns="{pattern: 'test_acc.class_*'}")))


@pytest.mark.parametrize(
    "objective, key", [("{metric: lfw_acc, direction: maximize}", "objective.metric"), ("lfw_acc", "objective")]
)
def test_a_verification_objective_on_a_grid_without_pairs_says_so(tmp_path, objective, key):
    # before: every trial trained, then Optuna recorded each as failed for want of lfw_acc
    with pytest.raises(GridError) as err:
        load_grid(write(tmp_path, DIGITS + f"objective: {objective}\n"))
    assert err.value.key == key
    assert "no metric 'lfw_acc' in the trials of this grid" in str(err.value)
    assert "these trials have no verification pairs" in str(err.value)


def test_face_metrics_are_named_after_their_pairs(tmp_path):
    faces = f"name: g\nbase: {{dataset: {FACES}, backbone: lenet++, epochs: 1}}\ngrid:\n  loss: [softmax]\n"
    with pytest.raises(GridError) as err:
        load_grid(write(tmp_path, faces + table(columns="[lfw_acc]")))
    assert "pair-verification metrics are named after the pairs, here 'synthetic'" in str(err.value)
    grid = load_grid(
        write(
            tmp_path,
            faces
            + "objective: synthetic_val_far1e-3\n"
            + table(columns="[synthetic_acc, synthetic_tar_far1e-4, test_acc]"),
        )
    )
    assert len(grid.cells) == 1


def test_test_acc_objective_stands_for_the_pair_accuracy_without_a_test_split(tmp_path):
    # bench.workers.objective_metric: a trial without test_acc reports its pairs' accuracy instead
    faces = FACES.replace("}", ", test_fraction: 0}")
    load_grid(write(tmp_path, f"name: g\nbase: {{dataset: {faces}, backbone: lenet++}}\nobjective: test_acc\n"))
    with pytest.raises(GridError, match="report.tables.0..columns.0.: no metric 'test_acc'"):
        load_grid(
            write(
                tmp_path,
                f"name: g\nbase: {{dataset: {faces}, backbone: lenet++}}\ngrid:\n  loss: [softmax]\n"
                + table(columns="[test_acc]"),
            )
        )


def test_the_objective_must_be_logged_by_every_cell(tmp_path):
    with pytest.raises(GridError) as err:
        load_grid(write(tmp_path, MIXED + "objective: synthetic_acc\n"))
    assert err.value.key == "objective"
    assert "no metric 'synthetic_acc' in the trials of cells 'digits'" in str(err.value)
    assert "these trials have no verification pairs" in str(err.value)
    # the names listed are those every cell logs: the faces' 4 classes, not the digits' 10
    assert "test_acc.class_3" in str(err.value) and "test_acc.class_4" not in str(err.value)


def test_a_table_metric_needs_one_cell_of_the_table_that_logs_it(tmp_path):
    both = "report:\n  tables:\n    - {name: t, rows: data, columns: [test_acc, synthetic_acc]}\n"
    assert len(load_grid(write(tmp_path, MIXED + both)).cells) == 2  # the digits row shows n/a
    digits_only = (
        "report:\n  tables:\n    - {name: t, rows: [data, loss], columns: [test_acc]}\n"
        "    - {name: u, rows: loss, where: {data: digits}, columns: [test_acc, synthetic_acc]}\n"
    )
    with pytest.raises(GridError) as err:
        load_grid(write(tmp_path, MIXED + "  loss: [softmax, cosface]\n" + digits_only))
    assert err.value.key == "report.tables[1].columns[1]"
    assert "no metric 'synthetic_acc' in the trials this table shows" in str(err.value)


def test_metric_problems_are_listed_with_the_cells_problems(tmp_path):
    text = DIGITS.replace("[softmax, cosface]", "[softmax, cosfase]") + "objective: tst_acc\n" + table(columns="[x]")
    with pytest.raises(GridError) as err:
        load_grid(write(tmp_path, text))
    assert [key for key, _ in err.value.problems] == ["grid.loss[1].loss", "objective", "report.tables[0].columns[0]"]


def test_a_dataset_that_does_not_say_what_it_logs_is_not_checked(tmp_path, tiny_dataset):
    text = DIGITS.replace("dataset: digits", f"dataset: {tiny_dataset}") + "objective: anything\n"
    assert len(load_grid(write(tmp_path, text + table(columns="[whatever]"))).cells) == 2


def test_bench_run_stops_before_training(in_tmp, capsys):
    grid = write(in_tmp, DIGITS + table(columns="[train_acc, test_accuracy]"))
    assert main(["run", "--grid", str(grid), "--no-progress"]) == 2
    assert "report.tables[0].columns[1]: no metric 'test_accuracy'" in capsys.readouterr().err
    assert sorted(p.name for p in in_tmp.iterdir()) == ["grid.yaml"]  # no study, no run
