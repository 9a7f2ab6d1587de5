"""The class-chunked cross-entropy against the plain formula written here (float64, acos-based margins), for
every chunk size from 1 up, labels in the first and the last (partial) chunk; loss and both gradients to 1e-9."""

from __future__ import annotations

import math

import pytest
import torch

from registry import LOSSES
from registry.losses._chunked import chunked_margin_cross_entropy

C, D, B, S = 10, 4, 6, 10.0


def reference_loss(emb, weight, labels, s, margin):
    cos = (emb / emb.norm(dim=1, keepdim=True)) @ (weight / weight.norm(dim=1, keepdim=True)).t()
    rows = torch.arange(len(labels))
    onehot = torch.zeros_like(cos, dtype=torch.bool)
    onehot[rows, labels] = True
    logits = s * torch.where(onehot, margin(cos), cos)
    return (torch.logsumexp(logits, 1) - logits[rows, labels]).mean()


def arcface_ref(m):  # insightface: cos(theta + m) where theta + m <= pi, else cos(theta) - m sin(m)
    def fn(c):
        theta = torch.acos(c.clamp(-1 + 1e-12, 1 - 1e-12))
        return torch.where(theta + m <= math.pi, torch.cos(theta + m), c - m * math.sin(m))
    return fn


MARGINS = {"cosface": lambda c: c - 0.35, "arcface": arcface_ref(0.5)}
LABELS = {"first": lambda: torch.zeros(B, dtype=torch.long), "last": lambda: torch.full((B,), C - 1),
          "mixed": lambda: torch.tensor([0, C - 1, 3, 0, 7, C - 1])}


@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 7, 9])
@pytest.mark.parametrize("margin", sorted(MARGINS))
@pytest.mark.parametrize("labels", sorted(LABELS))
def test_chunked_equals_reference_for_every_chunk_size(chunk, margin, labels):
    # chunk 1 with label 0: the first chunk holds only the target, so that row's running max is -inf
    # (it gave NaN before the finite shift); chunks 3, 4, 7, 9 leave a partial last chunk holding label C - 1
    gen = torch.Generator().manual_seed(chunk)
    emb = torch.randn(B, D, dtype=torch.float64, generator=gen)
    weight = torch.randn(C, D, dtype=torch.float64, generator=gen)
    y = LABELS[labels]()
    fn = MARGINS[margin]
    e1, w1 = emb.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    e2, w2 = emb.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    got = chunked_margin_cross_entropy(e1, w1, y, S, fn, chunk_classes=chunk)
    want = reference_loss(e2, w2, y, S, fn)
    got.backward()
    want.backward()
    assert torch.isfinite(got)
    assert got.item() == pytest.approx(want.item(), abs=1e-9)
    torch.testing.assert_close(e1.grad, e2.grad, atol=1e-9, rtol=0)
    torch.testing.assert_close(w1.grad, w2.grad, atol=1e-9, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunk_of_one_class_stays_finite_in_low_precision(dtype):
    emb = torch.randn(B, D).to(dtype)
    weight = torch.randn(C, D).to(dtype)
    out = chunked_margin_cross_entropy(emb, weight, LABELS["mixed"](), S, MARGINS["cosface"], chunk_classes=1)
    assert torch.isfinite(out)


def test_head_with_chunk_classes_one_equals_its_plain_loss():
    torch.manual_seed(0)
    chunked = LOSSES.create("arcface", embedding_dim=D, num_classes=C, s=S, chunk_classes=1).double()
    emb, y = torch.randn(B, D, dtype=torch.float64), LABELS["mixed"]()
    want = reference_loss(emb, chunked.weight.detach(), y, S, arcface_ref(0.5))
    assert chunked(emb, y).item() == pytest.approx(want.item(), abs=1e-9)
