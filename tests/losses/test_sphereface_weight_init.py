"""A-Softmax and modified softmax class weights start where SphereFace's layers hold them: at unit norm.

The heads normalize ``W`` inside the graph, so the gradient of a stored row carries ``1 / ||W_j||`` and an SGD
step turns class ``j`` by ``1 / ||W_j||^2`` times the original's step. The references, float64, written here:

* clcarwin/sphereface_pytorch's ``AngleLinear`` + ``AngleLoss`` (the casia-lfw grid's A-Softmax seed): ``W``
  ``(D, C)`` drawn as ``uniform(-1, 1).renorm(2, 1, 1e-5).mul(1e5)`` (unit columns), renormalized the same
  way in the forward, ``k = floor(m theta / 3.14159265)``, target ``|x| (lambda cos + psi) / (1 + lambda)``;
* SphereFace's Caffe ``MarginInnerProduct`` of type ``SINGLE`` (the modified softmax): ``W`` normalized in
  place at each forward, logits ``x . W_j``, weight gradient ``top_diff^T x``, then the plain SGD step.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from registry import LOSSES

C, D, B, LR = 10, 3, 64, 1e-3


def _batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return 3.0 * torch.randn(B, D, generator=g, dtype=torch.float64), torch.randint(0, C, (B,), generator=g)


def _clcarwin_step(w_cols: torch.Tensor, emb: torch.Tensor, labels: torch.Tensor, lam: float) -> torch.Tensor:
    """One SGD step (no momentum, no decay) of AngleLinear(m=4) + AngleLoss(gamma=0) from ``w_cols`` (D, C)."""
    w = w_cols.clone().requires_grad_()
    ww = w.renorm(2, 1, 1e-5).mul(1e5)
    xlen = emb.pow(2).sum(1).pow(0.5)
    wlen = ww.pow(2).sum(0).pow(0.5)
    cos = (emb.mm(ww) / xlen.view(-1, 1) / wlen.view(1, -1)).clamp(-1, 1)
    cos_m = 8 * cos**4 - 8 * cos**2 + 1
    k = (4 * cos.detach().acos() / 3.14159265).floor()
    phi = (-1.0) ** k * cos_m - 2 * k
    cos, phi = cos * xlen.view(-1, 1), phi * xlen.view(-1, 1)
    index = F.one_hot(labels, C).bool()
    output = cos * 1.0
    output[index] -= cos[index] / (1 + lam)
    output[index] += phi[index] / (1 + lam)
    F.cross_entropy(output, labels).backward()
    return (w - LR * w.grad).detach()


def _caffe_single_step(w_rows: torch.Tensor, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One SGD step of MarginInnerProduct SINGLE: normalize W in place, top = x W^T, W -= lr top_diff^T x."""
    w = w_rows / w_rows.norm(dim=1, keepdim=True)
    top = (emb @ w.T).requires_grad_()
    F.cross_entropy(top, labels).backward()
    return w - LR * top.grad.T @ emb


def _angles(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.acos((F.normalize(a, dim=1) * F.normalize(b, dim=1)).sum(1).clamp(-1, 1))


def _head_step(head, emb, labels) -> torch.Tensor:
    head.train()
    head.zero_grad()
    head(emb, labels).backward()
    return (head.weight - LR * head.weight.grad).detach()


@pytest.mark.parametrize("name", ["sphereface", "modified-softmax"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_class_weights_start_at_unit_norm(name, seed):
    torch.manual_seed(seed)
    head = LOSSES.create(name, embedding_dim=D, num_classes=C)
    torch.testing.assert_close(head.weight.norm(dim=1), torch.ones(C), atol=1e-6, rtol=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_first_sgd_step_equals_clcarwin_angle_linear(seed):
    # Same class directions, clcarwin's unit columns: one step must give the same weights (after
    # normalization, i.e. the same logits), up to renorm's 1e-7 in its divisor (steps are ~1e-3 here). Glorot
    # rows (norm 0.1 to 1 in 3-D) turned classes 1.3 to 74 times as far.
    torch.manual_seed(seed)
    head = LOSSES.create("sphereface", embedding_dim=D, num_classes=C).double()
    head.iteration.fill_(99)  # the step uses iteration 100: lambda = 1000 / 13 (clcarwin's counter differs)
    lam = float(head.lambda_at(100))
    emb, labels = _batch(seed)
    w0 = head.weight.detach().clone()
    ref = _clcarwin_step(w0.T.renorm(2, 1, 1e-5).mul(1e5), emb, labels, lam).T
    got = _head_step(head, emb, labels)
    torch.testing.assert_close(F.normalize(got, dim=1), F.normalize(ref, dim=1), atol=1e-9, rtol=0)
    assert (_angles(ref, w0) > 0).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_first_sgd_step_turns_classes_as_caffe_single_margin_layer(seed):
    # Caffe steps on the unprojected gradient and renormalizes; the head steps on the projected one. To first
    # order in lr the angles turned agree; at lr 1e-3 within 1% (Glorot rows: 1.3 to 74 times).
    torch.manual_seed(seed)
    head = LOSSES.create("modified-softmax", embedding_dim=D, num_classes=C).double()
    emb, labels = _batch(seed)
    w0 = head.weight.detach().clone()
    ref = _caffe_single_step(w0, emb, labels)
    got = _head_step(head, emb, labels)
    torch.testing.assert_close(_angles(got, w0) / _angles(ref, w0), torch.ones(C, dtype=torch.float64),
                               atol=0.01, rtol=0)
