"""The margin-softmax base every head derives from.

A head holds the class weights ``weight`` of shape ``(num_classes, embedding_dim)`` and answers:

* ``head(emb, labels)``: the scalar training loss (margin applied, cross-entropy taken);
* ``head.logits(emb, labels)``: the margin-applied logits ``(B, num_classes)``; with ``labels=None`` the
  plain logits used for prediction (no margin).

Subclasses override `logits` (or the narrower hooks of the cosine base); the harness calls heads in
float32 even under autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MarginHead"]


class MarginHead(nn.Module):
    """Base class: class weights plus cross-entropy over `logits`.

    Args:
        embedding_dim: feature size D.
        num_classes: number of classes C.
    """

    #: True when the head's logits depend on feature direction only (its embeddings are compared by cosine).
    normalized_features: bool = False

    def __init__(self, embedding_dim: int, num_classes: int) -> None:
        super().__init__()
        if embedding_dim < 1 or num_classes < 2:
            raise ValueError(f"need embedding_dim >= 1 and num_classes >= 2, but got {embedding_dim=}, {num_classes=}")
        self.embedding_dim = embedding_dim
        self.num_classes = num_classes
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.xavier_uniform_(self.weight)

    def logits(self, emb: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, C)`` for embeddings ``emb`` ``(B, D)``; margin applied to the target when labels given."""
        raise NotImplementedError

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scalar mean cross-entropy over the margin-applied logits."""
        return F.cross_entropy(self.logits(emb, labels), labels)

    def extra_repr(self) -> str:
        return f"embedding_dim={self.embedding_dim}, num_classes={self.num_classes}"
