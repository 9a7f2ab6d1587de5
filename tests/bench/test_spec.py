"""TrialSpec: validation messages and the flat-params round trip MLflow relies on."""

from __future__ import annotations

import pytest

from bench.spec import SpecError, TrialSpec

FULL = {
    "dataset": {"name": "mnist", "root": "/data/mnist"},
    "backbone": "lenet++",
    "loss": {"name": "cosface", "s": 10.0, "m": 0.1},
    "embedding_dim": 3,
    "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4},
    "scheduler": {"name": "multistep", "milestones": [8, 12], "gamma": 0.1},
    "center_loss": {"weight": 0.01, "alpha": 0.5},
    "epochs": 20, "batch_size": 128, "grad_clip": 5.0, "precision": "bf16", "seed": 3,
}


def test_flat_params_round_trip_through_strings():
    # MLflow hands params back as strings: the round trip must still give an equal spec.
    spec = TrialSpec.from_nested(FULL)
    as_strings = {k: str(v) for k, v in spec.to_params().items()}
    assert TrialSpec.from_params(as_strings) == spec


def test_flat_keys_are_component_dot_param():
    params = TrialSpec.from_nested(FULL).to_params()
    assert params["loss"] == "cosface" and params["loss.m"] == 0.1 and params["optimizer.lr"] == 0.01
    assert params["dataset.root"] == "/data/mnist" and params["center_loss.weight"] == 0.01


def test_nested_round_trip():
    spec = TrialSpec.from_nested(FULL)
    assert TrialSpec.from_nested(spec.to_nested()) == spec


def test_key_is_stable_and_ignores_labels():
    a = TrialSpec.from_nested(FULL, labels={"loss": "CosFace_v1"})
    b = TrialSpec.from_nested(FULL)
    assert a.key() == b.key() and len(a.key()) == 12
    assert a.replace(seed=4).key() != a.key()


def test_with_flat_overrides_a_component_param():
    spec = TrialSpec.from_nested(FULL).with_flat({"loss.m": 0.35, "epochs": 1})
    assert spec.loss_params["m"] == 0.35 and spec.epochs == 1 and spec.loss_params["s"] == 10.0


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(SpecError, match=r"unknown trial key 'epoch'\. Did you mean 'epochs'\?"):
        TrialSpec.from_nested({"epoch": 3})


def test_unknown_optimizer_lists_choices():
    with pytest.raises(SpecError, match="optimizer must be one of adam, adamw, sgd, but got 'lamb'"):
        TrialSpec(optimizer="lamb")


def test_optimizer_param_that_does_not_belong():
    with pytest.raises(SpecError, match="optimizer 'adam' takes lr, weight_decay, betas, not momentum"):
        TrialSpec(optimizer="adam", optimizer_params={"lr": 1e-3, "momentum": 0.9})


def test_precision_is_checked():
    with pytest.raises(SpecError, match="precision must be one of fp32, bf16, fp16"):
        TrialSpec(precision="fp8")


@pytest.mark.parametrize("key", ["epochs", "batch_size", "embedding_dim"])
def test_counts_must_be_positive_integers(key):
    with pytest.raises(SpecError, match=f"{key} must be a positive integer"):
        TrialSpec(**{key: 0})


def test_component_mapping_needs_a_name():
    with pytest.raises(SpecError, match="loss needs a 'name'"):
        TrialSpec.from_nested({"loss": {"s": 10}})
