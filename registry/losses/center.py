"""Center loss (Wen et al. 2016, https://ydwen.github.io/papers/WenECCV16.pdf), an auxiliary term for any head.

In a trial spec ``center_loss: {weight: lambda, alpha: a}`` adds ``lambda * CenterLoss`` to whatever head the
trial trains; the trial calls `CenterLoss.update` after each optimizer step, so the centres move by the
paper's own rule with rate ``alpha`` and never by the main optimizer (they are a buffer, not a parameter).
The registered ``center`` loss is the paper's joint supervision in one head: softmax (``W x + b``) plus
``lambda`` times the center loss.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from registry import LOSSES
from registry.losses._base import check_by_building
from registry.losses.softmax import SoftmaxHead

__all__ = ["CenterLoss", "SoftmaxCenterHead"]


class CenterLoss(nn.Module):
    """``L_C = 1/2 * mean_i ||x_i - c_{y_i}||^2`` with class centres updated by the paper's Eq. 4.

    Paper: Wen et al. 2016, https://ydwen.github.io/papers/WenECCV16.pdf (Eqs. 2 and 4). Units: squared
    feature distance; ``alpha`` unitless.

    The paper writes ``L_C = 1/2 sum_i ||x_i - c_{y_i}||^2`` over the mini-batch; like the authors' Caffe layer
    (``loss = dot / M / 2``) this divides by the batch size ``M``, matching the mean cross-entropy it is added to,
    so ``lambda`` keeps the paper's meaning. KaiyangZhou/pytorch-center-loss drops the 1/2 (``sum / batch_size``)
    and learns the centres by SGD: its loss is twice this one, so its weight ``w`` is ``lambda = 2 w`` here.
    The update (Eq. 4), for every class ``j`` in the batch::

        delta_c_j = sum_i [y_i = j] (c_j - x_i) / (1 + sum_i [y_i = j]),      c_j <- c_j - alpha * delta_c_j

    Centres start as Caffe's ``xavier`` filler: uniform in ``+-sqrt(3 / D)``.

    Args:
        embedding_dim: feature size D.
        num_classes: number of classes C.
        alpha: centre learning rate in [0, 1] (the paper's 0.5).

    Shapes: ``emb`` ``(B, D)``, ``labels`` ``(B,)``, ``centers`` ``(C, D)`` buffer.
    """

    def __init__(self, embedding_dim: int, num_classes: int, *, alpha: float = 0.5) -> None:
        super().__init__()
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], but got {alpha=}")
        self.embedding_dim, self.num_classes, self.alpha = embedding_dim, num_classes, float(alpha)
        bound = math.sqrt(3.0 / embedding_dim)
        self.register_buffer("centers", torch.empty(num_classes, embedding_dim).uniform_(-bound, bound))

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scalar ``1/2 * mean_i ||x_i - c_{y_i}||^2``; gradients reach ``emb`` only."""
        diff = emb - self.centers[labels].to(emb.dtype)
        return 0.5 * diff.pow(2).sum(dim=1).mean()

    @torch.no_grad()
    def update(self, emb: torch.Tensor, labels: torch.Tensor) -> None:
        """Moves the centres of the classes in ``labels`` by Eq. 4 (call once per step, after the optimizer)."""
        emb = emb.detach().to(self.centers.dtype)
        counts = torch.zeros(self.num_classes, dtype=self.centers.dtype, device=self.centers.device)
        counts.index_add_(0, labels, torch.ones_like(labels, dtype=self.centers.dtype))
        sums = torch.zeros_like(self.centers).index_add_(0, labels, emb)
        delta = (counts[:, None] * self.centers - sums) / (1.0 + counts[:, None])  # 0 for absent classes
        self.centers.sub_(self.alpha * delta)

    def extra_repr(self) -> str:
        return f"embedding_dim={self.embedding_dim}, num_classes={self.num_classes}, alpha={self.alpha}"


class SoftmaxCenterHead(SoftmaxHead):
    """Softmax ``W x + b`` cross-entropy plus ``weight * CenterLoss`` (Wen et al.'s joint supervision, Eq. 5).

    Paper: https://ydwen.github.io/papers/WenECCV16.pdf. Shapes: ``emb`` ``(B, D)``, ``weight`` ``(C, D)``,
    ``center.centers`` ``(C, D)`` buffer, logits ``(B, C)``.

    In training mode ``head(emb, labels)`` returns the joint loss with the current centres, then updates the
    centres by Eq. 4 from the same (detached) features, as the paper's Algorithm 1 does within one iteration.
    ``logits`` are the softmax's. For other heads use ``center_loss:`` in the trial spec instead.

    Args:
        embedding_dim: feature size D.
        num_classes: number of classes C.
        weight: lambda, the center loss weight, unitless (the paper's face models use 0.003).
        alpha: centre learning rate in [0, 1] (0.5).
        bias: learn the softmax bias.
    """

    def __init__(self, embedding_dim: int, num_classes: int, *, weight: float = 0.003, alpha: float = 0.5,
                 bias: bool = True) -> None:
        super().__init__(embedding_dim, num_classes, bias=bias)
        if not weight >= 0:
            raise ValueError(f"weight must be >= 0, but got {weight=}")
        self.center_weight = float(weight)
        self.center = CenterLoss(embedding_dim, num_classes, alpha=alpha)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(self.logits(emb, labels), labels) + self.center_weight * self.center(emb, labels)
        if self.training:
            self.center.update(emb, labels)
        return loss


@LOSSES.register("center", validate=check_by_building("center"))
def center(embedding_dim: int, num_classes: int, weight: float = 0.003, alpha: float = 0.5,
           bias: bool = True) -> SoftmaxCenterHead:
    """Softmax + lambda * CenterLoss (Wen et al. 2016); any head takes it via center_loss: {weight, alpha}."""
    return SoftmaxCenterHead(embedding_dim, num_classes, weight=weight, alpha=alpha, bias=bias)
