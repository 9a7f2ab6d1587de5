"""ArcFace (Deng et al. 2019, https://arxiv.org/abs/1801.07698): target logit ``s cos(theta + m)``."""

from __future__ import annotations

import math

import torch

from registry import LOSSES
from registry.losses._base import MarginHead, arc_margin, check_by_building, check_positive
from registry.losses._chunked import DEFAULT_CHUNK_CLASSES, check_chunk_classes

__all__ = ["ArcFaceHead"]


class ArcFaceHead(MarginHead):
    """Additive angular margin: ``s cos(theta_y + m)`` on the target, ``s cos(theta_j)`` elsewhere.

    Paper: ArcFace, https://arxiv.org/abs/1801.07698 (Eq. 3); the fallback is insightface's code.

    Where ``theta_y + m > pi`` insightface's fallback ``s (cos(theta_y) - m sin(m))`` keeps the target logit
    decreasing in theta for ``m`` up to 2.3311 rad (beyond it, far past any margin in use, the target jumps up
    at ``theta_y = pi - m``, in insightface's code too); ``easy_margin=True`` instead applies the margin only
    where ``cos(theta_y) > 0``.

    Args:
        embedding_dim: feature size D.
        num_classes: number of classes C.
        s: scale applied to every cosine.
        m: additive angular margin in radians (pytorch-metric-learning's ``ArcFaceLoss`` takes degrees).
        easy_margin: the easy-margin rule instead of the fallback.
        chunk_classes: above this many classes the training loss is computed chunk by chunk of classes,
            never holding the ``(B, C)`` logits (same value and gradients); 0 never chunks.

    Shapes: ``emb`` ``(B, D)``, ``weight`` ``(C, D)``, logits ``(B, C)``.
    """

    normalized_features = True

    def __init__(self, embedding_dim: int, num_classes: int, *, s: float = 64.0, m: float = 0.5,
                 easy_margin: bool = False, num_weights: int | None = None,
                 chunk_classes: int = DEFAULT_CHUNK_CLASSES) -> None:
        super().__init__(embedding_dim, num_classes, num_weights=num_weights)
        self.chunk_classes = check_chunk_classes(chunk_classes)
        check_positive(s=s)
        if not 0 <= m < math.pi:
            raise ValueError(f"m must be in [0, pi) radians, but got {m=}")
        self.s, self.m, self.easy_margin = float(s), float(m), bool(easy_margin)

    def chunkable(self) -> bool:
        return self.weight.shape[0] == self.num_classes  # one weight row per class (not sub-centres)

    def target_cosine(self, cos_y: torch.Tensor, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return arc_margin(cos_y, self.m, easy_margin=self.easy_margin)

    def scale(self, cos: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.s * cos


@LOSSES.register("arcface", validate=check_by_building("arcface"))
def arcface(embedding_dim: int, num_classes: int, s: float = 64.0, m: float = 0.5,
            easy_margin: bool = False, chunk_classes: int = DEFAULT_CHUNK_CLASSES) -> ArcFaceHead:
    """ArcFace: s cos(theta + m) on the target (m in radians), insightface's fallback past theta + m > pi."""
    return ArcFaceHead(embedding_dim, num_classes, s=s, m=m, easy_margin=easy_margin, chunk_classes=chunk_classes)
