"""Plain softmax: logits ``W x + b``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from registry import LOSSES
from registry.losses._base import MarginHead


class SoftmaxHead(MarginHead):
    """Linear classifier ``W x + b`` with cross-entropy; no margin.

    Args:
        embedding_dim: feature size D.
        num_classes: number of classes C.
        bias: learn a per-class bias b.
    """

    def __init__(self, embedding_dim: int, num_classes: int, *, bias: bool = True) -> None:
        super().__init__(embedding_dim, num_classes)
        self.bias = nn.Parameter(torch.zeros(num_classes)) if bias else None

    def logits(self, emb: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return F.linear(emb, self.weight, self.bias)


@LOSSES.register("softmax")
def softmax(embedding_dim: int, num_classes: int, bias: bool = True) -> SoftmaxHead:
    """Softmax cross-entropy over W x + b (no margin)."""
    return SoftmaxHead(embedding_dim, num_classes, bias=bias)
