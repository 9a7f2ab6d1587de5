"""The combined margin of ArcFace's paper (Deng et al. 2019, https://arxiv.org/abs/1801.07698, Eq. 4).

``s (cos(m1 theta + m2) - m3)`` on the target, with optional weight and feature normalization, so that one
head expresses softmax, L-Softmax, A-Softmax, NormFace, CosFace and ArcFace (the "Visualization of Face
Loss" table: ``w_norm``, ``x_norm``, ``s``, ``m1``, ``m2``, ``m3``).
"""

from __future__ import annotations

import math

import torch

from registry import LOSSES
from registry.losses._base import (
    MarginHead,
    arc_margin,
    check_by_building,
    check_positive,
    clamp_cos,
    multiple_angle_psi,
)
from registry.losses._chunked import DEFAULT_CHUNK_CLASSES, check_chunk_classes

__all__ = ["CombinedMarginHead"]


class CombinedMarginHead(MarginHead):
    """``logit_j = s ||x||^a ||W_j||^b cos(theta_j)``, target ``s ||x||^a ||W_y||^b (f(theta_y) - m3)``.

    Paper: ArcFace's combined margin, https://arxiv.org/abs/1801.07698 (Eq. 4), with the weight/feature
    normalization switches of github.com/niyunsheng/Visualization-of-Face-Losses.

    ``a = 0`` when ``x_norm`` else 1, ``b = 0`` when ``w_norm`` else 1, and ``f`` keeps the target monotonic:

    * ``m1 = 1``: ``f = cos(theta + m2)`` with ArcFace's fallback ``cos(theta) - m2 sin(m2)`` past
      ``theta + m2 > pi`` (so the ArcFace rows equal the ``arcface`` head);
    * ``m1 > 1``: ``f = psi(m1 theta + m2) = (-1)^k cos(m1 theta + m2) - 2k``, ``k = floor((m1 theta + m2) / pi)``
      (L-Softmax's psi; computed by the multiple-angle expansion when m1 is an integer and m2 = 0).

    No lambda annealing and no bias: ``(False, False, 1, 1, 0, 0)`` is ``W x``, ``(True, False, 1, 4, 0, 0)``
    is A-Softmax with lambda = 0.

    Args:
        embedding_dim: feature size D.
        num_classes: number of classes C.
        w_norm: normalize class weights.
        x_norm: normalize features.
        s: scale.
        m1: multiplicative angular margin (>= 1, unitless).
        m2: additive angular margin in radians, in [0, pi).
        m3: additive cosine margin (cosine units).
        chunk_classes: above this many classes the training loss is computed chunk by chunk of classes,
            never holding the ``(B, C)`` logits (same value and gradients; only with w_norm and x_norm); 0 never.

    Shapes: ``emb`` ``(B, D)``, ``weight`` ``(C, D)``, logits ``(B, C)``.
    """

    def __init__(self, embedding_dim: int, num_classes: int, *, w_norm: bool = True, x_norm: bool = True,
                 s: float = 64.0, m1: float = 1.0, m2: float = 0.3, m3: float = 0.2,
                 chunk_classes: int = DEFAULT_CHUNK_CLASSES) -> None:
        super().__init__(embedding_dim, num_classes)
        self.chunk_classes = check_chunk_classes(chunk_classes)
        check_positive(s=s)
        if not m1 >= 1:
            raise ValueError(f"m1 must be >= 1, but got {m1=}")
        if not 0 <= m2 < math.pi:
            raise ValueError(f"m2 must be in [0, pi) radians, but got {m2=}")
        self.w_norm, self.x_norm = bool(w_norm), bool(x_norm)
        self.s, self.m1, self.m2, self.m3 = float(s), float(m1), float(m2), float(m3)
        self.normalized_features = self.w_norm  # with ||W_j|| = 1 the decision depends on angles only

    def chunkable(self) -> bool:
        return self.w_norm and self.x_norm  # logits s cos(theta) only with both normalized

    def target_cosine(self, cos_y: torch.Tensor, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.m1 == 1:
            f = arc_margin(cos_y, self.m2) if self.m2 > 0 else cos_y
        elif self.m1.is_integer() and self.m2 == 0:
            f = multiple_angle_psi(cos_y, int(self.m1))
        else:
            phi = self.m1 * torch.acos(clamp_cos(cos_y)) + self.m2
            with torch.no_grad():
                k = torch.floor(phi / math.pi)
                sign = 1.0 - 2.0 * torch.remainder(k, 2)
            f = sign * torch.cos(phi) - 2.0 * k
        return f - self.m3

    def scale(self, cos: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        out = self.s * cos
        if not self.x_norm:
            out = out * emb.norm(dim=1, keepdim=True).to(cos.dtype)
        if not self.w_norm:
            out = out * self.weight.norm(dim=1).to(cos.dtype)
        return out

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, w_norm={self.w_norm}, x_norm={self.x_norm}, s={self.s}, m1={self.m1}, "
                f"m2={self.m2}, m3={self.m3}")


@LOSSES.register("combined", validate=check_by_building("combined"))
def combined(embedding_dim: int, num_classes: int, w_norm: bool = True, x_norm: bool = True, s: float = 64.0,
             m1: float = 1.0, m2: float = 0.3, m3: float = 0.2,
             chunk_classes: int = DEFAULT_CHUNK_CLASSES) -> CombinedMarginHead:
    """Combined margin: s (cos(m1 theta + m2) - m3) on the target (m2 in radians), optional W/x normalization."""
    return CombinedMarginHead(embedding_dim, num_classes, w_norm=w_norm, x_norm=x_norm, s=s, m1=m1, m2=m2, m3=m3,
                              chunk_classes=chunk_classes)
