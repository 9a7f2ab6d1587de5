"""Heads against pytorch-metric-learning's implementations of the same losses, set to the same weights.

Conventions that differ (and how each test bridges them):
* PML stores ``W`` as ``(D, C)``; the heads as ``(C, D)``: ``pml.W = head.weight.T``.
* PML's ``ArcFaceLoss`` / ``SubCenterArcFaceLoss`` take the margin in degrees; the heads in radians.
* PML's ``LargeMarginSoftmaxLoss`` / ``SphereFaceLoss`` have no lambda annealing: they equal the heads with
  lambda = 0 (``base=0, lambda_min=0``); ``combined`` with ``m1`` and no normalization is the same function.
* PML's ``NormalizedSoftmaxLoss`` takes ``temperature = 1 / s``.
* PML's sub-centre layout: column ``j * K + k`` of ``W`` is sub-centre k of class j, as the head's rows.
"""

from __future__ import annotations

import math

import pytest
import torch

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")

from registry import LOSSES  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pytorch_metric_learning.*")

D, C, B = 4, 7, 64
TOL = 1e-5


def batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    emb = torch.randn(B, D, generator=gen, dtype=torch.float64) * (0.5 + 2 * torch.rand(B, 1, generator=gen,
                                                                                         dtype=torch.float64))
    return emb, torch.randint(0, C, (B,), generator=gen)


def pair(name: str, params: dict, pml_loss: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    head = LOSSES.create(name, embedding_dim=D, num_classes=C, **params).double().eval()
    pml_loss = pml_loss.double()
    with torch.no_grad():
        pml_loss.W.data = head.weight.detach().t().clone()
    return head, pml_loss


def assert_same_loss(head, pml_loss, seed: int = 0) -> None:
    emb, labels = batch(seed)
    emb_a = emb.clone().requires_grad_(True)
    emb_b = emb.clone().requires_grad_(True)
    ours, theirs = head(emb_a, labels), pml_loss(emb_b, labels)
    assert ours.item() == pytest.approx(theirs.item(), abs=TOL)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(emb_a.grad, emb_b.grad, atol=TOL, rtol=0)


@pytest.mark.parametrize("s, m", [(64.0, 0.35), (4.0, 0.1), (30.0, 0.2)])
def test_cosface_equals_pml(s, m):
    head, theirs = pair("cosface", {"s": s, "m": m}, pml_losses.CosFaceLoss(C, D, margin=m, scale=s))
    assert_same_loss(head, theirs)


@pytest.mark.parametrize("s, m", [(64.0, 0.5), (4.0, 0.1), (30.0, 1.2)])
def test_arcface_equals_pml_with_margin_in_degrees(s, m):
    head, theirs = pair("arcface", {"s": s, "m": m}, pml_losses.ArcFaceLoss(C, D, margin=math.degrees(m), scale=s))
    assert_same_loss(head, theirs)


@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_lsoftmax_with_lambda_zero_equals_pml(m):
    head, theirs = pair("lsoftmax", {"m": m, "base": 0.0, "lambda_min": 0.0},
                        pml_losses.LargeMarginSoftmaxLoss(C, D, margin=m, scale=1))
    assert_same_loss(head, theirs)


@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_sphereface_with_lambda_zero_equals_pml(m):
    head, theirs = pair("sphereface", {"m": m, "base": 0.0, "lambda_min": 0.0},
                        pml_losses.SphereFaceLoss(C, D, margin=m, scale=1))
    assert_same_loss(head, theirs)


@pytest.mark.parametrize("m", [2, 3, 4])
def test_combined_unnormalized_equals_pml_large_margin_softmax(m):
    # The "L-softmax" rows of the table: w_norm = x_norm = False, s = 1, m1 = m.
    head, theirs = pair("combined", {"w_norm": False, "x_norm": False, "s": 1.0, "m1": m, "m2": 0.0, "m3": 0.0},
                        pml_losses.LargeMarginSoftmaxLoss(C, D, margin=m, scale=1))
    assert_same_loss(head, theirs)


@pytest.mark.parametrize("k", [1, 3])
def test_subcenter_arcface_equals_pml(k):
    s, m = 64.0, 0.5
    head, theirs = pair("subcenter-arcface", {"k": k, "s": s, "m": m},
                        pml_losses.SubCenterArcFaceLoss(num_classes=C, embedding_size=D, margin=math.degrees(m),
                                                        scale=s, sub_centers=k))
    assert head.weight.shape == (C * k, D)
    assert_same_loss(head, theirs)


@pytest.mark.parametrize("s", [16.0, 20.0])
def test_norm_softmax_equals_pml_normalized_softmax(s):
    head, theirs = pair("norm-softmax", {"s": s}, pml_losses.NormalizedSoftmaxLoss(C, D, temperature=1.0 / s))
    assert_same_loss(head, theirs)


def test_pml_comparison_is_sensitive():
    # Guard against a vacuous comparison: a different margin gives a different loss.
    head, theirs = pair("cosface", {"s": 64.0, "m": 0.35}, pml_losses.CosFaceLoss(C, D, margin=0.3, scale=64.0))
    emb, labels = batch(0)
    assert abs(head(emb, labels).item() - theirs(emb, labels).item()) > 1e-3
