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


HEADS_THAT_CHUNK = {
    "cosface": ({"s": 30.0, "m": 0.35}, cosface(0.35)),
    "arcface": ({"s": 30.0, "m": 0.5}, arcface(0.5)),
    "combined": ({"s": 30.0, "m1": 1.0, "m2": 0.3, "m3": 0.2},
                 lambda c: arcface(0.3)(c) - 0.2),  # cos(theta + m2) - m3 with insightface's fallback
}


@pytest.mark.parametrize("name", sorted(HEADS_THAT_CHUNK))
def test_head_chooses_the_chunked_loss_above_chunk_classes(name, monkeypatch):
    """The registered head, with more classes than ``chunk_classes``, takes the chunked path and gives the
    test's own plain cross-entropy (float64) and its gradients."""
    from registry import LOSSES
    from registry.losses import _chunked

    params, target_fn = HEADS_THAT_CHUNK[name]
    torch.manual_seed(2)
    head = LOSSES.create(name, embedding_dim=8, num_classes=300, chunk_classes=64, **params).double()
    calls = []
    original = _chunked.chunked_margin_cross_entropy
    monkeypatch.setattr(_chunked, "chunked_margin_cross_entropy", lambda *a, **k: calls.append(1) or original(*a, **k))
    emb = torch.randn(16, 8, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 300, (16,))
    out = head(emb, labels)
    assert calls, "the head did not take the chunked path"
    g_emb, g_w = torch.autograd.grad(out, (emb, head.weight))
    w = head.weight.detach().clone().requires_grad_(True)
    ref = plain_loss(emb, w, labels, params["s"], target_fn)
    g_emb_ref, g_w_ref = torch.autograd.grad(ref, (emb, w))
    assert out.item() == pytest.approx(ref.item(), rel=1e-10)
    torch.testing.assert_close(g_emb, g_emb_ref, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(g_w, g_w_ref, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("name,params", [("cosface", {"chunk_classes": 0}), ("cosface", {"chunk_classes": 1000}),
                                         ("combined", {"x_norm": False, "chunk_classes": 64}),
                                         ("subcenter-arcface", {})])
def test_head_keeps_the_plain_loss_where_it_must(name, params, monkeypatch):
    from registry import LOSSES
    from registry.losses import _chunked

    monkeypatch.setattr(_chunked, "chunked_margin_cross_entropy", lambda *a, **k: pytest.fail("chunked path taken"))
    head = LOSSES.create(name, embedding_dim=8, num_classes=300, **params)
    head(torch.randn(4, 8), torch.randint(0, 300, (4,)))


def test_chunk_classes_must_be_a_non_negative_int():
    from registry import LOSSES

    with pytest.raises(ValueError, match="chunk_classes must be an integer >= 0"):
        LOSSES.create("cosface", embedding_dim=8, num_classes=10, chunk_classes=-1)
