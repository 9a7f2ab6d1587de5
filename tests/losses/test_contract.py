"""Contract tests generated from the registry: every registered loss goes through the same checks.

A newly registered head is tested here automatically: the call contract, its listing (parameters with
defaults, a summary), the state_dict round trip, float64 gradcheck, and finiteness under bfloat16.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F

from registry import LOSSES
from registry.losses import MarginHead

NAMES = LOSSES.names()
D, C, B = 3, 5, 8


def make(name: str, **params) -> MarginHead:
    return LOSSES.create(name, embedding_dim=D, num_classes=C, **params)


def test_the_zoo_is_registered():
    expected = {"softmax", "modified-softmax", "norm-softmax", "lsoftmax", "sphereface", "cosface", "arcface",
                "combined", "center", "adacos", "adacos-fixed", "subcenter-arcface", "curricularface", "adaface"}
    assert expected <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_listing_has_summary_and_keyword_defaults(name):
    # `bench list losses` shows LOSSES.parameters(name) and the summary: every parameter needs a default.
    entry = LOSSES.entry(name)
    assert entry.summary and len(entry.summary) <= 120
    params = LOSSES.parameters(name)
    assert all(v is not inspect.Parameter.empty for v in params.values()), params
    sig = inspect.signature(entry.factory)
    assert list(sig.parameters)[:2] == ["embedding_dim", "num_classes"]


@pytest.mark.parametrize("name", NAMES)
def test_head_contract_shapes_and_attributes(name):
    head = make(name)
    assert isinstance(head, MarginHead)
    assert isinstance(head.normalized_features, bool)
    assert head.weight.shape[1] == D and head.weight.shape[0] % C == 0
    emb, labels = torch.randn(B, D), torch.randint(0, C, (B,))
    loss = head(emb, labels)
    assert loss.shape == () and torch.isfinite(loss)
    assert head.logits(emb, labels).shape == (B, C)
    assert head.logits(emb).shape == (B, C)


@pytest.mark.parametrize("name", NAMES)
def test_head_docstring_states_paper_shapes_and_units(name):
    doc = inspect.getdoc(type(make(name))) or ""
    assert "Paper" in doc and "Shapes" in doc, doc
    assert any(word in doc for word in ("radian", "unitless", "Units", "cosine units")), doc


@pytest.mark.parametrize("name", NAMES)
def test_forward_is_cross_entropy_of_margin_logits_in_eval_mode(name):
    head = make(name).eval()
    emb, labels = torch.randn(B, D), torch.randint(0, C, (B,))
    expected = F.cross_entropy(head.logits(emb, labels), labels)
    if name == "center":
        expected = expected + head.center_weight * head.center(emb, labels)
    torch.testing.assert_close(head(emb, labels), expected)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_gives_the_same_logits(name):
    torch.manual_seed(0)
    head = make(name).train()
    for _ in range(3):  # advance any internal state (iteration counters, running statistics)
        head(torch.randn(B, D), torch.randint(0, C, (B,)))
    clone = make(name)
    clone.load_state_dict(head.state_dict())
    emb, labels = torch.randn(B, D), torch.randint(0, C, (B,))
    torch.testing.assert_close(clone.logits(emb, labels), head.logits(emb, labels))
    torch.testing.assert_close(clone.train()(emb, labels), head(emb, labels))


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_float64(name):
    # Analytic gradients w.r.t. embeddings and every parameter match finite differences, for the loss and
    # the margin logits (eval mode: the state is frozen, so repeated calls compute one function). gradcheck
    # perturbs the head's own parameter tensors in place, which the closures read.
    torch.manual_seed(1)
    head = make(name).double().eval()
    emb = torch.randn(B, D, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, C, (B,))
    params = tuple(head.parameters())
    prep = lambda e: e  # noqa: E731
    if name == "adaface":
        # AdaFace's margin reads ||x|| under stop-gradient (the paper's detach): check at fixed norms, where
        # that dependence is constant, so finite differences see the same function autograd differentiates.
        norms = emb.detach().norm(dim=1, keepdim=True)
        prep = lambda e: F.normalize(e, dim=1) * norms  # noqa: E731
    assert torch.autograd.gradcheck(lambda e, *_: head(prep(e), labels), (emb, *params))
    assert torch.autograd.gradcheck(lambda e, *_: head.logits(prep(e), labels), (emb, *params), fast_mode=True)


def _bf16_batches(n: int, gen: torch.Generator, weight: torch.Tensor):
    """Random batches mixing ordinary embeddings (norms over ~6 orders of magnitude), embeddings parallel
    (theta ~ 0) and anti-parallel (theta ~ pi) to their class weight, exactly and within 1e-4, near-zero
    and all-zero rows, and every tenth batch all zeros; rounded to bfloat16 and back, as a bf16 backbone
    hands them over."""
    labels = torch.randint(0, C, (n, B), generator=gen)
    emb = torch.randn(n, B, D, generator=gen) * torch.exp(torch.randn(n, B, 1, generator=gen) * 2)
    w_dir = F.normalize(weight.detach()[labels * (weight.shape[0] // C)], dim=2)
    scale = torch.rand(n, 4, 1, generator=gen) * 10
    jitter = torch.tensor([0.0, 0.0, 1e-4, 1e-4])[None, :, None] * torch.randn(n, 4, D, generator=gen)
    emb[:, :4] = w_dir[:, :4] * torch.tensor([1.0, -1.0, 1.0, -1.0])[None, :, None] * scale + jitter
    emb[:, 4] = 0.0
    emb[:, 5] *= 1e-20
    emb[::10] = 0.0
    return list(zip(emb.bfloat16().float().unbind(0), labels.unbind(0), strict=True))


#: Every head with its defaults, plus the configurations whose code paths the defaults do not reach.
ROBUSTNESS = [(name, {}) for name in NAMES] + [
    ("lsoftmax", {"m": 2}),  # psi's k = 1 branch at the default scale of features
    ("combined", {"m1": 2.5, "m2": 0.2, "m3": 0.1}),  # psi over acos (non-integer m1, additive m2)
    ("arcface", {"easy_margin": True}),
]


@pytest.mark.parametrize("name, params", ROBUSTNESS, ids=[f"{n}-{p}" if p else n for n, p in ROBUSTNESS])
def test_bf16_autocast_thousand_batches_stay_finite(name, params):
    # Under bfloat16 autocast (cosines computed in bf16), 1000 training steps' losses and gradients are finite.
    gen = torch.Generator().manual_seed(2)
    head = make(name, **params).train()
    finite = []
    for emb, labels in _bf16_batches(1000, gen, head.weight):
        emb = emb.clone().requires_grad_(True)
        head.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = head(emb, labels)
        loss.backward()
        grads = [emb.grad] + [p.grad for p in head.parameters() if p.grad is not None]
        finite.append(torch.stack([loss.isfinite()] + [g.isfinite().all() for g in grads]).all())
    bad = (~torch.stack(finite)).nonzero().flatten().tolist()
    assert not bad, f"non-finite loss or gradient at steps {bad[:10]}"
    assert all(torch.isfinite(b).all() for b in head.buffers() if b.is_floating_point())


@pytest.mark.parametrize("name", NAMES)
def test_fp32_with_bf16_rounded_inputs_stays_finite(name):
    # What the harness does: bf16 backbone output cast to fp32, head in fp32 with autocast off.
    gen = torch.Generator().manual_seed(3)
    head = make(name).train()
    finite = []
    for emb, labels in _bf16_batches(200, gen, head.weight):
        emb = emb.clone().requires_grad_(True)
        head.zero_grad(set_to_none=True)
        loss = head(emb, labels)
        loss.backward()
        grads = [emb.grad] + [p.grad for p in head.parameters() if p.grad is not None]
        finite.append(torch.stack([loss.isfinite()] + [g.isfinite().all() for g in grads]).all())
    assert torch.stack(finite).all()


@pytest.mark.parametrize("name", NAMES)
def test_prediction_logits_ignore_the_margin(name):
    # Without labels the logits are the plain ones: the same for every label assignment.
    head = make(name).eval()
    emb = torch.randn(B, D)
    torch.testing.assert_close(head.logits(emb), head.logits(emb.clone()))
    if not name.startswith(("softmax", "modified-softmax", "norm-softmax", "adacos", "center")):
        labels = torch.randint(0, C, (B,))
        assert not torch.allclose(head.logits(emb, labels), head.logits(emb))


@pytest.mark.parametrize("name", NAMES)
def test_grid_validation_builds_nothing_and_keeps_the_rng(name):
    # LOSSES.check (what grid validation calls) probes the head without touching the global RNG.
    state = torch.random.get_rng_state()
    LOSSES.check(name, {})
    assert torch.equal(state, torch.random.get_rng_state())


# invalid arguments: one pytest.raises each ------------------------------------------------------------
def test_sphereface_rejects_m_outside_1_to_4():
    with pytest.raises(ValueError, match="m must be an integer in 1..4"):
        make("sphereface", m=5)


def test_lsoftmax_rejects_fractional_m():
    with pytest.raises(ValueError, match="m must be an integer in 1..4"):
        make("lsoftmax", m=2.5)


def test_lsoftmax_rejects_negative_lambda_min():
    with pytest.raises(ValueError, match="lambda_min must be >= 0"):
        make("lsoftmax", lambda_min=-1.0)


def test_cosface_rejects_non_positive_scale():
    with pytest.raises(ValueError, match="s must be > 0"):
        make("cosface", s=0.0)


def test_arcface_rejects_margin_beyond_pi():
    with pytest.raises(ValueError, match=r"m must be in \[0, pi\)"):
        make("arcface", m=math.pi)


def test_combined_rejects_m1_below_one():
    with pytest.raises(ValueError, match="m1 must be >= 1"):
        make("combined", m1=0.5)


def test_combined_rejects_negative_m2():
    with pytest.raises(ValueError, match="m2 must be in"):
        make("combined", m2=-0.1)


def test_subcenter_rejects_zero_subcentres():
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        make("subcenter-arcface", k=0)


def test_adacos_rejects_two_classes():
    with pytest.raises(ValueError, match="num_classes >= 3"):
        LOSSES.create("adacos", embedding_dim=D, num_classes=2)


def test_curricularface_rejects_t_alpha_above_one():
    with pytest.raises(ValueError, match="t_alpha must be in"):
        make("curricularface", t_alpha=1.5)


def test_adaface_rejects_non_positive_h():
    with pytest.raises(ValueError, match="h must be > 0"):
        make("adaface", h=0.0)


def test_center_rejects_alpha_above_one():
    with pytest.raises(ValueError, match="alpha must be in"):
        make("center", alpha=2.0)


def test_grid_check_reports_a_bad_value_before_training():
    from registry import RegistryError

    with pytest.raises(RegistryError, match="m must be an integer in 1..4, but got m=7"):
        LOSSES.check("sphereface", {"m": 7})
