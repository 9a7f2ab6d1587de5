"""CosFace / LMCL (Wang et al. 2018, https://arxiv.org/abs/1801.09414): target logit ``s (cos(theta) - m)``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from registry import LOSSES
from registry.losses._base import MarginHead


class CosFaceHead(MarginHead):
    """Large margin cosine loss.

    Args:
        embedding_dim: feature size D.
        num_classes: number of classes C.
        s: scale applied to every cosine.
        m: additive cosine margin subtracted from the target cosine (unitless, in cosine space).
    """

    normalized_features = True

    def __init__(self, embedding_dim: int, num_classes: int, *, s: float = 64.0, m: float = 0.35) -> None:
        super().__init__(embedding_dim, num_classes)
        if s <= 0:
            raise ValueError(f"s must be > 0, but got {s=}")
        self.s, self.m = float(s), float(m)

    def logits(self, emb: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cos = F.linear(F.normalize(emb), F.normalize(self.weight))
        if labels is not None:
            cos = cos - self.m * F.one_hot(labels, self.num_classes).to(cos.dtype)
        return self.s * cos


@LOSSES.register("cosface")
def cosface(embedding_dim: int, num_classes: int, s: float = 64.0, m: float = 0.35) -> CosFaceHead:
    """CosFace: s (cos(theta) - m) on the target, s cos(theta) elsewhere."""
    return CosFaceHead(embedding_dim, num_classes, s=s, m=m)
