"""CenterLoss (Wen et al. 2016): the loss value and the centre update rule (Eq. 4) on a hand-computed example."""

from __future__ import annotations

import pytest
import torch

from registry import LOSSES
from registry.losses import CenterLoss

# Three samples, two classes present (class 2 absent), alpha = 0.5:
#   c0 = (0, 0), c1 = (1, 1), c2 = (5, 5);  x = (1, 0), (3, 0) in class 0 and (2, 2) in class 1.
#   delta c0 = ((c0 - x1) + (c0 - x2)) / (1 + 2) = ((-1, 0) + (-3, 0)) / 3 = (-4/3, 0)  -> c0 = (2/3, 0)
#   delta c1 = (c1 - x3) / (1 + 1) = (-1, -1) / 2 = (-1/2, -1/2)                      -> c1 = (5/4, 5/4)
#   class 2 has no sample: delta c2 = 0                                               -> c2 = (5, 5)
#   L_C = 1/2 mean ||x - c_y||^2 = 1/2 (1 + 9 + 2) / 3 = 2
CENTERS = torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]], dtype=torch.float64)
X = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 2.0]], dtype=torch.float64)
Y = torch.tensor([0, 0, 1])
EXPECTED = torch.tensor([[2.0 / 3.0, 0.0], [1.25, 1.25], [5.0, 5.0]], dtype=torch.float64)


def hand_example() -> CenterLoss:
    loss = CenterLoss(2, 3, alpha=0.5).double()
    loss.centers.copy_(CENTERS)
    return loss


def test_centres_move_exactly_as_eq_4():
    loss = hand_example()
    loss.update(X, Y)
    torch.testing.assert_close(loss.centers, EXPECTED, atol=1e-15, rtol=0)


def test_loss_is_half_the_mean_squared_distance():
    assert hand_example()(X, Y).item() == pytest.approx(2.0, abs=1e-15)


def test_gradient_reaches_features_not_centres():
    # d L_C / d x_i = (x_i - c_yi) / B; centres are a buffer, invisible to the main optimizer.
    loss = hand_example()
    x = X.clone().requires_grad_(True)
    loss(x, Y).backward()
    torch.testing.assert_close(x.grad, (X - CENTERS[Y]) / 3)
    assert list(loss.parameters()) == [] and "centers" in dict(loss.named_buffers())


def test_update_ignores_autograd_and_alpha_zero_freezes():
    loss = CenterLoss(2, 3, alpha=0.0).double()
    before = loss.centers.clone()
    loss.update(X.clone().requires_grad_(True), Y)
    torch.testing.assert_close(loss.centers, before)


def test_center_head_adds_lambda_times_center_loss_then_updates():
    # The registered `center` head: softmax CE + weight * L_C with the current centres, then Eq. 4.
    head = LOSSES.create("center", embedding_dim=2, num_classes=3, weight=0.1, alpha=0.5).double()
    head.center.centers.copy_(CENTERS)
    ce = torch.nn.functional.cross_entropy(head.logits(X), Y)
    loss = head(X, Y)
    assert loss.item() == pytest.approx(ce.item() + 0.1 * 2.0, abs=1e-12)
    torch.testing.assert_close(head.center.centers, EXPECTED, atol=1e-15, rtol=0)
    assert all(p is not head.center.centers for p in head.parameters())


def test_center_head_eval_forward_leaves_centres():
    head = LOSSES.create("center", embedding_dim=2, num_classes=3).double().eval()
    head.center.centers.copy_(CENTERS)
    head(X, Y)
    torch.testing.assert_close(head.center.centers, CENTERS)


def test_trial_builds_center_loss_from_a_spec():
    # The trial's `center_loss: {weight, alpha}` builds this class (bench.trial.build_models imports it).
    from bench.spec import TrialSpec

    spec = TrialSpec.from_nested({"loss": "arcface", "center_loss": {"weight": 0.01, "alpha": 0.3}})
    module = CenterLoss(spec.embedding_dim, 10, alpha=spec.center_loss["alpha"])
    assert module.alpha == 0.3 and module.centers.shape == (10, spec.embedding_dim)


def test_loss_is_half_of_the_pytorch_center_loss_port_so_its_weight_doubles():
    # KaiyangZhou/pytorch-center-loss: ||x||^2 + ||c||^2 - 2 x.c over the (sample, own class) cells, summed,
    # / batch size, no 1/2 (the docstring's "lambda = 2 w"). On the hand example: (1 + 9 + 2) / 3 = 4, plus the
    # port's clamp lifting the 6 masked-out zeros to 1e-12 each.
    dist = (X**2).sum(1, keepdim=True) + (CENTERS**2).sum(1) - 2 * X @ CENTERS.T
    port = (dist * torch.nn.functional.one_hot(Y, 3)).clamp(min=1e-12, max=1e12).sum() / len(Y)
    assert port.item() == pytest.approx(4.0, abs=1e-11)
    assert hand_example()(X, Y).item() == pytest.approx(port.item() / 2, abs=1e-11)
