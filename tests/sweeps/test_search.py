"""search: ranges sampled by Optuna inside each cell or across the grid; a median pruner on a per-epoch metric."""

from __future__ import annotations

import pytest
from optuna.trial import TrialState

from bench.grid import load_grid
from bench.workers import run_study
from tests.sweeps.conftest import mlflow_children, optuna_trials

TINY = "{dataset: tiny-blobs, backbone: lenet++, embedding_dim: 4, batch_size: 16, eval_batch_size: 64"


def test_median_pruner_prunes_the_clearly_worse_arm_and_the_report_counts_it(in_tmp, tiny_dataset, write_grid):
    grid = load_grid(write_grid(f"""\
        name: pruning
        base: {TINY}, epochs: 3, loss: {{name: cosface, s: 10.0, m: 0.1}}}}
        grid:
          arm:
            - {{label: learns, optimizer: {{name: adam, lr: 0.003}}}}
            - {{label: frozen, optimizer: {{name: adam, lr: 1.0e-7}}}}   # cannot learn: clearly worse
        search:
          loss.m: {{type: uniform, low: 0.05, high: 0.3}}
        search_scope: grid
        n_trials: 8
        sampler: {{type: random, seed: 0}}
        pruner: {{type: median, n_startup_trials: 2, n_warmup_steps: 0}}
        """))
    report = run_study(grid, progress=False, echo=lambda s: None)
    trials = optuna_trials("pruning", report.storage)
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert len(trials) == 8 and pruned, [(t.params, t.state) for t in trials]
    assert all(t.params["cell"] == "frozen" for t in pruned)  # only the worse arm
    assert report.counts["pruned"] == len(pruned) and report.counts["finished"] == 8 - len(pruned)
    runs = mlflow_children("pruning", report.tracking_uri)
    killed = [r for r in runs if r.info.status == "KILLED"]
    assert len(killed) == len(pruned) and all(r.data.tags["marginbench.status"] == "pruned" for r in killed)
    # the report (from MLflow) counts them as pruned, outside the means
    from reports.markdown import default_table

    assert f"{len(pruned)} pruned" in default_table(grid)


def test_a_trial_is_never_pruned_after_its_last_epoch(in_tmp, tiny_dataset, write_grid):
    """Pruning saves the epochs still to come; after the last one there are none, and a pruned trial would only
    drop out of the tables (with epochs: 1 the median pruner used to prune the worse arm's finished trials)."""
    grid = load_grid(write_grid(f"""\
        name: lastepoch
        base: {TINY}, epochs: 1, loss: {{name: cosface, s: 10.0, m: 0.1}}}}
        grid:
          arm:
            - {{label: learns, optimizer: {{name: adam, lr: 0.003}}}}
            - {{label: frozen, optimizer: {{name: adam, lr: 1.0e-7}}}}
        search:
          loss.m: {{type: uniform, low: 0.05, high: 0.3}}
        search_scope: grid
        n_trials: 6
        sampler: {{type: random, seed: 0}}
        pruner: {{type: median, n_startup_trials: 1, n_warmup_steps: 0}}
        """))
    report = run_study(grid, progress=False, echo=lambda s: None)
    trials = optuna_trials("lastepoch", report.storage)
    assert len(trials) == 6 and {t.params["cell"] for t in trials} == {"learns", "frozen"}
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6
    assert all(list(t.intermediate_values) == [0] for t in trials)  # the epoch is still reported


def test_cell_scope_samples_within_ranges_and_each_cell_gets_n_trials(in_tmp, tiny_dataset, write_grid):
    grid = load_grid(write_grid(f"""\
        name: scoped
        base: {TINY}, epochs: 1}}
        grid:
          loss:
            - {{label: cosface, loss: {{name: cosface, s: 10.0, m: 0.1}}}}
            - {{label: arcface, loss: {{name: arcface, s: 10.0, m: 0.2}}}}
        search:
          loss.m: {{type: uniform, low: 0.05, high: 0.3}}
          optimizer.lr: {{type: loguniform, low: 1.0e-4, high: 1.0e-2}}
          embedding_dim: {{type: int, low: 2, high: 6}}
        n_trials: 2
        """))
    report = run_study(grid, progress=False, echo=lambda s: None)
    assert report.counts["finished"] == 4
    trials = optuna_trials("scoped", report.storage)
    assert sorted(t.user_attrs["marginbench.cell"] for t in trials) == ["arcface"] * 2 + ["cosface"] * 2
    for t in trials:
        assert 0.05 <= t.params["loss.m"] <= 0.3 and 1e-4 <= t.params["optimizer.lr"] <= 1e-2
        assert t.params["embedding_dim"] in range(2, 7)
        spec = t.user_attrs["marginbench.spec"]
        assert spec["loss"] == t.user_attrs["marginbench.cell"] and spec["loss.m"] == t.params["loss.m"]
    # the sampler and pruner of a cell see only that cell's trials
    import optuna

    from bench.study import CellStudy, open_storage

    study = optuna.load_study(study_name="scoped", storage=open_storage(report.storage))
    view = CellStudy(study, "cosface")
    assert [t.user_attrs["marginbench.cell"] for t in view.get_trials()] == ["cosface"] * 2
    assert len(view._get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) == 2
    runs = mlflow_children("scoped", report.tracking_uri)
    assert sorted(r.data.tags["label.loss"] for r in runs) == ["arcface"] * 2 + ["cosface"] * 2
    assert {r.data.params["loss.m"] for r in runs} == {str(t.params["loss.m"]) for t in trials}


def test_grid_scope_makes_the_cell_a_categorical_parameter(in_tmp, tiny_dataset, write_grid):
    grid = load_grid(write_grid(f"""\
        name: across
        base: {TINY}, epochs: 1}}
        grid:
          loss: [softmax, cosface]
        search:
          optimizer.lr: {{type: loguniform, low: 1.0e-4, high: 1.0e-2}}
        search_scope: grid
        n_trials: 3
        """))
    report = run_study(grid, progress=False, echo=lambda s: None)
    trials = optuna_trials("across", report.storage)
    assert len(trials) == 3 and report.counts["finished"] == 3
    for t in trials:
        assert t.params["cell"] in ("softmax", "cosface")
        assert t.user_attrs["marginbench.spec"]["loss"] == t.params["cell"]
        assert t.user_attrs["marginbench.labels"] == {"loss": t.params["cell"]}


@pytest.mark.parametrize("text, key, message", [
    ("search: {loss.q: {type: uniform, low: 0.1, high: 0.5}}\nn_trials: 2", "search.loss.q", "q"),
    ("search: {loss.m: {type: uniformm, low: 0.1, high: 0.5}}\nn_trials: 2", "search.loss.m.type", "uniform"),
    ("search: {loss.m: {type: uniform, low: 0.5, high: 0.1}}\nn_trials: 2", "search.loss.m", "low must be < high"),
    ("search: {embedding_dim: {type: int, low: 2, high: 8, step: 0.5}}\nn_trials: 2", "search.embedding_dim.step",
     "must be an integer > 0, but got 0.5"),
    # a step that does not divide the range: Optuna would silently lower high to the last step
    ("search: {loss.m: {type: uniform, low: 0.1, high: 0.5, step: 0.15}}\nn_trials: 2", "search.loss.m.step",
     "would stop at 0.4, not high=0.5"),
    ("search: {embedding_dim: {type: int, low: 2, high: 7, step: 2}}\nn_trials: 2", "search.embedding_dim.step",
     "set high: 6"),
    ("search: {optimizer.lr: {type: loguniform, low: 0, high: 0.1}}\nn_trials: 2", "search.optimizer.lr.low", "> 0"),
    ("search: {loss.m: {type: categorical, choices: []}}\nn_trials: 2", "search.loss.m.choices", "non-empty"),
    # a searched component name is checked like the grid's own: it exists, and takes the cell's parameters
    ("search: {loss: [cosface, arcfce]}\nn_trials: 2", "search.loss", "Unknown loss 'arcfce'"),
    ("search: {loss: [cosface, softmax]}\nn_trials: 2", "search.loss", "no parameter 'm', 's'"),
    # an axis whose cells differ only in a searched key: the sampler replaces its values, the cells are one
    ("grid: {embedding_dim: [2, 3]}\nsearch: {embedding_dim: {type: int, low: 2, high: 6}}\nn_trials: 2",
     "search.embedding_dim", "cells '2' and '3' differ only in embedding_dim"),
    ("search: {loss.m: {type: uniform, low: 0.1, high: 0.5}}", "n_trials", "needs n_trials"),
    ("n_trials: 3", "n_trials", "no search"),
    ("pruner: median", "pruner", "no search"),
    ("search: {loss.m: [0.1, 0.2]}\nn_trials: 2\npruner: medain", "pruner.type", "median"),
    ("search: {loss.m: [0.1, 0.2]}\nn_trials: 2\npruner: {type: median, n_startup: 3}", "pruner", "n_startup_trials"),
    # hyperband checks these only at its first decision, an epoch into a trial
    ("search: {loss.m: [0.1, 0.2]}\nn_trials: 2\npruner: {type: hyperband, min_resource: 0}", "pruner.min_resource",
     ">= 1"),
    ("search: {loss.m: [0.1, 0.2]}\nn_trials: 2\npruner: {type: hyperband, reduction_factor: 1}",
     "pruner.reduction_factor", "reduction_factor must be an integer >= 2"),
    # counts, steps and percentiles that Optuna takes negative or fractional without a word
    ("search: {loss.m: [0.1, 0.2]}\nn_trials: 2\nsampler: {type: tpe, n_startup_trials: -3}",
     "sampler.n_startup_trials", "an integer >= 0, but got -3"),
    ("search: {loss.m: [0.1, 0.2]}\nn_trials: 2\nsampler: {type: tpe, n_startup_trials: 2.5}",
     "sampler.n_startup_trials", "an integer >= 0, but got 2.5"),
    ("search: {loss.m: [0.1, 0.2]}\nn_trials: 2\nsampler: {type: tpe, n_ei_candidates: 0}",
     "sampler.n_ei_candidates", "an integer >= 1"),
    ("search: {loss.m: [0.1, 0.2]}\nn_trials: 2\nsampler: {type: cmaes, popsize: 0}", "sampler.popsize",
     "an integer >= 1, but got 0"),
    ("search: {loss.m: [0.1, 0.2]}\nn_trials: 2\nsampler: {type: gp, n_startup_trials: -1}",
     "sampler.n_startup_trials", ">= 0"),
    ("search: {loss.m: [0.1, 0.2]}\nn_trials: 2\nsampler: {type: random, seed: 2.5}", "sampler.seed",
     "an integer in [0, 4294967295], but got 2.5"),
    ("search: {loss.m: [0.1, 0.2]}\nn_trials: 2\nsampler: {type: tpe, seed: abc}", "sampler.seed", "'abc'"),
    ("search: {loss.m: [0.1, 0.2]}\nn_trials: 2\npruner: {type: median, n_warmup_steps: 2.5}",
     "pruner.n_warmup_steps", "an integer >= 0, but got 2.5"),
    ("search: {loss.m: [0.1, 0.2]}\nn_trials: 2\npruner: {type: median, interval_steps: 1.5}",
     "pruner.interval_steps", "an integer >= 1"),
    ("search: {loss.m: [0.1, 0.2]}\nn_trials: 2\npruner: {type: percentile, percentile: x}", "pruner.percentile",
     "a number in [0, 100]"),
    ("search: {loss.m: [0.1, 0.2]}\nn_trials: 2\npruner: {type: sha, reduction_factor: 2.5}",
     "pruner.reduction_factor", "an integer >= 2, but got 2.5"),
    ("search: {loss.m: [0.1, 0.2]}\nn_trials: 2\npruner: {type: sha, min_resource: 2.5}", "pruner.min_resource",
     "an integer >= 1 or auto"),
    ("search: {loss.m: [0.1, 0.2]}\nn_trials: 2\npruner: {type: hyperband, bootstrap_count: -1, max_resource: 4}",
     "pruner.bootstrap_count", ">= 0"),
    ("search: {loss.m: [0.1, 0.2]}\nn_trials: 2\npruner: {type: hyperband, min_resource: 5, max_resource: 3}",
     "pruner", "max_resource must be >= min_resource=5"),
    # a searched image size the backbone cannot take (lenet++ pools three times: at least 8x8)
    ("search: {dataset.image_size: {type: int, low: 4, high: 28}}\nn_trials: 2", "search.dataset.image_size",
     "lenet++ (backbone) takes images of at least 8x8, but dataset digits gives 4x4 images"),
    ("search: {loss.m: [0.1, 0.2]}\nn_trials: 2\nsampler: tpee", "sampler.type", "tpe"),
    ("search: {loss.m: [0.1, 0.2]}\nn_trials: 2\nsearch_scope: cells", "search_scope", "cell, grid"),
    ("objective: {metric: test_acc, direction: up}", "objective.direction", "maximize"),
    ("workers: 0", "workers", "positive"),
    ("search: {loss.m: [0.1, 0.2]}\nn_trials: 2\nseeds: [0, 1]", "seeds", "one seed"),
])
def test_invalid_study_keys_name_the_file_and_key(tmp_path, write_grid, text, key, message):
    from bench.grid import GridError
    from bench.study import StudyConfig

    path = write_grid("name: bad\nbase: {dataset: digits, loss: {name: cosface, s: 10.0, m: 0.1}}\n" + text + "\n")
    with pytest.raises(GridError) as err:
        StudyConfig.from_grid(load_grid(path))
    assert err.value.key == key and message in str(err.value) and str(path) in str(err.value)


def test_sampler_and_pruner_counts_in_range_pass_validation(write_grid):
    from bench.study import StudyConfig

    head = "name: ok\nbase: {dataset: digits, loss: {name: cosface, s: 10.0, m: 0.1}}\nsearch: {loss.m: [0.1, 0.2]}\n"
    for text in ("sampler: {type: tpe, seed: 4294967295, n_startup_trials: 0, n_ei_candidates: 1}",
                 "pruner: {type: percentile, percentile: 25.0, n_startup_trials: 0, n_warmup_steps: 0}",
                 "pruner: {type: sha, min_resource: auto, reduction_factor: 2, min_early_stopping_rate: 0}",
                 "pruner: {type: hyperband, min_resource: 1, max_resource: auto}"):
        config = StudyConfig.from_grid(load_grid(write_grid(head + "n_trials: 2\n" + text + "\n")))
        assert config.make_sampler(worker_index=1) is not None  # the worker offset wraps within numpy's range


def test_a_cell_scoped_hyperband_pruner_compares_trials_of_the_same_cell_only():
    # Hyperband's bracket studies read the storage, not the study they are given: the cell's view filters
    # there too, so a trial of a weak cell is not pruned for trailing the trials of another cell
    import optuna

    from bench.study import CELL_ATTR, CellStudy

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=2)  # one bracket: no bracket draw
    study = optuna.create_study(direction="maximize", pruner=pruner)

    def pruned(cell: str, value: float) -> bool:
        asked = study.ask()
        asked.set_user_attr(CELL_ATTR, cell)
        trial = optuna.Trial(CellStudy(study, cell), asked._trial_id)
        for step in range(3):
            trial.report(value, step)
            if trial.should_prune():
                study.tell(asked, state=TrialState.PRUNED)
                return True
        study.tell(asked, value)
        return False

    assert not any(pruned("strong", 0.9) for _ in range(4))
    assert not any(pruned("weak", 0.1 + 0.01 * i) for i in range(4))  # each better than the last of its cell


def test_a_seeded_sampler_continues_its_draws_after_a_rerun_instead_of_repeating_them(tmp_path, write_grid):
    # a rerun (more n_trials, or after a crash) makes a new sampler with the grid's seed: it must not draw the
    # first run's values again (those trials would only adopt the earlier runs, and the search end with fewer
    # distinct configurations than n_trials); a study prepared afresh still draws the same values
    import optuna

    from bench.study import StudyConfig, load_study, open_storage, pop_next_trial_id, prepare_study, trial_spec

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    text = """\
        name: reseeded
        base: {{dataset: digits, loss: {{name: cosface, s: 10.0, m: 0.1}}}}
        search: {{loss.m: {{type: uniform, low: 0.05, high: 0.5}}, optimizer.lr: {{type: loguniform, low: 1.0e-4,
                                                                                 high: 1.0e-1}}}}
        n_trials: {n}
        sampler: {{type: random, seed: 0}}
        """

    def draw(storage, n_trials: int, count: int) -> list[tuple[float, float]]:
        grid = load_grid(write_grid(text.format(n=n_trials)))
        prepare_study(grid, StudyConfig.from_grid(grid), storage)
        study = load_study("reseeded", storage)
        config = StudyConfig.from_grid(grid)
        out = []
        for _ in range(count):
            trial = optuna.Trial(study, pop_next_trial_id(study))
            spec = trial_spec(trial, config)
            study.tell(trial, 0.5)
            out.append((spec.loss_params["m"], spec.optimizer_params["lr"]))
        return out

    first = draw(open_storage(str(tmp_path / "a.journal")), 2, 2)
    assert draw(open_storage(str(tmp_path / "b.journal")), 2, 2) == first  # reproducible from scratch
    more = draw(open_storage(str(tmp_path / "a.journal")), 4, 2)  # the rerun with n_trials raised to 4
    assert not set(more) & set(first), (first, more)


def test_every_invalid_study_key_is_listed_in_one_error(write_grid):
    # before: StudyConfig stopped at the first problem (n_trials), so each rerun met the next one
    from bench.grid import GridError
    from bench.study import StudyConfig

    path = write_grid("name: bad\nbase: {dataset: digits, loss: {name: cosface, s: 10.0, m: 0.1}}\n"
                      "search: {loss.m: {type: uniform, low: 0.5, high: 0.1}, loss.s: {type: uniformm}, "
                      "optimizer.lr: {type: loguniform, low: 1.0e-3, high: 1.0e-1}}\n"
                      "n_trials: 0\nsampler: {type: tpe, n_startup_trials: -3}\npruner: medain\n"
                      "objective: {metric: test_acc, direction: up}\nworkers: 0\nseeds: [0, 1]\n")
    with pytest.raises(GridError) as err:
        StudyConfig.from_grid(load_grid(path))
    assert [key for key, _ in err.value.problems] == [
        "search.loss.m", "search.loss.s.type", "n_trials", "sampler.n_startup_trials", "pruner.type",
        "objective.direction", "workers", "seeds"]  # seeds: the valid range (optimizer.lr) still makes a search
    assert str(err.value).startswith(f"{path}: 8 problems:\n  search.loss.m: low must be < high")


def test_a_single_invalid_study_key_reads_as_before(write_grid):
    from bench.grid import GridError
    from bench.study import StudyConfig

    path = write_grid("name: bad\nbase: {dataset: digits}\nworkers: 0\n")
    with pytest.raises(GridError) as err:
        StudyConfig.from_grid(load_grid(path))
    assert str(err.value) == f"{path}: workers: must be a positive integer, but got 0"
