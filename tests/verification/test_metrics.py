"""Verification metrics against references computed here: scikit-learn's ROC, a brute-force 10-fold protocol
(``search="exact"``), and hand-made pairs whose best threshold is known. insightface's threshold grid, the
default search, is checked against insightface's formulas in test_insightface_protocol.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from bench.verification import (
    VerificationResult,
    best_threshold,
    plot_roc,
    top1_accuracy,
    verification_metrics,
)
from bench.verification import roc_curve as our_roc


def random_pairs(seed: int, per_fold: int = 600, *, quantize: int | None = None):
    """LFW-shaped random pairs: 10 folds, half of each fold same; same pairs score higher on average."""
    rng = np.random.default_rng(seed)
    n = 10 * per_fold
    same = np.tile(np.r_[np.ones(per_fold // 2, bool), np.zeros(per_fold - per_fold // 2, bool)], 10)
    folds = np.repeat(np.arange(10), per_fold)
    scores = np.where(same, rng.normal(0.6, 0.2, n), rng.normal(0.2, 0.2, n))
    if quantize:  # many ties
        scores = np.round(scores * quantize) / quantize
    return scores, same, folds


def reference_best_train_accuracy(scores, same, folds):
    """Brute force, per held-out fold: every threshold of sklearn's roc_curve on the nine training folds
    (accept when score >= t; accept-all and accept-none included), the best training accuracy."""
    best = []
    for f in np.unique(folds):
        train = folds != f
        _, _, thr = roc_curve(same[train], scores[train], drop_intermediate=False)
        thr = np.r_[thr, -np.inf]
        accepted = scores[train][None, :] >= thr[:, None]
        best.append(np.max(np.mean(accepted == same[train][None, :], axis=1)))
    return np.array(best)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_and_tar_match_sklearn_roc_curve(seed):
    scores, same, folds = random_pairs(seed)
    result = verification_metrics(scores, same, folds)
    # AUC as sklearn computes it
    assert result.auc == pytest.approx(roc_auc_score(same, scores), abs=1e-12)
    # TAR at FAR: the largest TPR among ROC points with FPR <= FAR
    fpr, tpr, _ = roc_curve(same, scores, drop_intermediate=False)
    for far in (1e-3, 1e-4):
        assert result.tar_at_far[far] == pytest.approx(tpr[fpr <= far].max(), abs=1e-12)
    # and the stored curve is sklearn's, point for point
    np.testing.assert_allclose(result.roc[0], fpr, atol=1e-12)
    np.testing.assert_allclose(result.roc[1], tpr, atol=1e-12)


@pytest.mark.parametrize("quantize", [None, 50])
def test_roc_curve_with_ties_matches_sklearn(quantize):
    scores, same, _ = random_pairs(3, quantize=quantize)
    fpr, tpr, thr = our_roc(scores, same)
    ref_fpr, ref_tpr, ref_thr = roc_curve(same, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr, atol=1e-12)
    np.testing.assert_allclose(tpr, ref_tpr, atol=1e-12)
    np.testing.assert_allclose(thr[1:], ref_thr[1:], atol=1e-12)


@pytest.mark.parametrize("quantize", [None, 20])
def test_ten_fold_accuracy_matches_brute_force_reference(quantize):
    scores, same, folds = random_pairs(4, per_fold=200, quantize=quantize)
    result = verification_metrics(scores, same, folds, search="exact")
    best_train = reference_best_train_accuracy(scores, same, folds)
    for f, t in enumerate(result.thresholds):
        train, test = folds != f, folds == f
        # the chosen threshold reaches the best training accuracy the brute force finds
        assert np.mean((scores[train] > t) == same[train]) == pytest.approx(best_train[f], abs=1e-12)
        # and the fold accuracy is that threshold applied to the held-out fold
        assert result.fold_accuracies[f] == pytest.approx(np.mean((scores[test] > t) == same[test]), abs=1e-12)
    assert result.accuracy == pytest.approx(np.mean(result.fold_accuracies), abs=1e-12)
    assert result.accuracy_std == pytest.approx(np.std(result.fold_accuracies), abs=1e-12)
    assert 0.8 < result.accuracy < 0.9  # two Gaussians of std 0.2, 0.4 apart: about 0.84


def test_hand_made_pairs_with_a_known_best_threshold():
    # ten folds, each: same pairs score 0.8, 0.7, 0.6, 0.35; different pairs 0.5, 0.4, 0.2, 0.1. Sorted,
    # d d s d d s s s: the only split with 7 of 8 right is between 0.5 and 0.6 (the same pair at 0.35 is lost),
    # so the threshold from any nine folds is the midpoint 0.55 and every held-out fold scores 7/8.
    same_scores, diff_scores = [0.8, 0.7, 0.6, 0.35], [0.5, 0.4, 0.2, 0.1]
    scores = np.tile(same_scores + diff_scores, 10)
    same = np.tile([True] * 4 + [False] * 4, 10)
    folds = np.repeat(np.arange(10), 8)
    result = verification_metrics(scores, same, folds, search="exact")
    assert result.thresholds == pytest.approx([0.55] * 10)
    assert result.fold_accuracies == pytest.approx([7 / 8] * 10)
    assert result.accuracy == pytest.approx(0.875)
    assert result.accuracy_std == pytest.approx(0.0)


def test_perfectly_separable_pairs_give_full_accuracy_and_auc():
    scores = np.r_[np.linspace(0.5, 1.0, 300), np.linspace(-0.2, 0.3, 300)]
    same = np.r_[np.ones(300, bool), np.zeros(300, bool)]
    folds = np.arange(600) % 10
    result = verification_metrics(scores, same, folds, search="exact")
    assert result.accuracy == 1.0 and result.auc == 1.0
    assert result.tar_at_far == {1e-3: 1.0, 1e-4: 1.0}
    # each threshold sits midway in the training folds' gap (about 0.3 to 0.5)
    for f, t in enumerate(result.thresholds):
        train = folds != f
        assert t == pytest.approx((scores[train & ~same].max() + scores[train & same].min()) / 2, abs=1e-12)


def test_best_threshold_takes_the_middle_of_a_plateau():
    # pairs 0.1(diff) 0.2(same) 0.3(diff) 0.4(same): candidates below 0.1, 0.15, 0.25, 0.35, above 0.4 score
    # 2, 3, 2, 3, 2 of 4 -> tied best at 0.15 and 0.35; the lower middle one is taken
    t, acc = best_threshold(np.array([0.1, 0.2, 0.3, 0.4]), np.array([False, True, False, True]))
    assert acc == 0.75 and t == pytest.approx(0.15)
    # three tied: the middle one
    t, _ = best_threshold(np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]),
                          np.array([False, True, False, True, False, True]))
    assert t == pytest.approx(0.35)


def test_as_metrics_names_are_valid_mlflow_metric_names():
    scores, same, folds = random_pairs(5)
    metrics = verification_metrics(scores, same, folds).as_metrics("lfw")
    assert set(metrics) == {"lfw_acc", "lfw_acc_std", "lfw_threshold", "lfw_auc", "lfw_tar_far1e-3",
                            "lfw_tar_far1e-4", "lfw_val_far1e-3", "lfw_val_far1e-3_std", "lfw_val_far1e-4",
                            "lfw_val_far1e-4_std"}
    import re

    assert all(re.fullmatch(r"[\w\-./ ]+", k) for k in metrics)  # MLflow's allowed characters, no '@'
    assert all(isinstance(v, float) for v in metrics.values())


def test_result_is_frozen():
    result = verification_metrics(*random_pairs(6))
    assert isinstance(result, VerificationResult)
    with pytest.raises(AttributeError):
        result.accuracy = 1.0  # type: ignore[misc]


def test_rejects_pairs_of_one_kind():
    with pytest.raises(ValueError, match="both same and different"):
        verification_metrics(np.array([0.1, 0.2]), np.array([True, True]), np.array([0, 1]))


def test_rejects_a_single_fold():
    with pytest.raises(ValueError, match="at least two folds"):
        verification_metrics(np.array([0.1, 0.2]), np.array([True, False]), np.array([0, 0]))


def test_rejects_nan_scores():
    with pytest.raises(ValueError, match="finite"):
        verification_metrics(np.array([0.1, np.nan]), np.array([True, False]), np.array([0, 1]))


def test_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="one entry per pair"):
        verification_metrics(np.array([0.1, 0.2, 0.3]), np.array([True, False]), np.array([0, 1]))
    with pytest.raises(ValueError, match="folds"):
        verification_metrics(np.array([0.1, 0.2]), np.array([True, False]), np.array([0, 1, 1]))


def test_top1_accuracy_from_logits_and_from_predictions():
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    labels = torch.tensor([1, 0, 0])
    assert top1_accuracy(logits, labels) == pytest.approx(2 / 3)
    assert top1_accuracy(np.array([1, 0, 0]), np.array([1, 0, 0])) == 1.0
    with pytest.raises(ValueError, match="differ in length"):
        top1_accuracy(np.array([1, 0]), np.array([1, 0, 0]))


def test_plot_roc_writes_a_png(tmp_path):
    result = verification_metrics(*random_pairs(7))
    path = plot_roc(result, tmp_path / "sub" / "roc.png")
    assert path == tmp_path / "sub" / "roc.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(path.parent.glob(".*.tmp"))


@pytest.mark.parametrize("low", [0.3, 0.9, 0.123456789, -0.7])
def test_threshold_between_adjacent_doubles_separates_them(low):
    # the two scores are neighbouring doubles; their rounded midpoint can equal the higher one, and then
    # `score > threshold` would reject the same pairs. The reference: accuracy counted directly at the threshold.
    high = np.nextafter(low, np.inf)
    scores = np.r_[np.full(10, high), np.full(10, low)]
    same = np.r_[np.ones(10, bool), np.zeros(10, bool)]
    t, acc = best_threshold(scores, same)
    assert acc == 1.0 and np.mean((scores > t) == same) == 1.0
    result = verification_metrics(scores, same, np.arange(20) % 10, search="exact")
    assert result.accuracy == 1.0 and result.fold_accuracies == (1.0,) * 10


def test_accept_all_threshold_on_a_large_score_scale():
    # scores beyond 2**53, where score - 1 == score: accepting everything must still accept the lowest score
    scores = np.array([1e17, 1e17, 1e17, 1e17, 3e17, 3e17])
    same = np.array([True, True, True, False, True, True])
    t, acc = best_threshold(scores, same)
    assert acc == pytest.approx(np.mean((scores > t) == same)) == pytest.approx(5 / 6)
