"""What a dataset factory returns: splits as tensors (small sets) or torch Datasets (large ones)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset

__all__ = ["TensorSplit", "PairSet", "DataBundle", "SkippedSample", "IMAGE_SIZES", "image_size_of", "Evaluation",
           "EVALUATIONS", "evaluation_of"]

#: How a registered dataset's image size ``(H, W)`` follows from its parameters (as the grid gives them, defaults
#: not filled in), without loading it; None where it cannot be told cheaply. Grid validation checks the backbone
#: against it; a dataset not listed here is not checked.
IMAGE_SIZES: dict[str, Callable[[dict[str, Any]], tuple[int, int] | None]] = {}


def image_size_of(name: str, params: Mapping[str, Any]) -> tuple[int, int] | None:
    """The ``(H, W)`` dataset ``name`` with ``params`` yields, or None when unknown (see `IMAGE_SIZES`)."""
    size = IMAGE_SIZES.get(name)
    return size(dict(params)) if size is not None else None


@dataclass(frozen=True)
class Evaluation:
    """What a trial evaluates on: the parts of a `DataBundle` that name the metrics it logs (``test_acc``,
    ``test_acc.class_<i>``, ``<pairs>_acc``...), told from the dataset's parameters without loading it.

    Attributes:
        test: whether the bundle has a closed-set test split.
        test_classes: the classes holding at least one test image, when the bundle has at most the
            ``max_classes`` asked for (`evaluation_of`); None when it has more, or no test split.
        pairs: the verification pairs' name (`PairSet.name`: ``lfw`` logs ``lfw_acc``), None without pairs.
    """

    test: bool
    test_classes: tuple[int, ...] | None = None
    pairs: str | None = None


#: How a registered dataset's `Evaluation` follows from its parameters (as the grid gives them, defaults not
#: filled in) and ``max_classes``; grid validation checks the metric names a grid gives against it, and a dataset
#: not listed here is not checked. Called only with parameters its registry check accepted.
EVALUATIONS: dict[str, Callable[[dict[str, Any], int], Evaluation]] = {}


def evaluation_of(name: str, params: Mapping[str, Any], max_classes: int) -> Evaluation | None:
    """The `Evaluation` dataset ``name`` with ``params`` gives (``test_classes`` told up to ``max_classes``
    classes), or None when unknown (see `EVALUATIONS`)."""
    evaluation = EVALUATIONS.get(name)
    return evaluation(dict(params), max_classes) if evaluation is not None else None


@dataclass
class TensorSplit:
    """A split held whole in memory, moved to the training device as one tensor.

    Attributes:
        images: float32 ``(N, C, H, W)``, normalized as the model should see them.
        labels: int64 ``(N,)`` class indices in ``0..num_classes-1``.
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.labels.ndim != 1 or len(self.images) != len(self.labels):
            raise ValueError(f"images must be (N, C, H, W) and labels (N,), but got "
                             f"{tuple(self.images.shape)} and {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device | str) -> TensorSplit:
        return TensorSplit(self.images.to(device), self.labels.to(device))


@dataclass
class PairSet:
    """Verification pairs: two images and whether they show the same identity.

    Attributes:
        images: float32 ``(M, C, H, W)`` tensor, every distinct image once, or a Dataset whose item i is
            image i (a ``(C, H, W)`` tensor: float32, or uint8 pixels that `bench.verification.pair_scores`
            scales with ``(pixel - 127.5) / 127.5``), as image files are.
        left, right: int64 ``(P,)`` indices into ``images``.
        same: bool ``(P,)``.
        folds: int64 ``(P,)`` fold of each pair (LFW View 2: 0..9).
        name: e.g. ``"lfw"``.
    """

    images: torch.Tensor | Dataset
    left: torch.Tensor
    right: torch.Tensor
    same: torch.Tensor
    folds: torch.Tensor
    name: str = "pairs"


@dataclass
class DataBundle:
    """Everything a trial needs from a dataset; a trial checks what its factory returns against this
    contract before training (`registry.datasets.check_bundle`).

    Attributes:
        name: registered name.
        num_classes: classes (identities) in ``train``.
        in_chans: image channels.
        image_size: ``(H, W)`` in pixels.
        train: the training split: a `TensorSplit`, or a Dataset of ``(image, label)`` items whose images
            are float32 ``(C, H, W)`` as the model sees them or uint8 pixels, which the trial scales on its
            device with ``(pixel - 127.5) / 127.5``; a `SkippedSample` for an unreadable item.
        test: closed-set test split (same classes as train, same forms), or None.
        pairs: verification pairs, or None.
        info: provenance shown in reports (source path, sizes).
    """

    name: str
    num_classes: int
    in_chans: int
    image_size: tuple[int, int]
    train: TensorSplit | Dataset
    test: TensorSplit | Dataset | None = None
    pairs: PairSet | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SkippedSample:
    """Returned by a Dataset's ``__getitem__`` in place of ``(image, label)`` for an unreadable file;
    the loader's collate drops it and the trial reports every one at the end."""

    path: str
    reason: str
