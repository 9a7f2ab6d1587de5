"""The 10-fold accuracy against insightface's LFW evaluation, written here from its formulas
(recognition/arcface_torch/eval/verification.py: ``calculate_roc``, ``calculate_accuracy``), in float64, on
the same unit features: squared distance ``d = ||e1 - e2||^2``, "same" when ``d < threshold``, thresholds
``np.arange(0, 4, 0.01)``, the first best one on the nine training folds (``np.argmax``) applied to the held-out
fold, folds from ``sklearn.model_selection.KFold(10, shuffle=False)`` over the pairs in file order."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import KFold

from bench.verification import verification_metrics
from registry.datasets.pairs import fold_blocks


def unit_feature_pairs(seed: int, n_pairs: int = 6000, *, noise: float = 1.0, dim: int = 64):
    """LFW-shaped pairs of unit features: half the pairs share a source vector, each side adds its own noise."""
    rng = np.random.default_rng(seed)
    same = rng.permutation(np.arange(n_pairs) % 2 == 0)
    a = rng.normal(size=(n_pairs, dim))
    b = np.where(same[:, None], a, rng.normal(size=(n_pairs, dim))) + noise * rng.normal(size=(n_pairs, dim))
    a = a + noise * rng.normal(size=(n_pairs, dim))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    return a, b, same


def insightface_roc_accuracy(dist: np.ndarray, same: np.ndarray, n_folds: int = 10):
    """insightface's ``calculate_roc`` accuracy: per KFold split, the first training-best of the 400
    distance thresholds applied to the test split. Returns (fold accuracies, chosen distance thresholds)."""
    thresholds = np.arange(0, 4, 0.01)
    accuracies, chosen = [], []
    for train, test in KFold(n_splits=n_folds, shuffle=False).split(np.arange(len(dist))):
        acc_train = [np.sum((dist[train] < t) == same[train]) / len(train) for t in thresholds]
        best = thresholds[int(np.argmax(acc_train))]
        accuracies.append(np.sum((dist[test] < best) == same[test]) / len(test))
        chosen.append(best)
    return np.array(accuracies), np.array(chosen)


@pytest.mark.parametrize(("seed", "noise", "n_pairs"), [(0, 1.0, 6000), (1, 1.3, 6000), (2, 1.7, 6000),
                                                        (3, 0.8, 6000), (4, 1.3, 2003)])
def test_fold_accuracies_equal_insightface_on_the_same_features(seed, noise, n_pairs):
    a, b, same = unit_feature_pairs(seed, n_pairs, noise=noise)
    ref_acc, ref_t = insightface_roc_accuracy(np.sum(np.square(a - b), 1), same)
    # folds as the pair loaders number them: consecutive blocks in file order, as KFold(shuffle=False)
    result = verification_metrics(np.sum(a * b, 1), same, fold_blocks(n_pairs, 10))
    np.testing.assert_array_equal(result.fold_accuracies, ref_acc)
    assert result.accuracy == pytest.approx(np.mean(ref_acc), abs=1e-15)
    assert result.accuracy_std == pytest.approx(np.std(ref_acc), abs=1e-15)
    # reported as a cosine: d < t  <=>  cos > 1 - t / 2 for unit features
    np.testing.assert_allclose(result.thresholds, 1 - ref_t / 2, atol=1e-12)


@pytest.mark.parametrize("step", [0.005, 0.02])
def test_ties_on_the_grid_are_broken_as_insightface_does(step):
    # scores on a coarse lattice: many tied scores, many training-accuracy ties, distances exactly on grid
    # points; insightface sees d = 2 - 2 cos for unit features whose cosine is the score
    a, b, same = unit_feature_pairs(5, 1200, noise=1.4)
    scores = np.round(np.sum(a * b, 1) / step) * step
    ref_acc, ref_t = insightface_roc_accuracy(2.0 - 2.0 * scores, same)
    result = verification_metrics(scores, same, fold_blocks(1200, 10))
    np.testing.assert_array_equal(result.fold_accuracies, ref_acc)
    np.testing.assert_allclose(result.thresholds, 1 - ref_t / 2, atol=1e-12)


def test_the_exact_search_stays_available():
    a, b, same = unit_feature_pairs(6, 600)
    scores, folds = np.sum(a * b, 1), fold_blocks(600, 10)
    exact = verification_metrics(scores, same, folds, search="exact")
    for f, t in enumerate(exact.thresholds):  # the best training accuracy over every split of the scores
        train = folds != f
        s = np.sort(scores[train])
        best = max(np.mean((scores[train] > c) == same[train]) for c in np.r_[s[0] - 1, s])
        assert np.mean((scores[train] > t) == same[train]) == pytest.approx(best, abs=1e-12)
    with pytest.raises(ValueError, match="search"):
        verification_metrics(scores, same, folds, search="grid")


def slinear(x: np.ndarray, y: np.ndarray, at: float) -> float:
    """``scipy.interpolate.interp1d(x, y, kind="slinear")(at)`` as scipy < 1.9 computed it, which insightface's
    ``calculate_val`` relies on: its ``x`` (the training FARs) repeats values, which scipy >= 1.9 refuses
    ("Expect x to not have duplicates", scipy issue 21550). It sorted ``x`` stably, then built the linear
    B-spline with knots ``r_[x[0], x, x[-1]]`` and coefficients ``y``."""
    from scipy.interpolate import BSpline

    order = np.argsort(x, kind="mergesort")
    x, y = x[order], y[order]
    return float(BSpline.construct_fast(np.r_[x[0], x, x[-1]], y, 1)(at))


def insightface_val(dist: np.ndarray, same: np.ndarray, far_target: float, n_folds: int = 10):
    """insightface's ``calculate_val`` and ``calculate_val_far``: (val mean, val std, far mean)."""
    thresholds = np.arange(0, 4, 0.001)
    vals, fars = [], []
    for train, test in KFold(n_splits=n_folds, shuffle=False).split(np.arange(len(dist))):
        far_train = np.array([np.sum((dist[train] < t) & ~same[train]) / np.sum(~same[train]) for t in thresholds])
        threshold = slinear(far_train, thresholds, far_target) if np.max(far_train) >= far_target else 0.0
        accepted = dist[test] < threshold
        vals.append(np.sum(accepted & same[test]) / np.sum(same[test]))
        fars.append(np.sum(accepted & ~same[test]) / np.sum(~same[test]))
    return np.mean(vals), np.std(vals), np.mean(fars)


@pytest.mark.parametrize(("seed", "noise", "n_pairs"), [(0, 1.0, 6000), (1, 1.3, 6000), (7, 0.6, 6000),
                                                        (4, 1.3, 2003)])
def test_val_at_far_equals_insightface_calculate_val(seed, noise, n_pairs):
    a, b, same = unit_feature_pairs(seed, n_pairs, noise=noise)
    result = verification_metrics(np.sum(a * b, 1), same, fold_blocks(n_pairs, 10), fars=(1e-3, 1e-4, 1e-2))
    for far in (1e-3, 1e-4, 1e-2):
        ref = insightface_val(np.sum(np.square(a - b), 1), same, far)
        assert result.val_at_far[far] == pytest.approx(ref, abs=1e-12)


def test_val_at_far_when_the_training_folds_never_reach_the_target():
    # every different pair at cosine -1 (distance 4, beyond the grid): the training FAR stays 0 < target,
    # so insightface's threshold is 0 and nothing is accepted
    same = np.tile([True, False], 50)
    scores = np.where(same, 0.5, -1.0)
    result = verification_metrics(scores, same, np.repeat(np.arange(10), 10))
    assert result.val_at_far[1e-3] == (0.0, 0.0, 0.0)


def test_slinear_reference_is_scipys_interpolation_where_scipy_still_accepts_it():
    from scipy.interpolate import interp1d

    x, y = np.array([0.0, 0.1, 0.25, 0.7]), np.array([1.0, 2.0, 4.0, 3.0])
    for at in (0.0, 0.05, 0.1, 0.2, 0.7):
        assert slinear(x, y, at) == pytest.approx(float(interp1d(x, y, kind="slinear")(at)), abs=1e-15)


def test_val_at_far_is_nan_when_a_held_out_fold_has_no_different_pairs():
    # insightface divides by the fold's count of different pairs; here fold 0 has none
    a, b, same = unit_feature_pairs(8, 200)
    folds = np.where(same, np.arange(200) % 10, 1 + np.arange(200) % 9)
    result = verification_metrics(np.sum(a * b, 1), same, folds)
    assert all(np.isnan(v) for v in result.val_at_far[1e-3])
    assert np.isfinite(result.accuracy)


def degenerate_pair_sets():
    """Small pair sets at the protocol's edges: (scores, same) parameters."""
    rng = np.random.default_rng(9)
    one_third_same = np.arange(40) % 3 == 0
    grid = np.arange(0, 4, 0.01)
    on_grid = 1.0 - grid[rng.integers(0, len(grid), 600)] / 2.0  # every distance near or on a grid threshold
    odd_same = np.arange(37) % 2 == 0  # both kinds in every fold (insightface divides by each kind's count)
    odd = np.where(odd_same, rng.normal(0.5, 0.3, 37), rng.normal(0.1, 0.3, 37)).clip(-1.0, 1.0)
    return [pytest.param(np.full(40, 0.3), one_third_same, id="all-equal-0.3"),
            pytest.param(np.full(40, 1.0), one_third_same, id="all-equal-1"),  # distance 0: accepted from 0.01 on
            pytest.param(np.full(40, -1.0), one_third_same, id="all-equal--1"),  # distance 4: beyond the grid
            pytest.param(on_grid, rng.random(600) < 0.5, id="on-grid"),
            pytest.param(odd, odd_same, id="37-pairs")]  # KFold: seven folds of 4 pairs, three of 3


@pytest.mark.parametrize(("scores", "same"), degenerate_pair_sets())
def test_edge_cases_equal_insightface_and_sklearn(scores, same):
    from sklearn.metrics import roc_auc_score

    dist = 2.0 - 2.0 * scores
    result = verification_metrics(scores, same, fold_blocks(len(scores), 10))
    ref_acc, ref_t = insightface_roc_accuracy(dist, same)
    np.testing.assert_array_equal(result.fold_accuracies, ref_acc)
    np.testing.assert_allclose(result.thresholds, 1 - ref_t / 2, atol=1e-12)
    assert result.val_at_far[1e-3] == pytest.approx(insightface_val(dist, same, 1e-3), abs=1e-12)
    assert result.auc == pytest.approx(roc_auc_score(same, scores), abs=1e-12)


def test_all_equal_scores_by_hand():
    # 14 same and 26 different pairs, one score: no threshold separates them. insightface's grid starts at
    # distance 0, where nothing is accepted, so every fold keeps "all different": accuracy 26/40, threshold
    # cosine 1. The exact search rejects everything as well. AUC 0.5; nothing is accepted at FAR <= 1e-3.
    same = np.arange(40) % 3 == 0
    for search in ("insightface", "exact"):
        result = verification_metrics(np.full(40, 0.3), same, fold_blocks(40, 10), search=search)
        assert result.accuracy == pytest.approx(26 / 40, abs=1e-15)
        assert all(np.mean(0.3 > t) == 0.0 for t in result.thresholds)
    assert result.auc == 0.5 and result.tar_at_far[1e-3] == 0.0


def test_a_fold_of_one_kind_is_scored_as_insightface_scores_it():
    # fold 0 holds only same pairs: its accuracy is its true-accept rate at the nine others' threshold, as
    # insightface's calculate_accuracy counts it (VAL is NaN there, where insightface divides by zero)
    a, b, same = unit_feature_pairs(10, 300, noise=1.2)
    same[:30] = True
    ref_acc, _ = insightface_roc_accuracy(np.sum(np.square(a - b), 1), same)
    result = verification_metrics(np.sum(a * b, 1), same, fold_blocks(300, 10))
    np.testing.assert_array_equal(result.fold_accuracies, ref_acc)
    assert 0.0 < result.fold_accuracies[0] < 1.0
    assert np.isnan(result.val_at_far[1e-3][0])
