"""CosFace / LMCL (Wang et al. 2018, https://arxiv.org/abs/1801.09414): target logit ``s (cos(theta) - m)``."""

from __future__ import annotations

import torch

from registry import LOSSES
from registry.losses._base import MarginHead, check_by_building, check_positive

__all__ = ["CosFaceHead"]


class CosFaceHead(MarginHead):
    """Large margin cosine loss: ``s (cos(theta_y) - m)`` on the target, ``s cos(theta_j)`` elsewhere.

    Paper: CosFace, https://arxiv.org/abs/1801.09414 (Eq. 4).

    Args:
        embedding_dim: feature size D.
        num_classes: number of classes C.
        s: scale applied to every cosine.
        m: additive cosine margin subtracted from the target cosine (unitless, in cosine space).

    Shapes: ``emb`` ``(B, D)``, ``weight`` ``(C, D)``, logits ``(B, C)``. Equals pytorch-metric-learning's
    ``CosFaceLoss(margin=m, scale=s)`` with ``W`` transposed.
    """

    normalized_features = True

    def __init__(self, embedding_dim: int, num_classes: int, *, s: float = 64.0, m: float = 0.35) -> None:
        super().__init__(embedding_dim, num_classes)
        check_positive(s=s)
        self.s, self.m = float(s), float(m)

    def target_cosine(self, cos_y: torch.Tensor, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return cos_y - self.m

    def scale(self, cos: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.s * cos


@LOSSES.register("cosface", validate=check_by_building("cosface"))
def cosface(embedding_dim: int, num_classes: int, s: float = 64.0, m: float = 0.35) -> CosFaceHead:
    """CosFace: s (cos(theta) - m) on the target, s cos(theta) elsewhere (m in cosine units)."""
    return CosFaceHead(embedding_dim, num_classes, s=s, m=m)
