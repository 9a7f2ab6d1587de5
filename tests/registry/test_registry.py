"""The Registry contract: decorator registration, signature-checked creation, close-match errors, wildcards."""

from __future__ import annotations

import warnings

import pytest

from registry import BACKBONES, DATASETS, LOSSES, Registry, RegistryError


def _fresh() -> Registry:
    reg = Registry("widget", fixed=("size",))

    @reg.register("arcwidget", aliases={"arcwidget-4": {"depth": 4}})
    def arcwidget(size: int, depth: int = 2, scale: float = 1.0) -> tuple:
        """A widget for tests."""
        return ("arc", size, depth, scale)

    @reg.register("cosine-widget")
    def cos_widget(size: int, margin: float) -> tuple:
        """Needs a margin."""
        return ("cos", size, margin)

    return reg


def test_create_passes_fixed_and_user_kwargs():
    assert _fresh().create("arcwidget", size=3, scale=2.0) == ("arc", 3, 2, 2.0)


def test_alias_binds_arguments():
    assert _fresh().create("arcwidget-4", size=1) == ("arc", 1, 4, 1.0)


def test_alias_refuses_overriding_its_bound_argument():
    with pytest.raises(RegistryError, match="fixes depth=4"):
        _fresh().create("arcwidget-4", size=1, depth=3)


def test_none_kwargs_are_dropped_so_factory_defaults_hold():
    assert _fresh().create("arcwidget", size=1, depth=None) == ("arc", 1, 2, 1.0)


def test_unknown_name_lists_close_matches_and_all_names():
    with pytest.raises(RegistryError) as err:
        _fresh().create("arcwidgt", size=1)
    msg = str(err.value)
    assert "Did you mean 'arcwidget'" in msg and "Available: arcwidget, arcwidget-4, cosine-widget" in msg


def test_several_close_names_read_as_alternatives_closest_first():
    # before: "Did you mean 'arcwidget-4', 'arcwidget', 'cosine-widget'?", a comma list like the Available one after it,
    # where every other "did you mean" of bench joins them with "or"
    with pytest.raises(RegistryError) as err:
        _fresh().entry("arcwidget-5")
    assert str(err.value) == ("Unknown widget 'arcwidget-5'. Did you mean 'arcwidget-4' or 'arcwidget' or "
                              "'cosine-widget'? Available: arcwidget, arcwidget-4, cosine-widget.")


def test_unknown_kwarg_names_it_and_suggests_the_close_one():
    with pytest.raises(RegistryError, match=r"no parameter 'scal' \(did you mean 'scale'\?\)"):
        _fresh().create("arcwidget", size=1, scal=2.0)


def test_missing_required_kwarg_is_named():
    with pytest.raises(RegistryError, match="needs 'margin'"):
        _fresh().create("cosine-widget", size=1)


@pytest.mark.parametrize(("kwargs", "says"), [
    ({"scale": "abc"}, "scale must be a number, but got 'abc' (default 1.0)"),
    ({"scale": True}, "scale must be a number, but got True"),
    ({"scale": float("nan")}, "scale must be a finite number, but got nan"),
    ({"depth": float("inf")}, "depth must be a finite number"),
    ({"depth": [2]}, "depth must be a number"),
])
def test_a_value_of_the_wrong_kind_for_its_default_is_named_before_the_factory_runs(kwargs, says):
    with pytest.raises(RegistryError) as err:
        _fresh().create("arcwidget", size=1, **kwargs)
    assert f"widget 'arcwidget': {says}" in str(err.value)


def test_numbers_of_either_kind_and_numpy_scalars_fit_a_numeric_default():
    import numpy as np

    assert _fresh().create("arcwidget", size=1, depth=3.0, scale=np.float32(0.5)) == ("arc", 1, 3.0, 0.5)


@pytest.mark.parametrize(("loss", "params", "says"), [
    ("cosface", {"s": "abc"}, "s must be a number"),
    ("arcface", {"m": "ten"}, "m must be a number"),
    ("arcface", {"m": float("nan")}, "m must be a finite number"),
    ("cosface", {"s": float("inf")}, "s must be a finite number"),
])
def test_project_loss_parameters_of_the_wrong_kind_are_named(loss, params, says):
    with pytest.raises(RegistryError, match=says):
        LOSSES.check(loss, params)


def test_names_take_shell_wildcards_and_sort_naturally():
    reg = Registry("thing")
    for name in ("net10", "net2", "other", "net1"):
        reg.register(name)(lambda: None)
    assert reg.names("net*") == ["net1", "net2", "net10"]
    assert reg.names() == ["net1", "net2", "net10", "other"]


def test_registering_a_name_twice_warns():
    reg = _fresh()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reg.register("arcwidget")(lambda size: None)
    assert any("registered again" in str(w.message) for w in caught)


def test_validate_hook_errors_become_registry_errors():
    reg = Registry("thing")

    def must_be_positive(params):
        if params.get("n", 1) <= 0:
            raise ValueError(f"n must be > 0, but got n={params['n']}")

    reg.register("counter", validate=must_be_positive)(lambda n=1: n)
    with pytest.raises(RegistryError, match="n must be > 0"):
        reg.check("counter", {"n": 0})



def test_every_independent_problem_of_a_component_is_listed_at_once():
    # before: the first only (the bound depth); the unknown 'scal' and scale's value came one round later each
    with pytest.raises(RegistryError) as err:
        _fresh().check("arcwidget-4", {"depth": 3, "scal": 2.0, "scale": "x"})
    assert err.value.problems == [
        ("", "widget 'arcwidget-4' fixes depth=4; drop 'depth' or use the base name."),
        ("", "widget 'arcwidget-4' has no parameter 'scal' (did you mean 'scale'?). Its parameters: scale=1.0."),
        ("scale", "widget 'arcwidget-4': scale must be a number, but got 'x' (default 1.0)")]
    assert str(err.value).splitlines() == [message for _, message in err.value.problems]


def test_an_unknown_and_a_missing_parameter_are_listed_together():
    # before: "has no parameter 'marg'" only; the missing margin came after its fix
    with pytest.raises(RegistryError) as err:
        _fresh().check("cosine-widget", {"marg": 0.1})
    assert str(err.value) == ("widget 'cosine-widget' has no parameter 'marg' (did you mean 'margin'?). Its "
                              "parameters: margin=<required>.\nwidget 'cosine-widget' needs 'margin'; none was given.")


def test_each_value_of_the_wrong_kind_is_a_problem_at_its_own_key():
    with pytest.raises(RegistryError) as err:
        LOSSES.check("cosface", {"s": "abc", "m": [1]})
    assert err.value.problems == [("s", "loss 'cosface': s must be a number, but got 'abc' (default 64.0)"),
                                  ("m", "loss 'cosface': m must be a number, but got [1] (default 0.35)")]


def test_a_single_problem_reads_as_before_with_its_key():
    with pytest.raises(RegistryError) as err:
        LOSSES.check("cosface", {"s": "abc"})
    assert str(err.value) == "loss 'cosface': s must be a number, but got 'abc' (default 64.0)"
    assert err.value.problems == [("s", str(err.value))]


def test_validate_runs_only_when_each_parameter_passed():
    # validate's rules across parameters would see the refused value ('abc' <= 0 is a TypeError inside it)
    reg = Registry("thing")
    seen = []

    def must_be_positive(params):
        seen.append(dict(params))
        if params.get("n", 1) <= 0:
            raise ValueError(f"n must be > 0, but got n={params['n']}")

    reg.register("counter", validate=must_be_positive)(lambda n=1, k=2: n)
    with pytest.raises(RegistryError) as err:
        reg.check("counter", {"n": "abc", "k": 0})
    assert err.value.problems == [("n", "thing 'counter': n must be a number, but got 'abc' (default 1)")]
    assert seen == []
    with pytest.raises(RegistryError) as err:
        reg.check("counter", {"n": 0})
    assert err.value.problems == [("", "thing 'counter': n must be > 0, but got n=0")] and seen == [{"n": 0}]


def test_family_resolves_names_under_a_prefix():
    reg = Registry("model", fixed=("dim",))
    reg.register_family("zoo/", lambda name, dim, width=1: (name, dim, width),
                        exists=lambda rest: rest in {"a", "b"}, known=lambda: ["a", "b"])
    assert reg.create("zoo/a", dim=3, width=2) == ("a", 3, 2)
    assert "zoo/b" in reg and "zoo/c" not in reg
    with pytest.raises(RegistryError, match="does not know 'c'"):
        reg.create("zoo/c", dim=1)
    assert reg.names("zoo/*", include_families=True) == ["zoo/a", "zoo/b"]


def test_family_validate_hook_checks_every_name_below_the_prefix():
    # Values are checked before building, as for a registered entry.
    reg = Registry("model", fixed=("dim",))

    def rate_below_one(params, rest):
        if params.get("rate", 0.0) >= 1:
            raise ValueError(f"{rest}: rate must be < 1, but got rate={params['rate']}")

    reg.register_family("zoo/", lambda name, dim, rate=0.0: (name, dim, rate), exists=lambda rest: rest == "a",
                        known=lambda: ["a"], validate=rate_below_one)
    with pytest.raises(RegistryError, match="a: rate must be < 1"):
        reg.check("zoo/a", {"rate": 1.5})


def test_project_registries_hold_the_first_entries():
    assert {"softmax", "cosface"} <= set(LOSSES.names())
    assert {"lenet++", "mini-resnet18"} <= set(BACKBONES.names())
    assert {"digits", "mnist"} <= set(DATASETS.names())


@pytest.mark.parametrize("reg, name, key, says", [
    (LOSSES, "cosface", "num_classes", "num_classes follows the dataset's classes"),
    (LOSSES, "cosface", "embedding_dim", "set embedding_dim, a top-level trial key"),
    (BACKBONES, "lenet++", "in_chans", "set the dataset's in_chans"),
])
def test_a_parameter_the_harness_passes_is_refused_saying_where_it_comes_from(reg, name, key, says):
    # before: "has no parameter 'num_classes'" and the factory's other parameters, as if it did not exist at all
    with pytest.raises(RegistryError, match=rf"has no parameter '{key}' \(.*{says}"):
        reg.check(name, {key: 3})
