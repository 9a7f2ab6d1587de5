"""The margin-softmax base every head derives from, and the few numerical helpers the heads share.

A head holds the class weights ``weight`` of shape ``(num_classes, embedding_dim)`` and answers:

* ``head(emb, labels)``: the scalar training loss (margin applied, mean cross-entropy over the batch); in
  training mode it first advances the head's own state (a lambda schedule's iteration counter, a running
  statistic), once per call;
* ``head.logits(emb, labels)``: the margin-applied logits ``(B, num_classes)``, from the current state;
* ``head.logits(emb)``: the plain logits used for prediction (no margin).

The hooks follow pytorch-metric-learning's ``LargeMarginSoftmaxLoss``: `MarginHead.cosine` gives the
``(B, C)`` cosines, `MarginHead.target_cosine` replaces the target column (the margin, in cosine units),
`MarginHead.modulate` may change the other columns given the labels (CurricularFace), and
`MarginHead.scale` turns cosines into logits (``s``, ``||x||``, ``||x|| ||W_j||``). A head overrides only
the hooks it needs. The harness calls heads in float32 with autocast off; the helpers here keep every head
finite in bfloat16 too (clamps and square roots are guarded by the dtype's epsilon).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MarginHead", "safe_sqrt", "clamp_cos", "multiple_angle_psi", "cos_add_angle", "arc_margin",
           "check_positive", "check_by_building"]


class MarginHead(nn.Module):
    """Base class: class weights plus cross-entropy over `logits`.

    Args:
        embedding_dim: feature size D.
        num_classes: number of classes C.
        num_weights: rows of ``weight`` (default C; sub-centre heads hold ``C * K``).
    """

    #: True when embeddings should be compared by cosine (the head's decisions depend on direction only).
    normalized_features: bool = False
    #: Above this many weight rows a `chunkable` head computes its loss class-chunk by class-chunk; 0: never.
    chunk_classes: int = 0
    #: Start every class row at norm 1 (the Glorot draw's directions), where the head's original holds or starts
    #: them. ``W`` normalized inside the graph turns class j ``1 / ||W_j||^2`` as far per SGD step, so the
    #: starting norm is part of the recipe (SphereFace's Caffe layer, AdaFace's ``renorm`` init).
    unit_rows: bool = False

    def __init__(self, embedding_dim: int, num_classes: int, *, num_weights: int | None = None) -> None:
        super().__init__()
        if embedding_dim < 1 or num_classes < 2:
            raise ValueError(f"need embedding_dim >= 1 and num_classes >= 2, but got {embedding_dim=}, {num_classes=}")
        self.embedding_dim = embedding_dim
        self.num_classes = num_classes
        self.weight = nn.Parameter(torch.empty(num_weights or num_classes, embedding_dim))
        nn.init.xavier_uniform_(self.weight)
        if self.unit_rows:
            with torch.no_grad():
                self.weight.copy_(F.normalize(self.weight, dim=1))

    # hooks -----------------------------------------------------------------------------------------
    def cosine(self, emb: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` cosines between embeddings and class weights (both normalized, eps-guarded)."""
        return F.linear(F.normalize(emb, dim=1), F.normalize(self.weight, dim=1))

    def target_cosine(self, cos_y: torch.Tensor, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The margin: the target cosines ``(B,)`` after the head's modification (identity here)."""
        return cos_y

    def modulate(self, cos: torch.Tensor, target: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Non-target cosines given the labels and the modified target ``(B,)`` (identity here)."""
        return cos

    def scale(self, cos: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Cosine units to logits (identity here)."""
        return cos

    def update_state(self, emb: torch.Tensor, labels: torch.Tensor) -> None:
        """Advances the head's own state once per training step (no-op here); ``emb`` is detached."""

    # contract --------------------------------------------------------------------------------------
    def logits(self, emb: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, C)`` for embeddings ``emb`` ``(B, D)``; margin applied to the target when labels given."""
        cos = self.cosine(emb)
        if labels is not None:
            cos_y = cos.gather(1, labels[:, None]).squeeze(1)
            target = self.target_cosine(cos_y, emb, labels)
            cos = self.modulate(cos, target, labels)
            cos = cos.scatter(1, labels[:, None], target[:, None].to(cos.dtype))
        return self.scale(cos, emb)

    def chunkable(self) -> bool:
        """True when the loss is ``s * cos`` logits with a margin on the target only, so that it can be computed
        class-chunk by class-chunk (`registry.losses._chunked`); heads with such logits override this."""
        return False

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scalar mean cross-entropy over the margin-applied logits (state advanced first when training).

        With more weight rows than ``chunk_classes`` (and a `chunkable` head) the same loss is computed
        without materialising the ``(B, C)`` logits.
        """
        if self.training:
            with torch.no_grad():
                self.update_state(emb.detach(), labels)
        if 0 < self.chunk_classes < self.weight.shape[0] and self.chunkable():
            from registry.losses._chunked import chunked_margin_cross_entropy

            return chunked_margin_cross_entropy(emb, self.weight, labels, self.s,
                                                lambda cos_y: self.target_cosine(cos_y, emb, labels),
                                                chunk_classes=self.chunk_classes)
        return F.cross_entropy(self.logits(emb, labels), labels)

    def extra_repr(self) -> str:
        return f"embedding_dim={self.embedding_dim}, num_classes={self.num_classes}"


# numerical helpers ---------------------------------------------------------------------------------------
def safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(max(x, 0))`` whose gradient is 0, not inf or NaN, where ``x <= 0``."""
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, torch.ones_like(x)).sqrt(), torch.zeros_like(x))


def clamp_cos(cos: torch.Tensor, at_least: float = 0.0) -> torch.Tensor:
    """Clamps cosines to ``[-1 + eps, 1 - eps]`` with the dtype's epsilon, or ``at_least`` where that is wider (a
    head's own eps), so ``acos`` has a finite gradient: a finer eps would round back to +-1 in the dtype."""
    eps = max(at_least, torch.finfo(cos.dtype).eps)
    return cos.clamp(-1.0 + eps, 1.0 - eps)


def multiple_angle_psi(cos: torch.Tensor, m: int) -> torch.Tensor:
    """L-Softmax's monotonic ``psi(theta) = (-1)^k cos(m theta) - 2k``, ``k = floor(m theta / pi)``.

    ``cos(m theta)`` comes from ``cos(theta)`` by the multiple-angle (Chebyshev) expansion and ``k`` from
    comparisons with ``cos(j pi / m)``, so no ``acos`` is taken and the gradient is finite at 0 and pi.

    Args:
        cos: cosines, any shape.
        m: integer margin >= 1.
    """
    c = cos.clamp(-1.0, 1.0)
    t_prev, t = torch.ones_like(c), c  # T_0, T_1
    for _ in range(m - 1):
        t_prev, t = t, 2 * c * t - t_prev  # T_{n+1} = 2 c T_n - T_{n-1}
    with torch.no_grad():
        k = torch.zeros_like(c)
        for j in range(1, m + 1):
            k = k + (c <= math.cos(j * math.pi / m)).to(c.dtype)
        k = k.clamp(max=m - 1)  # theta = pi exactly: psi is continuous there, keep k in 0..m-1
        sign = 1.0 - 2.0 * torch.remainder(k, 2)
    return sign * t - 2.0 * k


def cos_add_angle(cos: torch.Tensor, m: float) -> torch.Tensor:
    """``cos(theta + m) = cos(theta) cos(m) - sin(theta) sin(m)`` from ``cos(theta)`` (``sin >= 0``); m in radians."""
    return cos * math.cos(m) - safe_sqrt(1.0 - cos * cos) * math.sin(m)


def arc_margin(cos: torch.Tensor, m: float, *, easy_margin: bool = False) -> torch.Tensor:
    """ArcFace's target ``cos(theta + m)`` from ``cos(theta)``, as insightface computes it.

    ``cos(theta + m) = cos(theta) cos(m) - sin(theta) sin(m)``. Past ``theta + m > pi`` (``cos(theta) <=
    cos(pi - m)``) the fallback ``cos(theta) - m sin(m)`` keeps the target logit decreasing in theta for
    ``m`` up to 2.3311 rad (where ``cos(m) + m sin(m) = 1``; above it the target jumps up by
    ``1 - cos(m) - m sin(m)`` at ``theta = pi - m``, as insightface's does); with ``easy_margin`` the margin
    applies only where ``cos(theta) > 0``.

    Args:
        cos: cosines, any shape.
        m: additive angular margin in radians.
        easy_margin: use the easy-margin rule instead of the fallback.
    """
    phi = cos_add_angle(cos, m)
    if easy_margin:
        return torch.where(cos > 0, phi, cos)
    return torch.where(cos > math.cos(math.pi - m), phi, cos - math.sin(m) * m)


def check_by_building(name: str) -> Callable[[dict[str, Any]], None]:
    """A registry ``validate`` hook: builds a tiny head (D=2, C=3) so a grid's bad value (``m=7`` for
    ``sphereface``) fails at validation, before any training, with the head's own message. The global RNG is
    left untouched."""

    def validate(params: dict[str, Any]) -> None:
        from registry import LOSSES

        try:
            with torch.random.fork_rng(devices=[]):
                LOSSES.entry(name).factory(embedding_dim=2, num_classes=3, **params)
        except TypeError as err:
            raise ValueError(str(err)) from err

    return validate


def check_positive(**values: float) -> None:
    """Raises ``ValueError`` naming the first argument that is not > 0."""
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be > 0, but got {name}={value!r}")
