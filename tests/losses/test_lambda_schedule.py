"""L-Softmax / A-Softmax lambda annealing: the formula at chosen iterations, the counter, and resumption."""

from __future__ import annotations

import io

import pytest
import torch

from registry import LOSSES

D, C, B = 3, 5, 8


def formula(it: int, base=1000.0, gamma=0.12, power=1.0, lambda_min=5.0) -> float:
    return max(lambda_min, base * (1 + gamma * it) ** (-power))


@pytest.mark.parametrize("name", ["lsoftmax", "sphereface"])
@pytest.mark.parametrize("iteration, expected", [(0, 1000.0), (1000, 1000.0 / 121.0), (100000, 5.0)])
def test_lambda_matches_formula_with_sphereface_defaults(name, iteration, expected):
    # base 1000, gamma 0.12, power 1, lambda_min 5: 1000 at 0, 1000/121 at 1000, clamped to 5 at 100000.
    head = LOSSES.create(name, embedding_dim=D, num_classes=C)
    head.iteration.fill_(iteration)
    assert head.current_lambda.item() == pytest.approx(expected, rel=1e-12)
    assert head.current_lambda.item() == pytest.approx(formula(iteration), rel=1e-12)


@pytest.mark.parametrize("iteration", [0, 1000, 100000])
def test_lambda_matches_formula_with_other_settings(iteration):
    params = {"base": 500.0, "gamma": 0.01, "power": 2.0, "lambda_min": 0.1}
    head = LOSSES.create("sphereface", embedding_dim=D, num_classes=C, **params)
    head.iteration.fill_(iteration)
    assert head.current_lambda.item() == pytest.approx(formula(iteration, **params), rel=1e-12)


@pytest.mark.parametrize("iteration", [0, 1000, 100000])
def test_logits_use_the_lambda_of_the_current_iteration(iteration):
    # target = ||x|| (lambda cos + psi) / (1 + lambda); at m = 1 psi = cos, so every lambda gives ||x|| cos:
    # use m = 2 and check the target blends cos and psi with exactly this lambda.
    head = LOSSES.create("sphereface", embedding_dim=2, num_classes=C, m=2).double()
    head.iteration.fill_(iteration)
    theta = torch.tensor([0.3, 2.0], dtype=torch.float64)
    w = torch.nn.functional.normalize(head.weight.detach()[:1], dim=1)[0]
    rot = torch.stack([torch.stack([theta.cos(), -theta.sin()], 1), torch.stack([theta.sin(), theta.cos()], 1)], 1)
    emb = 2.0 * (rot @ w)  # ||x|| = 2, angle theta from class 0
    got = head.logits(emb, torch.tensor([0, 0]))[:, 0]
    lam = formula(iteration)
    psi = torch.where(theta < torch.pi / 2, torch.cos(2 * theta), -torch.cos(2 * theta) - 2)
    torch.testing.assert_close(got, 2.0 * (lam * theta.cos() + psi) / (1 + lam), atol=1e-9, rtol=0)


def test_counter_increments_once_per_training_forward_only():
    head = LOSSES.create("sphereface", embedding_dim=D, num_classes=C)
    emb, labels = torch.randn(B, D), torch.randint(0, C, (B,))
    for _ in range(5):
        head(emb, labels)
    head.logits(emb, labels)
    head.logits(emb)
    head.eval()(emb, labels)
    assert int(head.iteration) == 5


def test_schedule_resumes_from_a_saved_head():
    # The counter is a state_dict buffer: a head saved at step n and loaded elsewhere continues at n + 1.
    torch.manual_seed(0)
    head = LOSSES.create("lsoftmax", embedding_dim=D, num_classes=C, m=3)
    batches = [(torch.randn(B, D), torch.randint(0, C, (B,))) for _ in range(8)]
    for emb, labels in batches[:5]:
        head(emb, labels)
    assert "iteration" in head.state_dict()
    buffer = io.BytesIO()
    torch.save(head.state_dict(), buffer)
    buffer.seek(0)
    resumed = LOSSES.create("lsoftmax", embedding_dim=D, num_classes=C, m=3)
    resumed.load_state_dict(torch.load(buffer))
    assert int(resumed.iteration) == 5
    for emb, labels in batches[5:]:
        assert resumed(emb, labels).item() == head(emb, labels).item()
    assert int(resumed.iteration) == int(head.iteration) == 8
    assert resumed.current_lambda.item() == pytest.approx(formula(8), rel=1e-12)
