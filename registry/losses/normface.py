"""NormFace (Wang et al. 2017, https://arxiv.org/abs/1704.06369): logits ``s cos(theta)``."""

from __future__ import annotations

import torch

from registry import LOSSES
from registry.losses._base import MarginHead, check_by_building, check_positive

__all__ = ["NormSoftmaxHead"]


class NormSoftmaxHead(MarginHead):
    """Normalized softmax: features and weights L2-normalized, logits ``s cos(theta_j)``, no bias, no margin.

    Paper: NormFace, https://arxiv.org/abs/1704.06369 (Eq. 5 with a fixed scale; the paper also learns ``s``).

    Args:
        embedding_dim: feature size D.
        num_classes: number of classes C.
        s: scale, unitless (pytorch-metric-learning's ``NormalizedSoftmaxLoss`` uses ``temperature = 1 / s``).

    Shapes: ``emb`` ``(B, D)``, ``weight`` ``(C, D)``, logits ``(B, C)``.
    """

    normalized_features = True

    def __init__(self, embedding_dim: int, num_classes: int, *, s: float = 16.0) -> None:
        super().__init__(embedding_dim, num_classes)
        check_positive(s=s)
        self.s = float(s)

    def scale(self, cos: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.s * cos


@LOSSES.register("norm-softmax", validate=check_by_building("norm-softmax"))
def norm_softmax(embedding_dim: int, num_classes: int, s: float = 16.0) -> NormSoftmaxHead:
    """NormFace: s cos(theta), features and weights normalized, no margin."""
    return NormSoftmaxHead(embedding_dim, num_classes, s=s)
