"""`did_you_mean`: the one place the "Did you mean ...?" hint of an unknown-name message is built."""

from __future__ import annotations

import subprocess
import sys

from registry._suggest import did_you_mean, natural_key

LOSSES = ["adaface", "arcface", "cosface", "sphereface", "softmax"]


def test_a_close_name_is_suggested_as_a_sentence_or_an_aside():
    assert did_you_mean("epoch", ["seed", "epochs"]) == " Did you mean 'epochs'?"
    assert did_you_mean("epoch", ["seed", "epochs"], aside=True) == " (did you mean 'epochs'?)"


def test_no_close_name_gives_an_empty_hint():
    assert did_you_mean("qqqq", LOSSES) == ""
    assert did_you_mean("qqqq", LOSSES, aside=True) == ""
    assert did_you_mean("epoch", []) == ""


def test_several_close_names_are_joined_with_or_closest_first_whatever_the_order_of_the_choices():
    expected = " Did you mean 'arcface' or 'adaface' or 'cosface'?"  # adaface and cosface tie: natural order
    assert did_you_mean("arcfce", LOSSES, n=3) == expected
    assert did_you_mean("arcfce", reversed(LOSSES), n=3) == expected
    assert did_you_mean("arcfce", LOSSES) == " Did you mean 'arcface'?"  # n=1: the closest only


def test_equally_close_names_come_in_natural_order_whatever_the_order_of_the_choices():
    # before: difflib's order for ties, reverse alphabetical: 'sgd' for n=1, and 'class_1' before 'class_0'
    assert did_you_mean("sgb", ["sgc", "sgd"]) == " Did you mean 'sgc'?"
    assert did_you_mean("sgb", ["sgd", "sgc"]) == " Did you mean 'sgc'?"
    assert did_you_mean("sgb", ["sgd", "sgc"], n=2) == " Did you mean 'sgc' or 'sgd'?"
    assert did_you_mean("test_acc.class_9", ["test_acc.class_1", "test_acc.class_0"], aside=True) == (
        " (did you mean 'test_acc.class_0'?)")
    assert did_you_mean("sgb", ["sgd", "sgc", "sgb2"], n=3) == " Did you mean 'sgb2' or 'sgc' or 'sgd'?"  # closest


def test_natural_key_orders_numbers_by_value_and_letters_case_blind():
    assert sorted(["sphere64a", "Sphere20a", "sphere4a", "iresnet100", "iresnet50"], key=natural_key) == [
        "iresnet50", "iresnet100", "sphere4a", "Sphere20a", "sphere64a"]


def test_cutoff_sets_how_close_a_name_must_be():
    assert did_you_mean("chunk", ["chunks_of_classes"]) == ""
    assert did_you_mean("chunk", ["chunks_of_classes"], cutoff=0.4) == " Did you mean 'chunks_of_classes'?"


def test_prefix_is_shown_but_not_matched():
    # 'timm/ab' and 'timm/xy' share most of their letters; 'ab' and 'xy' none, so nothing is suggested
    assert did_you_mean("ab", ["xy"], prefix="timm/") == ""
    assert did_you_mean("mobilenet_smal", ["mobilenet_small"], prefix="timm/") == (
        " Did you mean 'timm/mobilenet_small'?")


def test_choices_may_be_any_iterable_of_names():
    assert did_you_mean("tpee", {"tpe": 1, "random": 2}) == " Did you mean 'tpe'?"
    assert did_you_mean("tpee", (c for c in ("tpe", "random"))) == " Did you mean 'tpe'?"


def test_importing_bench_spec_or_reports_still_does_not_import_torch():
    # they stay light: they import the helper only on the error path, since importing registry._suggest runs
    # registry/__init__, which registers the torch-backed losses and backbones
    code = "import sys, bench.spec, reports.spec, reports.tables; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
