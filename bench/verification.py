"""Evaluation protocols: closed-set top-1 accuracy, and pair verification as the face papers measure it.

Pair verification follows the LFW "unrestricted, labeled outside data" protocol of View 2
(http://vis-www.cs.umass.edu/lfw/lfw.pdf) as insightface (https://github.com/deepinsight/insightface,
recognition/arcface_torch/eval/verification.py) evaluates it:

1. every image is embedded twice, as is and mirrored left-right; its feature is the *sum* of the two
   (the flip test; SphereFace's Caffe evaluation, wy1iu/sphereface test/code/evaluation.m, concatenates
   the two instead and subtracts the nine training folds' mean feature before normalizing);
2. a pair's score is the cosine similarity of its two features;
3. for each of the ten folds, the threshold that maximizes accuracy on the other nine folds is applied to
   the held-out fold; the reported accuracy is the mean of the ten fold accuracies (std beside it). The
   threshold is searched as insightface's ``calculate_roc`` searches it, so that the same scores give
   insightface's accuracy to the pair: on the squared distance between unit features, ``d = 2 - 2 cos``,
   at ``np.arange(0, 4, 0.01)`` (cosine steps of 0.005), "same" when ``d < t``, the first best one on ties.
   ``search="exact"`` searches every split of the scores instead (up to 0.003 apart at 94 % accuracy);
4. VAL@FAR as insightface's ``calculate_val`` (FaceNet's "validation rate"): per fold, the distance threshold
   at which the nine other folds' false-accept rate reaches the target, linearly interpolated on
   ``np.arange(0, 4, 0.001)``; the true-accept rate on the held-out fold, its mean and std over the folds.

ROC AUC and TAR at fixed FAR are also computed over all pairs at once (no folds, no interpolation).

Example::

    pairs = decoded_pairs(bundle.pairs)              # once: images from files are decoded here
    scores = pair_scores(lambda x: backbone(x.to(device)), pairs)   # every epoch
    result = verification_metrics(scores, bundle.pairs.same.numpy(), bundle.pairs.folds.numpy())
    mlflow.log_metrics(result.as_metrics("lfw"))   # lfw_acc, lfw_acc_std, lfw_auc, lfw_tar_far1e-3, ...
    plot_roc(result, "roc_lfw.png")
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from bench.atomic import replace_file
from registry.datasets import PairSet, SkippedSample
from registry.datasets._images import normalize_uint8

__all__ = ["top1_accuracy", "pair_scores", "decoded_pairs", "verification_metrics", "VerificationResult", "roc_curve",
           "best_threshold", "grid_threshold", "val_at_far", "plot_roc", "FARS", "metric_names"]

#: False-accept rates at which the true-accept rate is reported.
FARS = (1e-3, 1e-4)

#: insightface's thresholds on the squared distance between unit features (``2 - 2 cos``, in ``[0, 4]``):
#: the accuracy's search grid and the grid VAL@FAR interpolates on (arcface_torch eval/verification.py,
#: ``evaluate``).
ACC_DIST_THRESHOLDS = np.arange(0, 4, 0.01)
VAL_DIST_THRESHOLDS = np.arange(0, 4, 0.001)

#: Most bytes `decoded_pairs` holds: all 13,233 LFW images, as uint8 pixels at 112x112, take 498 MB.
MAX_DECODED_BYTES = 2**30


# ---------------------------------------------------------------------------------------------- closed set
def top1_accuracy(logits_or_pred: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> float:
    """Fraction of samples whose top-1 prediction is the label.

    Args:
        logits_or_pred: ``(N, C)`` scores (logits or probabilities; the argmax over C is taken) or ``(N,)``
            predicted class indices.
        labels: ``(N,)`` integer class indices.

    Returns:
        Accuracy in ``[0, 1]``; ``nan`` for ``N == 0``.

    Raises:
        ValueError: shapes that do not match.
    """
    pred = np.asarray(logits_or_pred.detach().cpu() if isinstance(logits_or_pred, torch.Tensor) else logits_or_pred)
    lab = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels).reshape(-1)
    if pred.ndim == 2:
        pred = pred.argmax(axis=1)
    elif pred.ndim != 1:
        raise ValueError(f"logits_or_pred must be (N, C) or (N,), but got shape {pred.shape}")
    if len(pred) != len(lab):
        raise ValueError(f"predictions and labels differ in length: {len(pred)} vs {len(lab)}")
    return float(np.mean(pred == lab)) if len(lab) else float("nan")


# ------------------------------------------------------------------------------------------------ scoring
def _image(item: Any, index: int) -> torch.Tensor:
    if isinstance(item, SkippedSample):
        raise ValueError(f"pair image {index} could not be read: {item.path}: {item.reason}")
    if isinstance(item, (tuple, list)):  # (image, label) datasets
        item = item[0]
    if not isinstance(item, torch.Tensor):
        item = torch.as_tensor(np.asarray(item))
    return item


def _collate(batch: list[tuple[int, Any]]) -> torch.Tensor:
    return torch.stack([_image(item, i) for i, item in batch])


class _Indexed(Dataset):
    """Items of ``base`` at ``indices``, each with its index (so errors name the image)."""

    def __init__(self, base: Dataset, indices: np.ndarray) -> None:
        self.base, self.indices = base, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[int, Any]:
        j = int(self.indices[i])
        return j, self.base[j]


@torch.no_grad()
def pair_scores(embed: Callable[[torch.Tensor], torch.Tensor], pairs: PairSet, *, batch_size: int = 256,
                flip: bool = True, device: torch.device | str | None = None, num_workers: int = 0) -> np.ndarray:
    """Cosine similarity of every pair's two embeddings, with the flip test.

    Only images that some pair refers to are embedded, each once. With ``flip``, an image's feature is
    ``embed(x) + embed(x.flip(-1))`` (the sum of the image's and its mirror image's embeddings, as insightface
    does; SphereFace's Caffe evaluation concatenates them), then the cosine is taken.

    Args:
        embed: maps a float batch ``(B, C, H, W)`` to embeddings ``(B, D)``; it is called in ``torch.no_grad``
            and must put the model in eval mode itself (BatchNorm statistics).
        pairs: `PairSet`; ``pairs.images`` is an ``(M, C, H, W)`` tensor or a Dataset whose item i is
            image i (a ``(C, H, W)`` tensor, or a tuple whose first element is one): float as ``embed`` takes
            it, or uint8 pixels, scaled here by ``(pixel - 127.5) / 127.5``.
        batch_size: images per call to ``embed`` (two calls per batch with ``flip``).
        flip: add the mirrored image's embedding.
        device: where batches are moved before ``embed``; None leaves them where they are.
        num_workers: DataLoader workers when ``pairs.images`` is a Dataset.

    Returns:
        float64 ``(P,)`` cosine similarities in ``[-1, 1]``, in the order of ``pairs.left``/``pairs.right``.

    Raises:
        ValueError: a pair index out of range, or an unreadable image in a Dataset.
    """
    left, right, used = _pair_indices(pairs)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, but got {batch_size=}")

    if isinstance(pairs.images, torch.Tensor):
        images = pairs.images
        batches = (images[torch.as_tensor(used[i:i + batch_size], device=images.device)]
                   for i in range(0, len(used), batch_size))
    else:
        batches = iter(DataLoader(_Indexed(pairs.images, used), batch_size=batch_size, shuffle=False,
                                  num_workers=num_workers, collate_fn=_collate))
    feats = []
    for batch in batches:
        if batch.dtype == torch.uint8:  # pixels, scaled before the move, bit for bit as `decode_image` scales them
            batch = normalize_uint8(batch)  # (on CUDA, a division by a scalar multiplies by its reciprocal)
        if device is not None:
            batch = batch.to(device, non_blocking=True)
        f = embed(batch).float()
        if flip:
            f = f + embed(batch.flip(-1)).float()
        feats.append(f.reshape(len(batch), -1).cpu())
    if not feats:
        return np.zeros(0, dtype=np.float64)
    feat = torch.nn.functional.normalize(torch.cat(feats).double(), dim=1)
    row = _rows(len(pairs.images), used)
    a, b = feat[torch.from_numpy(row[left])], feat[torch.from_numpy(row[right])]
    return (a * b).sum(1).clamp(-1.0, 1.0).numpy()


def decoded_pairs(pairs: PairSet, *, batch_size: int = 256, num_workers: int = 0,
                  max_bytes: int = MAX_DECODED_BYTES) -> PairSet:
    """``pairs`` with the images its pairs use decoded once, into one tensor, for evaluating every epoch.

    A Dataset of image files is otherwise decoded again at each `pair_scores` call. The images are kept as
    the Dataset gives them (the pairs files' uint8 pixels: all 13,233 LFW images at 112x96 would take
    427 MB), in the order of their indices, so that `pair_scores` embeds the same batches and gives the
    same scores, bit for bit.

    Args:
        pairs: `PairSet`; one whose ``images`` is a tensor already is returned as is.
        batch_size: images per DataLoader batch.
        num_workers: DataLoader workers that decode.
        max_bytes: the most the decoded images may take; a larger set is returned as is, to be streamed
            by `pair_scores` at every call (its size is known from the first batch, the only one decoded).

    Returns:
        A `PairSet` whose ``images`` is a ``(M, C, H, W)`` tensor of the M images used (``left``/``right``
        renumbered), or ``pairs``.

    Raises:
        ValueError: a pair index out of range, or an unreadable image.
    """
    left, right, used = _pair_indices(pairs)
    if isinstance(pairs.images, torch.Tensor) or not len(used):
        return pairs
    images, done = None, 0
    for batch in DataLoader(_Indexed(pairs.images, used), batch_size=batch_size, shuffle=False,
                            num_workers=num_workers, collate_fn=_collate):
        if images is None:
            if batch[0].nbytes * len(used) > max_bytes:
                return pairs
            images = torch.empty((len(used), *batch.shape[1:]), dtype=batch.dtype)
        images[done:done + len(batch)] = batch
        done += len(batch)
    row = _rows(len(pairs.images), used)
    return dataclasses.replace(pairs, images=images, left=torch.from_numpy(row[left]),
                               right=torch.from_numpy(row[right]))


def _pair_indices(pairs: PairSet) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(left, right, used)``: the pairs' image indices and the distinct ones, sorted; checked in range."""
    left = np.asarray(pairs.left, dtype=np.int64).reshape(-1)
    right = np.asarray(pairs.right, dtype=np.int64).reshape(-1)
    if len(left) != len(right):
        raise ValueError(f"pairs.left and pairs.right differ in length: {len(left)} vs {len(right)}")
    n_images = len(pairs.images)
    used = np.unique(np.concatenate([left, right]))
    if len(used) and (used[0] < 0 or used[-1] >= n_images):
        raise ValueError(f"pair indices must be in 0..{n_images - 1}, but got {used[0]}..{used[-1]}")
    return left, right, used


def _rows(n_images: int, used: np.ndarray) -> np.ndarray:
    """Image index -> position in ``used`` (-1 for an image no pair uses)."""
    row = np.full(n_images, -1, dtype=np.int64)
    row[used] = np.arange(len(used))
    return row


# ------------------------------------------------------------------------------------------------ metrics
def roc_curve(scores: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC over every distinct score, as ``sklearn.metrics.roc_curve(same, scores, drop_intermediate=False)``.

    A pair is accepted (predicted "same") when ``score >= threshold``.

    Returns:
        ``(fpr, tpr, thresholds)``, each ``(K + 1,)`` for K distinct scores; thresholds decrease, the first
        is ``inf`` (nothing accepted: fpr = tpr = 0).

    Raises:
        ValueError: when the pairs are not of both kinds.
    """
    scores, same = _check(scores, same)
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], same[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each distinct score
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    tpr = np.r_[0.0, tp / tp[-1]]
    fpr = np.r_[0.0, fp / fp[-1]]
    return fpr, tpr, np.r_[np.inf, s[last]]


def best_threshold(scores: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """The threshold that maximizes verification accuracy on these pairs, and that accuracy.

    A pair is predicted "same" when ``score > threshold``. The candidates are the midpoints between
    consecutive distinct scores, plus one below the smallest and one above the largest score (accept
    everything, accept nothing): every distinct split of the sorted scores, each at the largest margin
    from the scores it separates. When several candidates reach the best accuracy, the middle one of them
    (in sorted order, the lower of the two middle ones for an even count) is taken, so a plateau of equally
    good thresholds yields its centre rather than its edge.

    Returns:
        ``(threshold, accuracy)``.
    """
    scores, same = _check(scores, same, both=False)
    u, inverse = np.unique(scores, return_inverse=True)
    n_same = np.bincount(inverse, weights=same, minlength=len(u))
    n_diff = np.bincount(inverse, weights=~same, minlength=len(u))
    # candidate j (0..len(u)) rejects the j smallest distinct scores: correct = diff below + same above
    diff_below = np.r_[0.0, np.cumsum(n_diff)]
    same_above = same.sum() - np.r_[0.0, np.cumsum(n_same)]
    correct = diff_below + same_above
    # candidate j must lie in [u[j-1], u[j]) for `score > threshold` to reject exactly the j smallest: the
    # rounded midpoint of two adjacent doubles can equal u[j], and u[0] - 1 equals u[0] for |u[0]| >= 2**53
    mid = (u[:-1] + u[1:]) / 2.0
    mid = np.where(mid < u[1:], mid, u[:-1])
    below = u[0] - 1.0 if u[0] - 1.0 < u[0] else np.nextafter(u[0], -np.inf)
    candidates = np.r_[below, mid, u[-1] + 1.0]
    best = np.flatnonzero(correct == correct.max())
    j = best[(len(best) - 1) // 2]
    return float(candidates[j]), float(correct[j] / len(scores))


def grid_threshold(dist: np.ndarray, same: np.ndarray,
                   thresholds: np.ndarray = ACC_DIST_THRESHOLDS) -> tuple[float, float]:
    """insightface's threshold search (``calculate_roc``): the first of ``thresholds`` that maximizes accuracy.

    Args:
        dist: ``(P,)`` squared distances between unit features, ``2 - 2 cos``; a pair is predicted "same"
            when ``dist < threshold``.
        same: ``(P,)`` bool.
        thresholds: increasing candidate distances (insightface: ``np.arange(0, 4, 0.01)``).

    Returns:
        ``(distance threshold, accuracy)``; of tied thresholds the smallest (the strictest), as ``np.argmax``.
    """
    dist, same = _check(dist, same, both=False)
    # pairs with dist < t, per threshold: same ones are right, different ones wrong
    accepted_same = np.searchsorted(np.sort(dist[same]), thresholds, side="left")
    accepted_diff = np.searchsorted(np.sort(dist[~same]), thresholds, side="left")
    correct = accepted_same + (np.sum(~same) - accepted_diff)
    j = int(np.argmax(correct))
    return float(thresholds[j]), float(correct[j] / len(dist))


@dataclass(frozen=True, eq=False)
class VerificationResult:
    """Pair-verification metrics (see `verification_metrics`).

    Attributes:
        accuracy: mean of the per-fold accuracies, in ``[0, 1]``.
        accuracy_std: population standard deviation (``ddof=0``, as insightface) of the fold accuracies.
        fold_accuracies: accuracy on each held-out fold, in fold order.
        thresholds: cosine threshold chosen on the other folds for each held-out fold.
        auc: area under the ROC curve over all pairs.
        tar_at_far: ``{far: tar}`` for each FAR in `FARS`, over all pairs: the highest true-accept rate among
            thresholds whose false-accept rate is ``<= far`` (no folds, no interpolation).
        val_at_far: ``{far: (val, val_std, far_mean)}`` for each FAR in `FARS`, per fold as insightface's
            ``calculate_val`` (see `val_at_far`).
        roc: ``(fpr, tpr)`` arrays over all pairs, from (0, 0) to (1, 1).
        num_pairs: pairs evaluated.
    """

    accuracy: float
    accuracy_std: float
    fold_accuracies: tuple[float, ...]
    thresholds: tuple[float, ...]
    auc: float
    tar_at_far: Mapping[float, float]
    roc: tuple[np.ndarray, np.ndarray]
    num_pairs: int = 0
    roc_thresholds: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    val_at_far: Mapping[float, tuple[float, float, float]] = field(default_factory=dict)

    def as_metrics(self, prefix: str = "lfw") -> dict[str, float]:
        """Flat MLflow metric names (letters, digits, ``_ - .`` only).

        Returns:
            ``{prefix}_acc``, ``{prefix}_acc_std``, ``{prefix}_threshold`` (mean chosen threshold),
            ``{prefix}_auc``, ``{prefix}_tar_far1e-3``, ``{prefix}_tar_far1e-4`` (all pairs), and per fold
            ``{prefix}_val_far1e-3``, ``{prefix}_val_far1e-3_std`` and the same at 1e-4 (insightface's VAL).
        """
        out = {f"{prefix}_acc": self.accuracy, f"{prefix}_acc_std": self.accuracy_std,
               f"{prefix}_threshold": float(np.mean(self.thresholds)), f"{prefix}_auc": self.auc}
        out.update({f"{prefix}_tar_far{_far_name(far)}": tar for far, tar in self.tar_at_far.items()})
        for far, (val, val_std, _) in self.val_at_far.items():
            out.update({f"{prefix}_val_far{_far_name(far)}": val, f"{prefix}_val_far{_far_name(far)}_std": val_std})
        return {k: float(v) for k, v in out.items()}


def metric_names(prefix: str = "lfw", fars: tuple[float, ...] = FARS) -> list[str]:
    """The names `VerificationResult.as_metrics` gives a result of `verification_metrics` over ``fars`` (what a
    trial logs for pairs named ``prefix``), without computing one."""
    names = [f"{prefix}_acc", f"{prefix}_acc_std", f"{prefix}_threshold", f"{prefix}_auc"]
    names += [f"{prefix}_tar_far{_far_name(far)}" for far in fars]
    for far in fars:
        names += [f"{prefix}_val_far{_far_name(far)}", f"{prefix}_val_far{_far_name(far)}_std"]
    return names


def verification_metrics(scores: np.ndarray, same: np.ndarray, folds: np.ndarray, *,
                         fars: tuple[float, ...] = FARS,
                         search: Literal["insightface", "exact"] = "insightface") -> VerificationResult:
    """k-fold verification accuracy (LFW View 2 protocol), k-fold VAL@FAR, ROC AUC and TAR at fixed FAR.

    For each fold f, a threshold is chosen on the pairs of every other fold and applied to fold f; the
    accuracy is the mean over folds. ``search="insightface"``: `grid_threshold` on ``d = 2 - 2 * scores``
    (the squared distance of unit features whose cosine is the score), ``d < t`` predicting "same", which
    gives insightface's fold accuracies on the same scores; ``"exact"``: `best_threshold` on the scores,
    ``score > t`` predicting "same". Either way ``thresholds`` are cosines (``1 - t / 2`` for the grid). The
    grid's thresholds are cosines from 1 down to -0.995: scores beyond ``[-1, 1]`` fall on its ends, so
    similarities other than cosines want ``"exact"``.

    Args:
        scores: ``(P,)`` similarity per pair (higher = more alike), e.g. from `pair_scores`.
        same: ``(P,)`` bool, True for a pair of the same identity.
        folds: ``(P,)`` integer fold of each pair (LFW: 0..9, 600 pairs each); at least two folds.
        fars: false-accept rates for ``tar_at_far`` and ``val_at_far``.
        search: ``"insightface"`` or ``"exact"`` (see above).

    Returns:
        `VerificationResult`.

    Raises:
        ValueError: mismatched shapes, non-finite scores, fewer than two folds, pairs of only one kind, or
            an unknown ``search``.
    """
    scores, same = _check(scores, same)
    folds = np.asarray(folds).reshape(-1)
    if len(folds) != len(scores):
        raise ValueError(f"folds must have one entry per pair ({len(scores)}), but got {len(folds)}")
    fold_ids = np.unique(folds)
    if len(fold_ids) < 2:
        raise ValueError(f"the protocol needs at least two folds, but got {fold_ids.tolist()}")
    if search not in ("insightface", "exact"):
        raise ValueError(f"search must be 'insightface' or 'exact', but got {search!r}")
    dist = 2.0 - 2.0 * scores
    accs, thresholds = [], []
    for f in fold_ids:
        test = folds == f
        if search == "exact":
            t, _ = best_threshold(scores[~test], same[~test])
            accepted = scores[test] > t
        else:
            d, _ = grid_threshold(dist[~test], same[~test])
            accepted, t = dist[test] < d, 1.0 - d / 2.0
        thresholds.append(t)
        accs.append(float(np.mean(accepted == same[test])))
    fpr, tpr, roc_t = roc_curve(scores, same)
    auc = float(_trapezoid(tpr, fpr))
    tar = {float(far): float(tpr[fpr <= far].max()) for far in fars}
    val = {float(far): val_at_far(dist, same, folds, far) for far in fars}
    return VerificationResult(accuracy=float(np.mean(accs)), accuracy_std=float(np.std(accs)),
                              fold_accuracies=tuple(accs), thresholds=tuple(thresholds), auc=auc,
                              tar_at_far=tar, roc=(fpr, tpr), num_pairs=len(scores), roc_thresholds=roc_t,
                              val_at_far=val)


def val_at_far(dist: np.ndarray, same: np.ndarray, folds: np.ndarray, far: float,
               thresholds: np.ndarray = VAL_DIST_THRESHOLDS) -> tuple[float, float, float]:
    """insightface's ``calculate_val`` (FaceNet's validation rate at a false-accept rate), per fold.

    For each fold, the false-accept rate of the other folds' pairs is taken at every threshold (``dist < t``
    accepts); the threshold where it reaches ``far`` is interpolated linearly between the last threshold
    at or below ``far`` and the next one (what ``interp1d(..., kind="slinear")`` gave before scipy 1.9
    refused the repeated rates), or is 0 (nothing accepted) when no threshold reaches ``far``. It is
    applied to the held-out fold.

    Args:
        dist: ``(P,)`` squared distances between unit features, ``2 - 2 cos``.
        same: ``(P,)`` bool.
        folds: ``(P,)`` fold of each pair.
        far: the target false-accept rate.
        thresholds: increasing distances, from 0 (insightface: ``np.arange(0, 4, 0.001)``).

    Returns:
        ``(val, val_std, far_mean)``: the mean and std (``ddof=0``) of the held-out folds' true-accept rates,
        and the mean of their false-accept rates; NaN where a fold, or the pairs outside it, lack a kind.
    """
    vals, fars = [], []
    for f in np.unique(folds):
        test = folds == f
        train_diff = np.sort(dist[~test & ~same])
        n_test_same, n_test_diff = np.sum(test & same), np.sum(test & ~same)
        if not len(train_diff) or not n_test_same or not n_test_diff:
            return float("nan"), float("nan"), float("nan")
        far_train = np.searchsorted(train_diff, thresholds, side="left") / len(train_diff)
        if far_train[-1] < far:
            t = 0.0
        else:
            # the last threshold at or below far (none for distances below 0: scores above 1, not cosines)
            i = int(np.searchsorted(far_train, far, side="right")) - 1
            if i < 0 or i == len(thresholds) - 1:
                t = float(thresholds[max(i, 0)])
            else:
                lo, hi = far_train[i], far_train[i + 1]
                t = float(thresholds[i] + (thresholds[i + 1] - thresholds[i]) * (far - lo) / (hi - lo))
        accepted = dist[test] < t
        vals.append(np.sum(accepted & same[test]) / n_test_same)
        fars.append(np.sum(accepted & ~same[test]) / n_test_diff)
    return float(np.mean(vals)), float(np.std(vals)), float(np.mean(fars))


def _check(scores: Any, same: Any, *, both: bool = True) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    same = np.asarray(same).reshape(-1).astype(bool)
    if len(scores) != len(same):
        raise ValueError(f"scores and same must have one entry per pair, but got {len(scores)} and {len(same)}")
    if len(scores) == 0:
        raise ValueError("no pairs to evaluate")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"scores must be finite, but {int(np.sum(~np.isfinite(scores)))} are NaN or inf "
                         "(did the embedding diverge?)")
    if both and (same.all() or not same.any()):
        raise ValueError(f"pairs must include both same and different identities, but all {len(same)} are "
                         f"{'same' if same.all() else 'different'}")
    return scores, same


_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 has only trapz


def _far_name(far: float) -> str:
    """``1e-3`` -> ``"1e-3"``; ``0.05`` -> ``"5e-2"``."""
    mantissa, exponent = f"{far:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


# ------------------------------------------------------------------------------------------------- plots
def plot_roc(result: VerificationResult, path: str | Path, *, title: str | None = None) -> Path:
    """Writes the ROC curve as a PNG: TAR against FAR on a log axis, with the TAR@FAR points marked.

    Args:
        result: from `verification_metrics`.
        path: the PNG file (parent folders are created).
        title: defaults to the accuracy and AUC.

    Returns:
        ``path`` as a `Path`.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fpr, tpr = result.roc
    positive = fpr > 0
    floor = fpr[positive].min() if positive.any() else 1e-4
    floor = min(floor, min(result.tar_at_far, default=1.0)) / 2
    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    # the first point with fpr > 0 is drawn from the floor so the step up at fpr = 0 stays visible
    ax.step(np.r_[floor, fpr[positive]], np.r_[tpr[~positive].max(initial=0.0), tpr[positive]], where="post",
            lw=1.5)
    for far, tar in result.tar_at_far.items():
        ax.plot([far], [tar], "o", ms=4, label=f"TAR@FAR={_far_name(far)}: {tar:.4f}")
    ax.set_xscale("log")
    ax.set_xlim(floor, 1.0)
    ax.set_ylim(max(0.0, float(tpr[positive].min(initial=1.0)) - 0.02), 1.005)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title(title or f"acc {result.accuracy:.4f} ± {result.accuracy_std:.4f}, AUC {result.auc:.4f}",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    replace_file(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path
