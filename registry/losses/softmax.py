"""Plain softmax ``W x + b`` and SphereFace's modified softmax ``||x|| cos(theta)`` (``||W_j|| = 1``, no bias)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from registry import LOSSES
from registry.losses._base import MarginHead, check_by_building

__all__ = ["SoftmaxHead", "ModifiedSoftmaxHead"]


class SoftmaxHead(MarginHead):
    """Linear classifier ``W x + b`` with cross-entropy; no margin, so ``logits(emb, labels)`` ignores labels.

    Args:
        embedding_dim: feature size D.
        num_classes: number of classes C.
        bias: learn a per-class bias ``b`` ``(C,)``.

    Paper: none (the baseline every margin paper starts from; SphereFace's "original softmax",
    https://arxiv.org/abs/1704.08063, Eq. 1). Units: logits are raw inner products, no margin.
    Shapes: ``emb`` ``(B, D)``, ``weight`` ``(C, D)``, ``bias`` ``(C,)``, logits ``(B, C)``.
    """

    def __init__(self, embedding_dim: int, num_classes: int, *, bias: bool = True) -> None:
        super().__init__(embedding_dim, num_classes)
        self.bias = nn.Parameter(torch.zeros(num_classes)) if bias else None

    def logits(self, emb: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return F.linear(emb, self.weight, self.bias)


class ModifiedSoftmaxHead(MarginHead):
    """SphereFace's modified softmax: ``||W_j|| = 1``, no bias, logits ``||x|| cos(theta_j)``.

    Paper: SphereFace, https://arxiv.org/abs/1704.08063 (Sec. 3.1).

    Logits ``||x|| cos(theta_j) = <x, W_j / ||W_j||>``: weights normalized, no bias, no margin. The decision
    boundary depends on angles only, so embeddings are compared by cosine. Units: no margin, no parameters.

    Shapes: ``emb`` ``(B, D)``, ``weight`` ``(C, D)``, logits ``(B, C)``.

    The rows start at unit norm, as in SphereFace's Caffe layer (``MarginInnerProduct`` type ``SINGLE``, which
    normalizes ``W`` in place each step): see `registry.losses.sphereface.SphereFaceHead`.
    """

    normalized_features = True
    unit_rows = True

    def logits(self, emb: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return F.linear(emb, F.normalize(self.weight, dim=1))


@LOSSES.register("softmax", validate=check_by_building("softmax"))
def softmax(embedding_dim: int, num_classes: int, bias: bool = True) -> SoftmaxHead:
    """Softmax cross-entropy over W x + b (no margin; bias=False drops b)."""
    return SoftmaxHead(embedding_dim, num_classes, bias=bias)


@LOSSES.register("modified-softmax", validate=check_by_building("modified-softmax"))
def modified_softmax(embedding_dim: int, num_classes: int) -> ModifiedSoftmaxHead:
    """SphereFace's modified softmax: ||W_j|| = 1, no bias, logits ||x|| cos(theta)."""
    return ModifiedSoftmaxHead(embedding_dim, num_classes)
