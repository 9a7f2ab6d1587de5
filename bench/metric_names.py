"""The metric names a trial logs, told from its spec without training: what grid validation checks the names in
``objective`` and ``report:`` against.

Every epoch a trial (`bench.trial.TrialState`) logs ``train_loss``, ``train_acc`` and ``lr``; with a closed-set
test split ``test_acc``, and ``test_acc.class_<i>`` for each class with test images when there are at most
`bench.trial.PER_CLASS_MAX` classes; with verification pairs named ``<pairs>`` the names of
`bench.verification.metric_names` (``lfw_acc``, ``lfw_auc``, ``lfw_tar_far1e-3``...). The dataset says which it
has (`registry.datasets.evaluation_of`); the loss and the backbone add no metric.
"""

from __future__ import annotations

from bench.spec import TrialSpec

__all__ = ["TRAIN_METRICS", "logged_metrics"]

#: Logged by every trial, every epoch.
TRAIN_METRICS = ("train_loss", "train_acc", "lr")


def logged_metrics(spec: TrialSpec) -> frozenset[str] | None:
    """The names of the metrics a trial of ``spec`` logs each epoch, or None when its dataset does not say what it
    evaluates on (`registry.datasets.EVALUATIONS`).

    Example:
        >>> sorted(logged_metrics(TrialSpec(dataset="digits")))[:4]
        ['lr', 'test_acc', 'test_acc.class_0', 'test_acc.class_1']
    """
    from bench.trial import PER_CLASS_MAX
    from bench.verification import metric_names
    from registry.datasets import evaluation_of

    evaluation = evaluation_of(spec.dataset, spec.dataset_params, PER_CLASS_MAX)
    if evaluation is None:
        return None
    names = set(TRAIN_METRICS)
    if evaluation.test:
        names.add("test_acc")
        names.update(f"test_acc.class_{c}" for c in evaluation.test_classes or ())
    if evaluation.pairs is not None:
        names.update(metric_names(evaluation.pairs))
    return frozenset(names)
