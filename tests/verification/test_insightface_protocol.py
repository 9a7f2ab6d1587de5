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
