"""A trial's numbers against an independent plain-PyTorch loop and the center-loss formula of Wen et al. 2016.

The reference below shares nothing with `bench.trial` but the registered modules' initialisation: it draws the
data order itself, computes softmax cross-entropy and the center loss from their formulas, moves the centres
by the paper's Eq. 4 written out, and steps torch's SGD (momentum, weight decay on every parameter) and StepLR.
Everything runs in float64, so the two must agree to rounding.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from bench.spec import TrialSpec
from bench.trial import TrialOptions, TrialState, run_trial
from registry import BACKBONES, DATASETS, LOSSES
from registry.datasets import DataBundle, TensorSplit

SEED, BATCH, EPOCHS, LAMBDA, ALPHA = 3, 12, 2, 0.05, 0.5  # 50 training images: four batches of 12 and one of 2
SGD = {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01}


def blobs(n: int, seed: int) -> TensorSplit:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3  # class 2 is absent from some batches: its centre must not move then
    images = rng.normal(0.0, 0.5, size=(n, 1, 4, 4)) + labels[:, None, None, None]
    return TensorSplit(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)))


@pytest.fixture
def float64_world():
    """``blobs64`` (float64 images) and ``bn-bias`` (linear + BatchNorm1d, both with biases), models built in
    float64; all removed again after the test."""

    @DATASETS.register("blobs64")
    def blobs64() -> DataBundle:
        """Three float64 classes for the reference test."""
        return DataBundle("blobs64", 3, 1, (4, 4), blobs(50, 0), blobs(12, 1))

    @BACKBONES.register("bn-bias")
    def bn_bias(embedding_dim: int, in_chans: int) -> torch.nn.Module:
        """Flatten, linear, BatchNorm1d (for tests)."""
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(in_chans * 16, embedding_dim),
                                   torch.nn.BatchNorm1d(embedding_dim))

    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)
    DATASETS.unregister("blobs64")
    BACKBONES.unregister("bn-bias")


def reference(bundle: DataBundle, embedding_dim: int) -> dict:
    """Plain PyTorch: the trial's init order (backbone, head, centres from one seed), then EPOCHS of SGD."""
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    backbone = BACKBONES.create("bn-bias", embedding_dim=embedding_dim, in_chans=1)
    head = LOSSES.create("softmax", embedding_dim=embedding_dim, num_classes=3)
    bound = (3.0 / embedding_dim) ** 0.5
    centers = torch.empty(3, embedding_dim).uniform_(-bound, bound).numpy().copy()  # Caffe's xavier filler
    params = list(backbone.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, **SGD)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    order_gen = torch.Generator().manual_seed(SEED)
    x_all, y_all = bundle.train.images, bundle.train.labels
    history = []
    for _ in range(EPOCHS):
        order = torch.randperm(len(y_all), generator=order_gen)
        loss_total = correct = n_seen = 0.0
        for start in range(0, len(order), BATCH):
            idx = order[start:start + BATCH]
            x, y = x_all[idx], y_all[idx]
            emb = backbone(x)
            logits = emb @ head.weight.T + head.bias
            ce = -(logits.log_softmax(1)[torch.arange(len(y)), y]).mean()
            c = torch.from_numpy(centers)
            l_c = 0.5 * ((emb - c[y]) ** 2).sum(1).mean()  # Wen et al.'s L_C over the batch, / M as in Caffe
            loss = ce + LAMBDA * l_c
            correct += float((logits.argmax(1) == y).sum())
            opt.zero_grad()
            loss.backward()
            opt.step()
            e, labels = emb.detach().numpy(), y.numpy()
            for j in range(3):  # Eq. 4, class by class; an absent class has delta 0
                mine = labels == j
                delta = (mine.sum() * centers[j] - e[mine].sum(0)) / (1 + mine.sum())
                centers[j] = centers[j] - ALPHA * delta
            loss_total += loss.item() * len(y)
            n_seen += len(y)
        history.append({"train_loss": loss_total / n_seen, "train_acc": correct / n_seen,
                        "lr": opt.param_groups[0]["lr"]})
        sched.step()
    return {"history": history, "backbone": backbone.state_dict(), "head": head.state_dict(), "centers": centers}


# The same joint supervision two ways: any head plus the spec's center_loss (centres moved by the trial after
# the optimizer step), or the registered `center` head (centres moved in its forward); both draw the centres
# after the class weights, as the reference does.
ROUTES = {"spec center_loss": ({"loss": "softmax", "center_loss": {"weight": LAMBDA, "alpha": ALPHA}}, "center"),
          "center head": ({"loss": "center", "loss_params": {"weight": LAMBDA, "alpha": ALPHA}}, "head")}


@pytest.mark.parametrize("route", list(ROUTES))
def test_a_trial_matches_a_plain_pytorch_loop_with_center_loss_in_float64(float64_world, tmp_path, route):
    spec_kw, centres_in = ROUTES[route]
    spec = TrialSpec(dataset="blobs64", backbone="bn-bias", embedding_dim=3, epochs=EPOCHS, batch_size=BATCH,
                     eval_batch_size=64, seed=SEED, optimizer="sgd", optimizer_params=SGD, scheduler="step",
                     scheduler_params={"step_size": 1, "gamma": 0.5}, **spec_kw)
    checkpoint = tmp_path / "ckpt.pt"
    result = run_trial(spec, TrialOptions(device="cpu", progress=False, checkpoint_path=checkpoint))
    ref = reference(DATASETS.create("blobs64"), 3)
    assert result.status == "finished"
    saved = torch.load(checkpoint, weights_only=False)
    centres = saved[centres_in].pop("centers" if centres_in == "center" else "center.centers")
    for part in ("backbone", "head"):
        assert saved[part].keys() == ref[part].keys()
        for name, value in ref[part].items():
            torch.testing.assert_close(saved[part][name], value, atol=1e-10, rtol=0, msg=f"{part}.{name}")
    np.testing.assert_allclose(centres.numpy(), ref["centers"], atol=1e-10, rtol=0)
    for got, want in zip(result.history, ref["history"], strict=True):
        # train_loss and train_acc are per-sample means: the final batch of 2 weighs 2, not 12
        assert got["train_loss"] == pytest.approx(want["train_loss"], abs=1e-10)
        assert got["train_acc"] == pytest.approx(want["train_acc"], abs=1e-12)
        assert got["lr"] == pytest.approx(want["lr"], abs=1e-15)

def test_weight_decay_reaches_every_backbone_and_head_parameter_but_not_the_centres(float64_world):
    # What the float64 reference assumes and TrialSpec documents: one parameter group, BatchNorm's scale and
    # shift, the biases and the head's class weights all decayed; the centres move by Eq. 4 only.
    spec = TrialSpec(dataset="blobs64", backbone="bn-bias", loss="softmax", embedding_dim=3, batch_size=BATCH,
                     optimizer="sgd", optimizer_params=SGD, center_loss={"weight": LAMBDA, "alpha": ALPHA})
    trial = TrialState(spec, TrialOptions(device="cpu", progress=False), torch.device("cpu"))
    groups = trial.optimizer.param_groups
    assert [g["weight_decay"] for g in groups] == [SGD["weight_decay"]]
    decayed = {id(p) for p in groups[0]["params"]}
    named = dict(trial.backbone.named_parameters(prefix="backbone")) | dict(trial.head.named_parameters(prefix="head"))
    assert sorted(n for n, p in named.items() if id(p) not in decayed) == []
    assert {"backbone.2.weight", "backbone.2.bias", "backbone.1.bias", "head.weight", "head.bias"} <= set(named)
    assert len(decayed) == len(named) and id(trial.center.centers) not in decayed


def test_a_trial_resumed_after_its_first_epoch_ends_on_the_reference_numbers(float64_world, tmp_path):
    # The checkpoint must carry everything the second epoch depends on: SGD's momentum buffers, the StepLR
    # state, the data-order generator and the centres (moved outside the optimizer).
    spec = TrialSpec(dataset="blobs64", backbone="bn-bias", loss="softmax", embedding_dim=3, epochs=EPOCHS,
                     batch_size=BATCH, eval_batch_size=64, seed=SEED, optimizer="sgd", optimizer_params=SGD,
                     scheduler="step", scheduler_params={"step_size": 1, "gamma": 0.5},
                     center_loss={"weight": LAMBDA, "alpha": ALPHA})
    checkpoint, after_first = tmp_path / "ckpt.pt", tmp_path / "after_first_epoch.pt"

    def keep_first_epoch_checkpoint(epoch: int, metrics: dict) -> None:
        if epoch == 1:  # the file still holds epoch 0's state: it is rewritten after this callback
            after_first.write_bytes(checkpoint.read_bytes())

    run_trial(spec, TrialOptions(device="cpu", progress=False, checkpoint_path=checkpoint,
                                 on_epoch=keep_first_epoch_checkpoint))
    assert torch.load(after_first, weights_only=False)["epoch"] == 0
    resumed = run_trial(spec, TrialOptions(device="cpu", progress=False, checkpoint_path=after_first))
    ref = reference(DATASETS.create("blobs64"), 3)
    saved = torch.load(after_first, weights_only=False)
    assert saved["epoch"] == 1
    for name, value in ref["head"].items():
        torch.testing.assert_close(saved["head"][name], value, atol=1e-10, rtol=0, msg=f"head.{name}")
    for name, value in ref["backbone"].items():
        torch.testing.assert_close(saved["backbone"][name], value, atol=1e-10, rtol=0, msg=f"backbone.{name}")
    np.testing.assert_allclose(saved["center"]["centers"].numpy(), ref["centers"], atol=1e-10, rtol=0)
    assert resumed.history[1]["train_loss"] == pytest.approx(ref["history"][1]["train_loss"], abs=1e-10)
    assert resumed.history[1]["train_acc"] == pytest.approx(ref["history"][1]["train_acc"], abs=1e-12)
