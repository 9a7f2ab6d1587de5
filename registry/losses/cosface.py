"""CosFace / LMCL (Wang et al. 2018, https://arxiv.org/abs/1801.09414): target logit ``s (cos(theta) - m)``."""

from __future__ import annotations

import torch

from registry import LOSSES
from registry.losses._base import MarginHead, check_by_building, check_positive
from registry.losses._chunked import DEFAULT_CHUNK_CLASSES, check_chunk_classes

__all__ = ["CosFaceHead"]


class CosFaceHead(MarginHead):
    """Large margin cosine loss: ``s (cos(theta_y) - m)`` on the target, ``s cos(theta_j)`` elsewhere.

    Paper: CosFace, https://arxiv.org/abs/1801.09414 (Eq. 4).

    Args:
        embedding_dim: feature size D.
        num_classes: number of classes C.
        s: scale applied to every cosine.
        m: additive cosine margin subtracted from the target cosine (unitless, in cosine space).
        chunk_classes: above this many classes the training loss is computed chunk by chunk of classes,
            never holding the ``(B, C)`` logits (same value and gradients); 0 never chunks.

    Shapes: ``emb`` ``(B, D)``, ``weight`` ``(C, D)``, logits ``(B, C)``. Equals pytorch-metric-learning's
    ``CosFaceLoss(margin=m, scale=s)`` with ``W`` transposed.
    """

    normalized_features = True

    def __init__(self, embedding_dim: int, num_classes: int, *, s: float = 64.0, m: float = 0.35,
                 chunk_classes: int = DEFAULT_CHUNK_CLASSES) -> None:
        super().__init__(embedding_dim, num_classes)
        check_positive(s=s)
        self.s, self.m = float(s), float(m)
        self.chunk_classes = check_chunk_classes(chunk_classes)

    def chunkable(self) -> bool:
        return True

    def target_cosine(self, cos_y: torch.Tensor, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return cos_y - self.m

    def scale(self, cos: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.s * cos


@LOSSES.register("cosface", validate=check_by_building("cosface"))
def cosface(embedding_dim: int, num_classes: int, s: float = 64.0, m: float = 0.35,
            chunk_classes: int = DEFAULT_CHUNK_CLASSES) -> CosFaceHead:
    """CosFace: s (cos(theta) - m) on the target, s cos(theta) elsewhere (m in cosine units)."""
    return CosFaceHead(embedding_dim, num_classes, s=s, m=m, chunk_classes=chunk_classes)
