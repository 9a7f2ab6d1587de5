"""A table counts the runs of the grid as loaded: a smoke run with other settings is left out and named."""

from __future__ import annotations

import dataclasses

import pandas as pd

from bench.grid import load_grid
from reports.matching import split_runs

GRID = """\
name: match
base: {dataset: digits, backbone: lenet++, embedding_dim: 2, epochs: 3, batch_size: 32}
grid:
  loss:
    - {label: softmax, loss: softmax}
    - {label: cosface, loss: {name: cosface, s: 10.0, m: 0.1}}
seeds: [0, 1]
"""


def _row(grid, label: str, seed: int, **changes: str) -> dict:
    """A `load_runs` row for the grid's trial ``label``/``seed``: its params as MLflow returns them (text)."""
    spec = next(c.spec for c in grid.cells if c.spec.label == label)
    params = {f"param.{k}": str(v) for k, v in spec.replace(seed=seed).to_params().items()}
    params.update({f"param.{k}": v for k, v in changes.items()})
    return {"run_id": f"{label}-{seed}-{len(changes)}", "label": label, "seed": seed, **params}


def test_runs_with_other_settings_are_left_out_and_their_settings_named(tmp_path):
    grid = load_grid(_write(tmp_path, GRID))
    runs = pd.DataFrame([_row(grid, "softmax", 0), _row(grid, "softmax", 1), _row(grid, "cosface", 0),
                         _row(grid, "softmax", 0, epochs="1"), _row(grid, "cosface", 0, epochs="1"),
                         _row(grid, "cosface", 1, **{"loss.m": "0.35"})])
    split = split_runs(grid, runs)
    assert list(split.kept["run_id"]) == ["softmax-0-0", "softmax-1-0", "cosface-0-0"]
    assert list(split.left_out["run_id"]) == ["softmax-0-1", "cosface-0-1", "cosface-1-1"]
    assert split.differences == ["epochs=1", "loss.m=0.35"]
    assert split.note("match") == ("*3 runs of study match with other settings (epochs=1, loss.m=0.35) are left out "
                                   "of this table; `bench report` with the `--set` options they ran with tables them.*")


def test_the_same_runs_match_the_grid_loaded_with_their_overrides(tmp_path):
    path = _write(tmp_path, GRID)
    smoke = load_grid(path, overrides={"epochs": 1})
    runs = pd.DataFrame([_row(smoke, "softmax", 0), _row(load_grid(path), "softmax", 0)])
    split = split_runs(smoke, runs)
    assert list(split.kept["param.epochs"]) == ["1"] and split.differences == ["epochs=3"]


def test_a_param_only_one_side_has_does_not_count_and_searched_keys_may_differ(tmp_path):
    searched = GRID + "search:\n  loss.m: {type: uniform, low: 0.05, high: 0.5}\nn_trials: 2\n"
    grid = load_grid(_write(tmp_path, searched))
    older = _row(grid, "softmax", 0)
    del older["param.eval_batch_size"]  # a spec field the run predates
    older["param.added_later"] = "x"  # or one since removed
    runs = pd.DataFrame([older, _row(grid, "cosface", 0, **{"loss.m": "0.42"})])
    split = split_runs(grid, runs)
    assert len(split.kept) == 2 and split.left_out.empty and split.note("match") == ""


def test_exponent_floats_logged_as_text_equal_the_grid_values(tmp_path):
    grid = load_grid(_write(tmp_path, GRID.replace("batch_size: 32}", "batch_size: 32, optimizer: {name: adam, "
                                                                        "lr: 1e-5}}")))
    runs = pd.DataFrame([_row(grid, "softmax", 0, **{"optimizer.lr": str(1e-05)})])  # MLflow keeps '1e-05'
    assert len(split_runs(grid, runs).kept) == 1


def _write(tmp_path, text: str):
    path = tmp_path / "match.yaml"
    path.write_text(text)
    return path


SEARCH = """\
name: searched
base: {dataset: digits, backbone: lenet++, embedding_dim: 2, epochs: 1}
grid:
  loss:
    - {label: cosface, loss: cosface}
search:
  optimizer.lr: {type: loguniform, low: 1.0e-4, high: 1.0e-1}
n_trials: 2
seeds: [0]
report:
  tables:
    - {name: best, rows: loss, columns: [test_acc], select: best}
"""


def test_select_best_pools_every_finished_run_of_the_cell_and_says_so(tmp_path):
    # the study ran with n_trials: 4, then the grid was edited to n_trials: 2: the four runs were made and
    # finished in the cell, so the table shows the best of the four (not of the first two) and a line under it
    # says that "best of k" counts every finished run of the cell in the study, whatever n_trials was
    from reports.markdown import render_results, study_results
    from reports.tables import aggregate

    grid = load_grid(_write(tmp_path, SEARCH))
    accs = {"0.01": 0.90, "0.02": 0.93, "0.05": 0.95, "0.001": 0.91}
    rows = []
    for i, (lr, acc) in enumerate(accs.items()):
        row = _row(grid, "cosface", 0, **{"optimizer.lr": lr})
        rows.append({**row, "run_id": f"r{i}", "trial_key": f"sampled-{i}", "status": "finished", "test_acc": acc,
                     "train_acc": 1.0 - i / 100, "start_time": i, "label.loss": "cosface"})
    (results,) = study_results(grid, pd.DataFrame(rows))
    text = render_results(results)
    assert f"| {max(accs.values()):.4f} (n=1, best of 4) |" in text  # one row: nothing to bold
    assert ("*Each cell shows its finished run with the highest test_acc; \"best of k\" counts all the cell's "
            "finished runs in study searched, also those of an earlier run of the grid with more n_trials or other "
            "search ranges. Chosen on the held-out data it is measured on (there is no separate validation split), "
            "the value is an optimistic estimate; for a fair one, fix the chosen values in a grid without search and "
            "run it with new seeds.*") in text.split("\n\n")
    # picked by a training metric, the held-out value shown is not the one that chose it
    frame = pd.DataFrame(rows)
    spec = dataclasses.replace(results.spec, metrics=("train_acc", "test_acc"), select_by="train_acc")
    by_train = aggregate(frame, spec).selection_note("searched")
    assert "highest train_acc" in by_train and "optimistic" not in by_train
