"""The class-chunked margin cross-entropy equals the plain one (loss and gradients), computed in the test."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from registry.losses._chunked import chunked_margin_cross_entropy


def plain_loss(emb, weight, labels, s, target_fn):
    cos = F.linear(F.normalize(emb), F.normalize(weight))
    onehot = F.one_hot(labels, weight.shape[0]).bool()
    logits = s * torch.where(onehot, target_fn(cos), cos)
    return F.cross_entropy(logits, labels)


def cosface(m):
    return lambda c: c - m


def arcface(m):
    # insightface: cos(theta + m) where theta + m <= pi, else cos(theta) - m sin(m)
    def fn(c):
        sin = torch.sqrt((1 - c * c).clamp_min(0))
        phi = c * math.cos(m) - sin * math.sin(m)
        return torch.where(c > math.cos(math.pi - m), phi, c - math.sin(math.pi - m) * m)
    return fn


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("margin", ["cosface", "arcface"])
@pytest.mark.parametrize("chunk", [7, 64, 1000])
def test_chunked_equals_plain_loss_and_gradients(dtype, tol, margin, chunk):
    torch.manual_seed(0)
    b, d, c, s = 16, 8, 300, 30.0
    target_fn = cosface(0.35) if margin == "cosface" else arcface(0.5)
    emb = torch.randn(b, d, dtype=dtype, requires_grad=True)
    weight = torch.randn(c, d, dtype=dtype, requires_grad=True)
    labels = torch.randint(0, c, (b,))
    ref = plain_loss(emb, weight, labels, s, target_fn)
    g_emb_ref, g_w_ref = torch.autograd.grad(ref, (emb, weight))
    out = chunked_margin_cross_entropy(emb, weight, labels, s, target_fn, chunk_classes=chunk)
    g_emb, g_w = torch.autograd.grad(out, (emb, weight))
    assert abs(out.item() - ref.item()) <= tol * max(1.0, abs(ref.item()))
    torch.testing.assert_close(g_emb, g_emb_ref, atol=tol, rtol=tol)
    torch.testing.assert_close(g_w, g_w_ref, atol=tol, rtol=tol)


def test_confident_target_keeps_full_precision():
    # the target dominates (p_y ~ 1 - 1e-12): a subtract-the-target formulation would cancel to zero
    emb = torch.tensor([[1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    weight = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]], dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0])
    ref = plain_loss(emb, weight, labels, 30.0, cosface(0.1))
    out = chunked_margin_cross_entropy(emb, weight, labels, 30.0, cosface(0.1), chunk_classes=2)
    assert out.item() == pytest.approx(ref.item(), rel=1e-9)


def test_gradcheck_float64():
    torch.manual_seed(1)
    emb = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 5, 10, 5])
    assert torch.autograd.gradcheck(
        lambda e, w: chunked_margin_cross_entropy(e, w, labels, 8.0, cosface(0.2), chunk_classes=4), (emb, weight))
