"""Multiplicative angular margins: L-Softmax (Liu et al. 2016) and A-Softmax / SphereFace (Liu et al. 2017).

Both replace the target ``cos(theta)`` by ``psi(theta) = (-1)^k cos(m theta) - 2k``, ``k = floor(m theta / pi)``,
blended with the plain cosine by an annealed ``lambda`` as the authors' Caffe layers do::

    target = ||x|| (lambda cos(theta) + psi(theta)) / (1 + lambda)          (times ||W_y|| for L-Softmax)
    lambda = max(lambda_min, base * (1 + gamma * iteration) ** -power)

The iteration counter is a buffer (saved in ``state_dict``), incremented once per training forward *before*
lambda is computed, as in Caffe's ``iter_ += 1`` (so the first training step uses iteration 1);
``head.logits(emb, labels)`` uses the current counter, i.e. the lambda of the last training step.
"""

from __future__ import annotations

import torch

from registry import LOSSES
from registry.losses._base import MarginHead, check_by_building, multiple_angle_psi

__all__ = ["LargeMarginSoftmaxHead", "SphereFaceHead"]


class LargeMarginSoftmaxHead(MarginHead):
    """L-Softmax: logits ``||W_j|| ||x|| cos(theta_j)``, target ``||W_y|| ||x|| (lambda cos + psi) / (1 + lambda)``.

    Paper: L-Softmax, https://arxiv.org/abs/1612.02295 (Eqs. 5-6; lambda as the authors' Caffe layer). No bias.

    Args:
        embedding_dim: feature size D.
        num_classes: number of classes C.
        m: integer multiplier of the target angle, in 1..4 (m = 1: plain softmax without bias).
        base, gamma, power, lambda_min: the lambda schedule (unitless; defaults: SphereFace's prototxt).

    Shapes: ``emb`` ``(B, D)``, ``weight`` ``(C, D)``, logits ``(B, C)``; ``iteration`` a long scalar buffer.

    pytorch-metric-learning's ``LargeMarginSoftmaxLoss(margin=m, scale=1)`` is this head with lambda = 0
    (``base=0, lambda_min=0``), with ``W`` stored transposed ``(D, C)``.
    """

    weight_norm = True  # multiply by ||W_j|| (L-Softmax); A-Softmax normalizes W instead

    def __init__(self, embedding_dim: int, num_classes: int, *, m: int = 4, base: float = 1000.0,
                 gamma: float = 0.12, power: float = 1.0, lambda_min: float = 5.0) -> None:
        super().__init__(embedding_dim, num_classes)
        if m not in (1, 2, 3, 4):
            raise ValueError(f"m must be an integer in 1..4, but got {m=}")
        for name, value in (("base", base), ("gamma", gamma), ("power", power), ("lambda_min", lambda_min)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, but got {name}={value!r}")
        self.m = int(m)
        self.base, self.gamma, self.power, self.lambda_min = float(base), float(gamma), float(power), float(lambda_min)
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))

    def lambda_at(self, iteration: torch.Tensor | int) -> torch.Tensor:
        """``max(lambda_min, base * (1 + gamma * iteration) ** -power)`` as a float64 tensor (float32 on MPS)."""
        device = self.iteration.device
        dtype = torch.float32 if device.type == "mps" else torch.float64
        it = torch.as_tensor(iteration, dtype=dtype, device=device)
        return (self.base * (1.0 + self.gamma * it) ** (-self.power)).clamp_min(self.lambda_min)

    @property
    def current_lambda(self) -> torch.Tensor:
        """Lambda at the current iteration counter."""
        return self.lambda_at(self.iteration)

    def update_state(self, emb: torch.Tensor, labels: torch.Tensor) -> None:
        self.iteration += 1

    def target_cosine(self, cos_y: torch.Tensor, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        lam = self.current_lambda.to(cos_y.dtype)
        return (lam * cos_y + multiple_angle_psi(cos_y, self.m)) / (1.0 + lam)

    def scale(self, cos: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        out = cos * emb.norm(dim=1, keepdim=True).to(cos.dtype)
        return out * self.weight.norm(dim=1).to(cos.dtype) if self.weight_norm else out

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, m={self.m}, base={self.base}, gamma={self.gamma}, power={self.power}, "
                f"lambda_min={self.lambda_min}")


class SphereFaceHead(LargeMarginSoftmaxHead):
    """A-Softmax: ``||W_j|| = 1``, no bias, logits ``||x|| cos(theta_j)``, target
    ``||x|| (lambda cos(theta) + psi(theta)) / (1 + lambda)``.

    Paper: SphereFace, https://arxiv.org/abs/1704.08063 (Eqs. 6-7; lambda as the authors' Caffe layer).

    Args: as `LargeMarginSoftmaxHead`: m an integer multiplier of the angle in 1..4 (the paper uses 4),
    lambda's schedule unitless.

    Shapes: ``emb`` ``(B, D)``, ``weight`` ``(C, D)`` (normalized inside), logits ``(B, C)``; ``iteration`` a
    long scalar buffer.

    pytorch-metric-learning's ``SphereFaceLoss(margin=m, scale=1)`` is this head with lambda = 0. SphereFace's
    Caffe layer normalizes ``W`` in place each step and takes the plain inner product's weight gradient
    ``top_diff^T x`` (skipping the normalization's and the margin's Jacobians); here, as in
    clcarwin/sphereface_pytorch's ``AngleLinear``, ``W`` is normalized inside the graph, which gives the same
    logits and the true gradient. That gradient carries a ``1 / ||W_j||`` and an SGD step turns class ``j``
    ``1 / ||W_j||^2`` times as far, so the rows start at unit norm, where Caffe's layer holds them and
    ``AngleLinear`` starts them: `MarginHead`'s Glorot rows (norm 0.3 at 10,572 x 512, 0.1 to 1 in 2-D and
    3-D) turned classes 1 to 100 times as far as the original. The directions are `MarginHead`'s draw.
    """

    weight_norm = False
    normalized_features = True
    unit_rows = True


@LOSSES.register("lsoftmax", validate=check_by_building("lsoftmax"))
def lsoftmax(embedding_dim: int, num_classes: int, m: int = 4, base: float = 1000.0, gamma: float = 0.12,
             power: float = 1.0, lambda_min: float = 5.0) -> LargeMarginSoftmaxHead:
    """L-Softmax: ||W_y|| ||x|| psi(theta) target (integer m in 1..4), annealed by lambda; no bias.

    lambda = max(lambda_min, base * (1 + gamma * iteration) ** -power), iteration counted per training step.
    """
    return LargeMarginSoftmaxHead(embedding_dim, num_classes, m=m, base=base, gamma=gamma, power=power,
                                  lambda_min=lambda_min)


@LOSSES.register("sphereface", validate=check_by_building("sphereface"))
def sphereface(embedding_dim: int, num_classes: int, m: int = 4, base: float = 1000.0, gamma: float = 0.12,
               power: float = 1.0, lambda_min: float = 5.0) -> SphereFaceHead:
    """A-Softmax (SphereFace): ||W|| = 1, ||x|| psi(theta) target (integer m in 1..4), annealed like L-Softmax."""
    return SphereFaceHead(embedding_dim, num_classes, m=m, base=base, gamma=gamma, power=power,
                          lambda_min=lambda_min)
