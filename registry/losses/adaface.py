"""AdaFace (Kim et al. 2022, https://arxiv.org/abs/2204.00964): a margin that adapts to the feature norm."""

from __future__ import annotations

import math

import torch

from registry import LOSSES
from registry.losses._base import MarginHead, check_by_building, check_positive, clamp_cos

__all__ = ["AdaFaceHead"]


class AdaFaceHead(MarginHead):
    """Target ``s (cos(theta_y + g_angle) - g_add)``, non-targets ``s cos(theta_j)``, with the feature norm
    ``||x||`` (the image-quality proxy) setting the margins::

        z = clip(h (||x|| - mu) / (sigma + eps), -1, 1)      # ||x|| clipped to [0.001, 100], no gradient
        g_angle = -m z,  g_add = m + m z                      # z = -1: ArcFace-like, z = 1: CosFace-like

    ``mu``/``sigma`` are buffers: running mean and (unbiased) std of the batch norms, ``mu <- t_alpha mean +
    (1 - t_alpha) mu``, updated once per training step before the step's logits (they start at 20 and 100).
    As the authors' ``head.py``: cosines clamped to ``[-1 + eps, 1 - eps]``, ``theta + g_angle`` clipped to
    ``[eps, pi - eps]``, eps = 1e-3 (before ``acos``, the dtype's epsilon where that is coarser, as in bfloat16).
    A batch of one sample leaves ``sigma`` unchanged (its std is undefined).
    ``head.logits(emb)`` (no labels) is ``s cos(theta)``, unclamped. The class rows start at unit norm, as the
    authors' ``renorm`` init leaves them (the directions are `MarginHead`'s uniform draw, as theirs): ``W`` is
    normalized inside the graph, so the starting norm sets how far an optimizer step turns a class.

    Paper: AdaFace, https://arxiv.org/abs/2204.00964 (Eqs. 9-12 and the authors' ``head.py``).

    Args:
        embedding_dim: feature size D.
        num_classes: number of classes C.
        s: scale.
        m: margin: radians for ``g_angle``, cosine units for ``g_add``.
        h: concentration of the norm statistic (0.333: 68% of the batch inside [-0.333, 0.333]).
        t_alpha: EMA rate of the batch statistics.

    Shapes: ``emb`` ``(B, D)`` un-normalized (its norm is used), ``weight`` ``(C, D)``, logits ``(B, C)``.
    """

    normalized_features = True
    unit_rows = True  # the authors' uniform(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)
    eps = 1e-3

    def __init__(self, embedding_dim: int, num_classes: int, *, s: float = 64.0, m: float = 0.4, h: float = 0.333,
                 t_alpha: float = 0.01) -> None:
        super().__init__(embedding_dim, num_classes)
        check_positive(s=s, h=h)
        if not 0 <= t_alpha <= 1:
            raise ValueError(f"t_alpha must be in [0, 1], but got {t_alpha=}")
        self.s, self.m, self.h, self.t_alpha = float(s), float(m), float(h), float(t_alpha)
        self.register_buffer("batch_mean", torch.tensor(20.0))
        self.register_buffer("batch_std", torch.tensor(100.0))

    def _safe_norms(self, emb: torch.Tensor) -> torch.Tensor:
        return emb.detach().norm(dim=1).clamp(0.001, 100.0)

    def update_state(self, emb: torch.Tensor, labels: torch.Tensor) -> None:
        norms = self._safe_norms(emb).to(self.batch_mean.dtype)
        a = self.t_alpha
        self.batch_mean.mul_(1.0 - a).add_(a * norms.mean())
        if norms.numel() > 1:
            self.batch_std.mul_(1.0 - a).add_(a * norms.std())

    def target_cosine(self, cos_y: torch.Tensor, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        norms = self._safe_norms(emb).to(cos_y.dtype)
        mean, std = self.batch_mean.to(cos_y.dtype), self.batch_std.to(cos_y.dtype)
        z = ((norms - mean) / (std + self.eps) * self.h).clamp(-1.0, 1.0)
        theta = torch.acos(clamp_cos(cos_y, at_least=self.eps))  # 1 - 1e-3 would round to 1 in bfloat16
        theta_m = (theta - self.m * z).clamp(self.eps, math.pi - self.eps)
        return torch.cos(theta_m) - (self.m + self.m * z)

    def modulate(self, cos: torch.Tensor, target: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return cos.clamp(-1.0 + self.eps, 1.0 - self.eps)

    def scale(self, cos: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.s * cos

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, s={self.s}, m={self.m}, h={self.h}, t_alpha={self.t_alpha}"


@LOSSES.register("adaface", validate=check_by_building("adaface"))
def adaface(embedding_dim: int, num_classes: int, s: float = 64.0, m: float = 0.4, h: float = 0.333,
            t_alpha: float = 0.01) -> AdaFaceHead:
    """AdaFace: s (cos(theta + g_angle) - g_add) target, margins set by the feature norm's batch statistics."""
    return AdaFaceHead(embedding_dim, num_classes, s=s, m=m, h=h, t_alpha=t_alpha)
