"""`bench.seed_noise`: Student's t test over seeds against scipy and a closed form, and `bench perf --against`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from bench.cli import main
from bench.seed_noise import compare_runs, format_comparison, pooled_t_test, unmatched_cells
from tests.conftest import write_tiny_mnist


@pytest.mark.parametrize("na,nb", [(2, 2), (3, 4), (5, 3), (10, 10)])
def test_pooled_t_test_equals_scipy(na, nb):
    rng = np.random.default_rng(na * 10 + nb)
    a, b = rng.normal(0.5, 0.1, na), rng.normal(0.55, 0.1, nb)
    p, df = pooled_t_test(list(a), list(b))
    expected = stats.ttest_ind(a, b, equal_var=True)
    assert df == na + nb - 2
    assert p == pytest.approx(float(expected.pvalue), rel=1e-12)


def test_one_value_against_seeds_is_the_prediction_interval_test():
    # t = (x - mean) / (s sqrt(1 + 1/n)), n - 1 = 2 degrees of freedom, where Student's t has the closed form
    # P(|T| > t) = 1 - t / sqrt(2 + t^2).
    seeds, x = [0.1, 0.2, 0.3], 0.5
    t = (x - 0.2) / (0.1 * math.sqrt(1 + 1 / 3))
    p, df = pooled_t_test([x], seeds)
    assert df == 2
    assert p == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-12)
    assert pooled_t_test(seeds, [x]) == (p, df)  # symmetric


@pytest.mark.parametrize("n", [2, 3, 6])
def test_a_difference_of_exactly_detectable_has_p_alpha(n):
    # shifting a copy of the seeds by `detectable` must give scipy's p-value alpha (Bonferroni over 11 cells)
    rng = np.random.default_rng(n)
    a = list(rng.normal(0.9, 0.02, n))
    probe = compare_runs(_records("a", a), _records("a", a), alpha=0.05 * 11)  # one cell: alpha as given
    shift = probe[0].detectable
    assert probe[0].seed_std == pytest.approx(float(np.std(a, ddof=1)), rel=1e-12)
    p = stats.ttest_ind(a, [x + shift for x in a], equal_var=True).pvalue
    assert p == pytest.approx(0.05 * 11, rel=1e-9)


def test_too_few_values_or_no_spread():
    assert pooled_t_test([0.3], [0.4]) is None  # no degree of freedom left for the variance
    assert pooled_t_test([], [0.1, 0.2]) is None
    assert pooled_t_test([0.3, 0.3], [0.3]) == (1.0, 1)
    assert pooled_t_test([0.3, 0.3], [0.4, 0.4]) == (0.0, 2)


@pytest.mark.parametrize("value,na,nb", [(0.8507, 7, 6), (0.1, 3, 2), (0.9875, 5, 3), (0.3941, 9, 6)])
def test_the_same_constant_accuracy_in_both_runs_is_equal_whatever_the_seed_counts(value, na, nb):
    # 20 test images give the same accuracy for every seed: the two means are the same number (exactly, in
    # rationals), so p is 1 and nothing is detectable; a mean rounded as fsum/n differed by one ulp between 7 and 6
    # seeds, a spread of 1e-17 made that a t of 2.4 and p 0.033, a cell flagged at alpha 0.05
    from fractions import Fraction

    a, b = [value] * na, [value] * nb
    assert sum(map(Fraction, a)) / na == sum(map(Fraction, b)) / nb
    assert pooled_t_test(a, b) == (1.0, na + nb - 2)
    (cell,) = compare_runs(_records("a", a), _records("a", b))
    assert (cell.difference, cell.seed_std, cell.detectable, cell.within_noise) == (0.0, 0.0, 0.0, True)


def _records(label, values, status="finished"):
    return [{"label": label, "seed": i, "status": status, "test_acc": v} for i, v in enumerate(values)]


def test_compare_runs_judges_each_cell_at_the_bonferroni_level():
    ref = _records("a", [0.90, 0.92, 0.91]) + _records("b", [0.50, 0.52, 0.51]) + _records("c", [0.7])
    cand = _records("a", [0.91, 0.90, 0.92]) + _records("b", [0.80, 0.81, 0.82]) + _records("c", [0.71])
    cells = {c.label: c for c in compare_runs(ref, cand)}
    assert all(c.alpha == pytest.approx(0.05 / 3) for c in cells.values())
    assert cells["a"].within_noise is True and cells["a"].difference == pytest.approx(0.0)
    assert cells["b"].within_noise is False and cells["b"].difference == pytest.approx(0.30)
    assert cells["b"].seed_std == pytest.approx(0.01)  # both sides have std 0.01
    assert cells["c"].within_noise is None  # one seed a side: untestable, not "equal"
    text = format_comparison(list(cells.values()))
    assert "1 of 3 cells within seed noise" in text and "differ: b" in text and "untestable" in text


def test_a_trial_diverged_on_one_side_only_is_not_noise():
    ref = _records("a", [0.9, 0.91, 0.92])
    cand = _records("a", [0.9, 0.91]) + [{"label": "a", "seed": 2, "status": "diverged", "test_acc": None}]
    (cell,) = compare_runs(ref, cand)
    assert cell.candidate == (0.9, 0.91) and cell.not_finished == (0, 1)
    assert cell.within_noise is False


def test_a_divergence_is_compared_seed_by_seed_on_the_seeds_both_runs_trained():
    # reference: seeds 0-2, seed 2 diverged; this run: seeds 0 and 1 only. No seed diverged in one run and trained
    # in the other, so the cell is judged by its t test (scipy's p), not flagged for the unequal seed counts
    ref = _records("a", [0.90, 0.91]) + [{"label": "a", "seed": 2, "status": "diverged", "test_acc": None}]
    cand = _records("a", [0.905, 0.915])
    (cell,) = compare_runs(ref, cand)
    assert cell.not_finished == (1, 0)
    assert cell.p_value == pytest.approx(float(stats.ttest_ind([0.90, 0.91], [0.905, 0.915]).pvalue), rel=1e-12)
    assert cell.within_noise is True
    # one divergence a side, but of different seeds: each diverged where the other run trained
    seeds = _records("a", [0.9, 0.91, 0.92])
    ref = [{**r, "status": "diverged", "test_acc": None} if r["seed"] == 0 else r for r in seeds]
    cand = [{**r, "status": "diverged", "test_acc": None} if r["seed"] == 1 else r for r in seeds]
    (cell,) = compare_runs(ref, cand)
    assert cell.not_finished == (1, 1) and cell.within_noise is False


def test_a_nan_accuracy_is_a_trial_without_a_value_not_a_number_in_the_mean():
    # a JSON written by hand or by another tool may hold NaN for a diverged trial marked finished: it is left out
    # of the test like a missing value, where it made every number of the cell NaN and the verdict "differ"
    ref = _records("a", [0.90, 0.91, math.nan])
    cand = _records("a", [0.905, 0.915, 0.91])
    (cell,) = compare_runs(ref, cand)
    assert cell.reference == (0.90, 0.91) and cell.not_finished == (1, 0)
    assert cell.p_value == pytest.approx(float(stats.ttest_ind([0.90, 0.91], [0.905, 0.915, 0.91]).pvalue),
                                         rel=1e-12)
    assert cell.within_noise is False  # seed 2 trained in this run only
    assert "nan" not in format_comparison([cell])


def test_cells_of_one_run_only_are_named_not_dropped_without_a_word():
    # the grid changed between the two runs: b was only in the earlier one, c is only in this one. The test and its
    # Bonferroni level cover the one shared cell (0.05 / 1); the verdict names the two cells it did not compare
    ref = _records("a", [0.90, 0.91]) + _records("b", [0.5, 0.6])
    cand = _records("a", [0.905, 0.915]) + _records("c", [0.7, 0.8])
    cells = compare_runs(ref, cand)
    assert [c.label for c in cells] == ["a"] and cells[0].alpha == 0.05
    assert unmatched_cells(ref, cand) == (["b"], ["c"])
    text = format_comparison(cells, names=("seq.json", "this run"), unmatched=unmatched_cells(ref, cand))
    assert "1 of 1 cells within seed noise" in text
    assert "not compared: b (in seq.json only), c (in this run only)" in text
    assert "not compared" not in format_comparison(cells)


def test_the_verdict_states_the_level_asked_and_an_untestable_cell_shows_no_nan():
    ref = _records("a", [0.90, 0.91, 0.92]) + _records("b", [0.7])
    cand = _records("a", [0.905, 0.915]) + _records("b", [0.71])
    cells = compare_runs(ref, cand, alpha=0.1)
    assert [c.alpha for c in cells] == [0.05, 0.05]
    text = format_comparison(cells)
    assert "(p >= 0.05, 0.1 over 2 cells)" in text
    row_b = next(line for line in text.splitlines() if line.startswith("| b |"))
    assert row_b == "| b | 0.7000 (1) | 0.7100 (1) | +0.0100 | - | - | - | untestable |"
    assert "nan" not in text


def test_runs_of_different_grids_are_refused():
    with pytest.raises(ValueError, match="share no cell"):
        compare_runs(_records("a", [0.1, 0.2]), _records("b", [0.1, 0.2]))


@pytest.fixture
def tiny_mnist_grid(in_tmp):
    write_tiny_mnist(in_tmp / "data" / "mnist")
    (in_tmp / "g.yaml").write_text(
        "name: noise-grid\nbase: {dataset: {name: mnist, root: data/mnist}, backbone: lenet++, embedding_dim: 2,\n"
        "       epochs: 1, batch_size: 16}\ngrid: {loss: [softmax, cosface]}\nseeds: [0]\n")
    return in_tmp


def test_bench_perf_grid_against_an_earlier_run_reports_seed_noise_per_cell(tiny_mnist_grid, capsys):
    ref_json, cand_json = tiny_mnist_grid / "seq.json", tiny_mnist_grid / "fused.json"
    assert main(["perf", "--grid", "g.yaml", "--seeds", "3", "--workers", "1", "--json", str(ref_json)]) == 0
    ref = json.loads(ref_json.read_text())["grid"]
    assert ref["trials"] == 6 and ref["seeds"] == [0, 1, 2] and ref["counts"].get("finished") == 6
    assert [(r["label"], r["seed"]) for r in ref["records"]] == [
        (loss, s) for loss in ("softmax", "cosface") for s in range(3)]  # the grid's order
    assert all(0.0 <= r["test_acc"] <= 1.0 for r in ref["records"])
    capsys.readouterr()

    assert main(["perf", "--grid", "g.yaml", "--seeds", "0,1", "--fuse", "4", "--workers", "1",
                 "--against", str(ref_json), "--json", str(cand_json)]) == 0
    out = capsys.readouterr().out
    assert "seq.json test_acc (n) | this run test_acc (n)" in out and "cells within seed noise" in out
    against = json.loads(cand_json.read_text())["against"]
    assert [c["label"] for c in against["cells"]] == ["softmax", "cosface"]
    assert against["only_in_file"] == [] and against["only_in_this_run"] == []
    for cell in against["cells"]:
        ref_values = [r["test_acc"] for r in ref["records"] if r["label"] == cell["label"]]
        assert list(cell["reference"]) == ref_values and len(cell["candidate"]) == 2
        if len(set(ref_values) | set(cell["candidate"])) == 1:  # one accuracy on 20 images for every seed: the
            # means are equal and so is p, 1; scipy's is NaN, or with 3 and 2 seeds of 0.1 a spurious 0.353 (its
            # float mean is an ulp off the value, which against a zero spread makes a t of 1.1)
            assert cell["p_value"] == 1.0 and cell["within_noise"] is True
            continue
        expected = stats.ttest_ind(ref_values, cell["candidate"], equal_var=True).pvalue
        if not math.isnan(expected):  # constant within each side: scipy has no p, ours says 1 or 0
            assert cell["p_value"] == pytest.approx(float(expected), rel=1e-9)


@pytest.mark.parametrize("flags,message", [
    (["--grid", "g.yaml", "--seeds", "0"], "--seeds: a count of at least 1"),
    (["--grid", "g.yaml", "--seeds", "1,1"], "a list of distinct integers"),
    (["--seeds", "2"], "--against and --seeds need --grid FILE"),
    (["--grid", "g.yaml", "--against", "missing.json"], "--against missing.json: no such file"),
    (["--grid", "g.yaml", "--against", "g.yaml"], "not the JSON of a `bench perf --grid FILE --json` run"),
    (["--grid", "g.yaml", "--against", "other.json"], "are none of g.yaml's (cosface, softmax, ...)"),
])
def test_bench_perf_against_and_seeds_errors_stop_before_training(tiny_mnist_grid, capsys, flags, message):
    (tiny_mnist_grid / "other.json").write_text(json.dumps(
        {"grid": {"records": [{"label": "arcface", "seed": 0, "status": "finished", "test_acc": 0.5}]}}))
    before = sorted(p.name for p in tiny_mnist_grid.iterdir())
    try:
        code = main(["perf", *flags])
    except SystemExit as err:  # argparse's own exit for a bad --seeds value
        code = err.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in tiny_mnist_grid.iterdir()) == before  # nothing trained, nothing written
