"""AdaCos (Zhang et al. 2019, https://arxiv.org/abs/1905.00292): cosine logits with an adaptive scale, no margin."""

from __future__ import annotations

import math

import torch

from registry import LOSSES
from registry.losses._base import MarginHead, check_by_building, clamp_cos

__all__ = ["AdaCosHead"]


class AdaCosHead(MarginHead):
    """Logits ``s cos(theta_j)`` with the scale set by the paper's rule instead of tuned; no margin.

    Paper: AdaCos, https://arxiv.org/abs/1905.00292. Units: ``s`` unitless, angles in radians.

    Fixed AdaCos: ``s = sqrt(2) log(C - 1)`` (Eq. 12). Dynamic AdaCos (Eq. 15), once per training step and
    before the step's logits, from the batch and the previous scale ``s``::

        B_avg = (1/N) sum_i sum_{j != y_i} exp(s cos(theta_ij))
        s <- log(B_avg) / cos(min(pi/4, theta_med))     # theta_med: median target angle (lower median)

    as the reference implementation (4uiiurz1/pytorch-adacos) does; ``log(B_avg)`` is a log-sum-exp here, so
    it cannot overflow, and a non-finite update is skipped. ``s`` is a buffer, saved with the head.

    The rule assumes non-target classes near 90 degrees (high-dimensional features): with 2-D features and
    10 classes neighbouring classes sit ~36 degrees apart, ``log(B_avg)`` tracks ``s``, and dynamic ``s``
    grows geometrically (about 900 after 200 steps), as the paper's formula does; prefer ``adacos-fixed``
    or D >= 32 there.

    Args:
        embedding_dim: feature size D.
        num_classes: number of classes C (>= 3: the initial scale is 0 at C = 2).
        dynamic: update ``s`` every training step (else keep the fixed scale).

    Shapes: ``emb`` ``(B, D)``, ``weight`` ``(C, D)``, logits ``(B, C)``; ``s`` a float scalar buffer.
    """

    normalized_features = True

    def __init__(self, embedding_dim: int, num_classes: int, *, dynamic: bool = True) -> None:
        if num_classes < 3:
            raise ValueError(f"AdaCos needs num_classes >= 3 (its scale sqrt(2) log(C - 1) is 0 at C = 2), "
                             f"but got {num_classes=}")
        super().__init__(embedding_dim, num_classes)
        self.dynamic = bool(dynamic)
        self.register_buffer("s", torch.tensor(math.sqrt(2.0) * math.log(num_classes - 1)))

    def update_state(self, emb: torch.Tensor, labels: torch.Tensor) -> None:
        if not self.dynamic:
            return
        cos = self.cosine(emb.to(self.weight.dtype)).to(self.s.dtype)
        target = torch.zeros_like(cos, dtype=torch.bool).scatter(1, labels[:, None], True)
        log_b_avg = torch.logsumexp((self.s * cos).masked_fill(target, -math.inf).flatten(), 0) - math.log(len(cos))
        theta_med = torch.acos(clamp_cos(cos[target])).median()
        new = log_b_avg / torch.cos(theta_med.clamp(max=math.pi / 4))
        self.s.copy_(torch.where(torch.isfinite(new), new, self.s))  # where Eq. 15 overflows, keep the last s

    def scale(self, cos: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.s.to(cos.dtype) * cos

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dynamic={self.dynamic}"


@LOSSES.register("adacos", aliases={"adacos-fixed": {"dynamic": False}}, validate=check_by_building("adacos"))
def adacos(embedding_dim: int, num_classes: int, dynamic: bool = True) -> AdaCosHead:
    """AdaCos: s cos(theta), no margin; s = sqrt(2) log(C-1) fixed, or per step from B_avg and the median angle."""
    return AdaCosHead(embedding_dim, num_classes, dynamic=dynamic)
