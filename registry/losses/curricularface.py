"""CurricularFace (Huang et al. 2020, https://arxiv.org/abs/2004.00288): ArcFace plus hard-negative modulation."""

from __future__ import annotations

import math

import torch

from registry import LOSSES
from registry.losses._base import MarginHead, arc_margin, check_by_building, check_positive, cos_add_angle

__all__ = ["CurricularFaceHead"]


class CurricularFaceHead(MarginHead):
    """Target ``s cos(theta_y + m)`` (ArcFace's fallback past pi); a non-target cosine ``c_j`` that exceeds the
    target's ``cos(theta_y + m)`` (a hard negative) becomes ``c_j (t + c_j)``; logits are ``s`` times that.

    ``t`` is a buffer, the running mean of the batch's target cosines: ``t <- 0.01 mean(cos theta_y) + 0.99 t``,
    updated once per training step before the step's logits (as the authors' ``head.py`` does); it starts at 0.
    The class weights start as theirs, normal with std 0.01 (``W`` is normalized inside the graph, so the
    starting norm sets how far an optimizer step turns a class).

    Paper: CurricularFace, https://arxiv.org/abs/2004.00288 (Eqs. 6-9 and the authors' code).

    Args:
        embedding_dim: feature size D.
        num_classes: number of classes C.
        s: scale.
        m: additive angular margin in radians.
        t_alpha: EMA rate of ``t`` (the paper's 0.01).

    Shapes: ``emb`` ``(B, D)``, ``weight`` ``(C, D)``, logits ``(B, C)``; ``t`` a float scalar buffer.
    """

    normalized_features = True

    def __init__(self, embedding_dim: int, num_classes: int, *, s: float = 64.0, m: float = 0.5,
                 t_alpha: float = 0.01) -> None:
        super().__init__(embedding_dim, num_classes)
        torch.nn.init.normal_(self.weight, std=0.01)  # the authors' head.py (norm ~0.23 at 512-d, not Glorot's 0.3-1.3)
        check_positive(s=s)
        if not 0 <= m < math.pi:
            raise ValueError(f"m must be in [0, pi) radians, but got {m=}")
        if not 0 <= t_alpha <= 1:
            raise ValueError(f"t_alpha must be in [0, 1], but got {t_alpha=}")
        self.s, self.m, self.t_alpha = float(s), float(m), float(t_alpha)
        self.register_buffer("t", torch.zeros(()))

    def cosine(self, emb: torch.Tensor) -> torch.Tensor:
        return super().cosine(emb).clamp(-1.0, 1.0)

    def update_state(self, emb: torch.Tensor, labels: torch.Tensor) -> None:
        cos_y = self.cosine(emb.to(self.weight.dtype)).gather(1, labels[:, None])
        self.t.mul_(1.0 - self.t_alpha).add_(self.t_alpha * cos_y.mean().to(self.t.dtype))

    def target_cosine(self, cos_y: torch.Tensor, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return arc_margin(cos_y, self.m)

    def modulate(self, cos: torch.Tensor, target: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos_theta_m = cos_add_angle(cos.gather(1, labels[:, None]), self.m)  # without the fallback, as the authors
        hard = cos > cos_theta_m
        return torch.where(hard, cos * (self.t.to(cos.dtype) + cos), cos)

    def scale(self, cos: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.s * cos

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, s={self.s}, m={self.m}, t_alpha={self.t_alpha}"


@LOSSES.register("curricularface", validate=check_by_building("curricularface"))
def curricularface(embedding_dim: int, num_classes: int, s: float = 64.0, m: float = 0.5,
                   t_alpha: float = 0.01) -> CurricularFaceHead:
    """CurricularFace: s cos(theta + m) target; hard negatives c become c (t + c), t an EMA of target cosines."""
    return CurricularFaceHead(embedding_dim, num_classes, s=s, m=m, t_alpha=t_alpha)
