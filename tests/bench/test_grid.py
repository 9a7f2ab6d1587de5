"""Grid loading: expansion, merging, env substitution, and every error naming file, key and fix, fast."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench.grid import GridError, load_grid

GOOD = """
name: g
base:
  dataset: digits
  backbone: lenet++
  loss: {name: cosface, s: 10, m: 0.1}
  epochs: 2
grid:
  loss:
    - {label: soft, loss: softmax}
    - {label: cos, loss: {name: cosface, m: 0.2}}
  embedding_dim: [2, 3]
seeds: [0, 1]
"""


def write(tmp_path: Path, text: str, name: str = "grid.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_axes_are_crossed_and_seeds_repeat_cells(tmp_path):
    grid = load_grid(write(tmp_path, GOOD))
    assert [c.labels for c in grid.cells] == [
        {"loss": "soft", "embedding_dim": "2"}, {"loss": "soft", "embedding_dim": "3"},
        {"loss": "cos", "embedding_dim": "2"}, {"loss": "cos", "embedding_dim": "3"}]
    assert len(grid.trials()) == 8 and [t.seed for t in grid.trials()[:2]] == [0, 1]


def test_same_component_name_merges_params_new_name_replaces_them(tmp_path):
    grid = load_grid(write(tmp_path, GOOD))
    soft, cos = grid.cells[0].spec, grid.cells[2].spec
    assert soft.loss == "softmax" and dict(soft.loss_params) == {}
    assert cos.loss == "cosface" and dict(cos.loss_params) == {"s": 10, "m": 0.2}


def test_overrides_apply_to_every_cell(tmp_path):
    grid = load_grid(write(tmp_path, GOOD), overrides={"epochs": 1, "optimizer.lr": 0.05})
    assert {c.spec.epochs for c in grid.cells} == {1}
    assert {c.spec.optimizer_params["lr"] for c in grid.cells} == {0.05}


def test_set_on_a_searched_key_is_an_error_not_ignored(tmp_path):
    text = GOOD + "search: {optimizer.lr: {type: loguniform, low: 1.0e-4, high: 1.0e-1}}\nn_trials: 2\n"
    with pytest.raises(GridError, match=r"--set optimizer\.lr=0\.05: optimizer\.lr is searched \(search: "
                                        r"optimizer\.lr\).*drop --set optimizer\.lr=\.\.\., or take optimizer\.lr "
                                        r"out of search:"):
        load_grid(write(tmp_path, text), overrides={"epochs": 1, "optimizer.lr": 0.05})
    assert {c.spec.epochs for c in load_grid(write(tmp_path, text), overrides={"epochs": 1}).cells} == {1}


def test_override_that_does_not_fit_a_cell_is_an_error(tmp_path):
    # softmax has no scale: --set loss.s=30 cannot apply to its cells.
    with pytest.raises(GridError, match=r"--set loss\.s=30: loss 'softmax' has no parameter 's'"):
        load_grid(write(tmp_path, GOOD), overrides={"loss.s": 30})


def test_every_refused_override_is_listed_once_in_one_error(tmp_path):
    # before: the first refused --set only (epochs), in each of the 4 cells; loss.m on top of --set loss=cosface
    # goes through wherever it is in the order, as it does alone
    overrides = {"loss.m": 0.2, "epochs": "abc", "loss": "cosface", "optimizer.lr": -1, "los.m": 1}
    typed = {"epochs": "epochs=abc"}
    with pytest.raises(GridError) as err:
        load_grid(write(tmp_path, GOOD), overrides=overrides, typed=typed)
    assert err.value.problems == [
        ("--set epochs=abc", "epochs must be a positive integer, but got 'abc'"),
        ("--set optimizer.lr=-1", "optimizer.lr must be a number > 0, but got -1"),
        ("--set los.m=1", "unknown parameter 'los.m': 'los' is not a component (did you mean 'loss'?) (components: "
                          "dataset, backbone, loss, optimizer, scheduler, center_loss)")]
    grid = load_grid(write(tmp_path, GOOD), overrides={"loss.m": 0.3, "loss": "cosface"})
    assert {(c.spec.loss, c.spec.loss_params["m"]) for c in grid.cells} == {("cosface", 0.3)}


COSFACE_BASE = """
name: g
base: {dataset: digits, backbone: lenet++, loss: {name: cosface, s: 10, m: 0.1}, epochs: 1}
grid: {embedding_dim: [2, 3]}
"""


@pytest.mark.parametrize("overrides, written", [
    ({"loss": {"name": "arcface", "m": 0.5}}, "{name: arcface, m: 0.5}"),  # before: Unknown loss "{'name': ..."
    ({"loss": "softmax"}, "softmax"),  # before: loss 'softmax' has no parameter 'm', 's' (cosface's, kept)
    ({"loss": "cosface"}, "{name: cosface, s: 10, m: 0.1}"),  # the same name keeps the grid's params
    ({"loss": {"name": "cosface", "m": 0.3}}, "{name: cosface, s: 10, m: 0.3}"),  # ... and merges new ones
    ({"loss": "arcface", "loss.m": 0.3}, "{name: arcface, m: 0.3}"),  # the component first, then its keys
    ({"optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}}, None),  # before: unhashable type: 'dict'
])
def test_set_of_a_whole_component_is_the_grid_written_with_it(tmp_path, overrides, written):
    # --set loss=... replaces or merges the component as a grid axis does: the cells are those of the grid
    # file written with that component in base
    if written is None:
        text = COSFACE_BASE.replace("epochs: 1}", "epochs: 1, optimizer: {name: sgd, lr: 0.1, momentum: 0.9}}")
    else:
        text = COSFACE_BASE.replace("loss: {name: cosface, s: 10, m: 0.1}", f"loss: {written}")
    got = load_grid(write(tmp_path, COSFACE_BASE), overrides=overrides)
    want = load_grid(write(tmp_path, text, "written.yaml"))
    assert [c.spec.to_params() for c in got.cells] == [c.spec.to_params() for c in want.cells]


@pytest.mark.parametrize("overrides, where, message", [
    ({"loss": {"m": 0.5}}, "--set loss={m: 0.5}",
     r"a whole loss is a name or a mapping with 'name' \(loss=\{name: \.\.\., \.\.\.\}\), but got keys \['m'\]; "
     r"to change one parameter of the grid's loss, write --set loss\.m=VALUE"),
    ({"loss": [1, 2]}, "--set loss=[1, 2]", r"loss must be a name or a mapping with 'name', but got \[1, 2\]"),
    ({"loss": {"name": "arcfce"}}, "--set loss={name: arcfce}", r"Unknown loss 'arcfce'\. Did you mean 'arcface'"),
])
def test_set_of_a_malformed_whole_component_names_the_option(tmp_path, overrides, where, message):
    with pytest.raises(GridError, match=message) as info:
        load_grid(write(tmp_path, COSFACE_BASE), overrides=overrides)
    assert info.value.key == where


@pytest.mark.parametrize("overrides, where, message", [
    ({"epochs": 1, "optimizer.lr": "abc"}, "--set optimizer.lr=abc", "optimizer.lr must be a number > 0"),
    ({"epochs": "abc"}, "--set epochs=abc", "epochs must be a positive integer, but got 'abc'"),
    ({"epoch": 1}, "--set epoch=1", "unknown parameter 'epoch' (did you mean 'epochs'?)"),
    ({"precision": "fp8"}, "--set precision=fp8", "precision must be one of fp32, bf16, fp16, but got 'fp8'"),
    ({"loss.m": 0.3, "loss.s": 30}, "--set loss.m=0.3 --set loss.s=30", "loss 'softmax' has no parameter"),
])
def test_a_set_error_names_the_option_as_written_not_an_internal_key(tmp_path, overrides, where, message):
    # before: "--set: ..." or "--set.loss: ...", which no one typed
    with pytest.raises(GridError) as info:
        load_grid(write(tmp_path, GOOD), overrides=overrides)
    assert info.value.key == where and str(info.value).startswith(f"{tmp_path / 'grid.yaml'}: {where}: {message}")


def test_a_set_error_quotes_the_option_exactly_as_typed(tmp_path):
    with pytest.raises(GridError) as info:
        load_grid(write(tmp_path, GOOD), overrides={"loss.s": 30.0}, typed={"loss.s": "loss.s=3e1"})
    assert info.value.key == "--set loss.s=3e1"


@pytest.mark.parametrize("where, text", [
    ("base.seed", GOOD.replace("  epochs: 2\n", "  epochs: 2\n  seed: 3\n")),
    ("grid.loss[0].seed", GOOD.replace("{label: soft, loss: softmax}", "{label: soft, loss: softmax, seed: 3}")),
])
def test_a_seed_in_a_cell_is_refused_because_the_grids_seeds_would_replace_it(tmp_path, where, text):
    # Grid.trials() sets each trial's seed from seeds: [0, 1]; a cell's seed: 3 would silently never run.
    with pytest.raises(GridError, match=rf"{re.escape(where)}: .*seed: 3 here would be ignored; "
                                        r"write seeds: \[3\] at the top level"):
        load_grid(write(tmp_path, text))


MARGINS = """
name: g
base: {dataset: digits, backbone: lenet++, loss: {name: cosface, s: 10, m: 0.1}, epochs: 1}
grid:
  loss:
    - {label: soft, loss: softmax}
    - {label: m2, loss: {name: cosface, m: 0.2}}
    - {label: m3, loss: {name: cosface, m: 0.3}}
  embedding_dim: [2, 3]
"""


def test_a_whole_component_set_on_an_axis_of_it_is_refused_not_run_as_one_trial_under_each_label(tmp_path):
    # before: 6 cells, 2 trial keys (one per embedding_dim): the study trained one loss under 3 labels
    with pytest.raises(GridError) as info:
        load_grid(write(tmp_path, MARGINS), overrides={"loss": "arcface"}, typed={"loss": "loss=arcface"})
    assert info.value.problems == [(
        "--set loss=arcface",
        "makes the cells of each group one trial: {soft / 2, m2 / 2, m3 / 2}; {soft / 3, m2 / 3, m3 / 3}; the grid's "
        "axis loss varies loss, loss.m, loss.s, which --set loss=arcface sets the same in every cell, so the study "
        "would train one configuration under several labels; drop --set loss=arcface (or the axis loss, to run the "
        "one trial), or use --set on a key the axis does not vary")]


def test_a_set_of_the_only_parameter_axis_entries_differ_in_names_that_set_and_only_those_cells(tmp_path):
    # m2 and m3 differ only in loss.m; s30 (s too) stays a cell of its own, and --set epochs=2 is not to blame
    text = MARGINS.replace("{label: soft, loss: softmax}", "{label: s30, loss: {name: cosface, s: 30}}")
    with pytest.raises(GridError) as info:
        load_grid(write(tmp_path, text), overrides={"epochs": 2, "loss.m": 0.5})
    assert [key for key, _ in info.value.problems] == ["--set loss.m=0.5"]
    assert info.value.problems[0][1].startswith(
        "makes the cells of each group one trial: {m2 / 2, m3 / 2}; {m2 / 3, m3 / 3}; the grid's axis loss varies "
        "loss.m, which --set loss.m=0.5 sets")


def test_identical_axis_entries_are_named_once_by_index(tmp_path):
    text = MARGINS.replace("{label: m3, loss: {name: cosface, m: 0.3}}",
                           "{label: m2-again, loss: {name: cosface, m: 0.2}}")
    with pytest.raises(GridError) as info:
        load_grid(write(tmp_path, text))
    assert info.value.problems == [(
        "grid.loss", "entries [1] (m2) and [2] (m2-again) give the same trial, so the study would train one "
                     "configuration under 2 labels; drop all but one of them, or make them differ")]


def test_cells_one_axis_undoes_the_other_on_are_named_at_the_grid(tmp_path):
    # the second axis sets the m the first varies: x / m2, y / m2 and x / keep are all cosface s=10 m=0.2
    text = MARGINS.replace("    - {label: soft, loss: softmax}\n", "").replace(
        "  embedding_dim: [2, 3]\n", "  fix:\n    - {label: keep, epochs: 1}\n"
                                      "    - {label: m2, loss: {name: cosface, m: 0.2}}\n")
    with pytest.raises(GridError) as info:
        load_grid(write(tmp_path, text))
    assert info.value.problems == [(
        "grid", "cells m2 / keep, m2 / m2, m3 / m2 are one trial: axes loss, fix each set what the other varies, so "
                "the study would train one configuration under 3 labels; make the cells differ, or drop one of the "
                "axes")]


@pytest.mark.parametrize("overrides", [
    {"loss.s": 30},  # a key the axis does not vary: the cells still differ
    {"loss": {"name": "cosface", "s": 30}},  # the same name keeps each cell's m
    {"epochs": 3, "optimizer.lr": 0.01},
])
def test_a_set_that_leaves_the_cells_distinct_is_accepted(tmp_path, overrides):
    text = MARGINS.replace("{label: soft, loss: softmax}", "{label: m1, loss: {name: cosface, m: 0.1}}")
    grid = load_grid(write(tmp_path, text), overrides=overrides)
    assert len({cell.spec.key() for cell in grid.cells}) == len(grid.cells) == 6


def test_the_valid_keys_a_typo_lists_are_keys_a_grid_can_set(tmp_path):
    for text, overrides in [(GOOD.replace("epochs: 2", "epochz: 2"), None), (GOOD, {"epochz": 1})]:
        with pytest.raises(GridError) as info:
            load_grid(write(tmp_path, text), overrides=overrides)
        listed = str(info.value).split("alid")[-1]
        assert "epochs" in listed and "seed" not in listed, str(info.value)


MNIST_GRID = """
name: m
base: {dataset: {name: mnist, root: not-here/mnist}, backbone: lenet++, epochs: 1}
grid: {loss: [softmax, cosface]}
"""


def test_set_dataset_root_supplies_the_files_the_grids_root_lacks(tmp_path):
    # the grid is checked as overridden: a root that exists only on another machine is no error when --set
    # points at one that exists here (before, the file's root was checked first and failed)
    from tests.conftest import write_tiny_mnist

    write_tiny_mnist(tmp_path / "mnist")
    grid = load_grid(write(tmp_path, MNIST_GRID), overrides={"dataset.root": str(tmp_path / "mnist")})
    assert {c.spec.dataset_params["root"] for c in grid.cells} == {str(tmp_path / "mnist")}
    with pytest.raises(GridError, match=r"base\.dataset: dataset 'mnist': IDX files missing under not-here/mnist"):
        load_grid(write(tmp_path, MNIST_GRID))
    with pytest.raises(GridError, match=r"--set dataset\.root=elsewhere: dataset 'mnist': IDX files missing under "
                                        r"elsewhere"):
        load_grid(write(tmp_path, MNIST_GRID), overrides={"dataset.root": "elsewhere"})


def test_a_missing_relative_mnist_root_names_the_working_directory_and_the_set_option(tmp_path, monkeypatch):
    # before: "IDX files missing under ../shared/data/mnist-10k ... put the files there or set download: true",
    # with neither the folder that relative root was taken from nor the option that moves it
    monkeypatch.chdir(tmp_path)
    with pytest.raises(GridError) as info:
        load_grid(write(tmp_path, MNIST_GRID))
    message = str(info.value)
    assert f"not-here/mnist/raw, relative to the working directory {tmp_path.resolve()})" in message
    assert "point the grid's dataset.root at the folder that holds them (or --set dataset.root=FOLDER" in message
    with pytest.raises(GridError) as info:  # an absolute root needs no working directory
        load_grid(write(tmp_path, MNIST_GRID), overrides={"dataset.root": str(tmp_path / "elsewhere")})
    assert "working directory" not in str(info.value) and "--set dataset.root=FOLDER" in str(info.value)


def test_environment_variables_are_substituted(tmp_path):
    text = GOOD.replace("dataset: digits", 'dataset: {name: mnist, root: "${MNIST_ROOT}"}')
    root = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist-10k"
    if not root.exists():  # validation reads the files' headers: empty stand-ins are (rightly) rejected
        from tests.conftest import write_tiny_mnist

        root = tmp_path / "mnist"
        write_tiny_mnist(root)
    grid = load_grid(write(tmp_path, text), env={"MNIST_ROOT": str(root)})
    assert grid.cells[0].spec.dataset_params["root"] == str(root)


def test_unset_environment_variable_is_named(tmp_path):
    text = GOOD.replace("dataset: digits", 'dataset: {name: mnist, root: "${CASIA_ROOT}"}')
    with pytest.raises(GridError, match=r"base\.dataset\.root: environment variable CASIA_ROOT is not set"):
        load_grid(write(tmp_path, text), env={})


def test_every_unset_environment_variable_is_listed_in_one_error(tmp_path):
    # before: the first one only (base.dataset.root); exporting it met EPOCHS, then N_SEEDS
    text = (GOOD.replace("dataset: digits", 'dataset: {name: mnist, root: "${CASIA_ROOT}"}')
            .replace("epochs: 2", "epochs: ${EPOCHS}").replace("seeds: [0, 1]", "seeds: ${N_SEEDS}"))
    path = write(tmp_path, text)
    with pytest.raises(GridError) as err:
        load_grid(path, env={"EPOCHS": ""})  # empty counts as unset
    assert str(err.value).splitlines() == [f"{path}: 3 problems:"] + [
        f"  {key}: environment variable {var} is not set; export {var}=... before the command (or {var}=... bench "
        f"run ...), or write ${{{var}:-default}} in the grid"
        for key, var in [("base.dataset.root", "CASIA_ROOT"), ("base.epochs", "EPOCHS"), ("seeds", "N_SEEDS")]]


def test_default_in_environment_reference(tmp_path):
    text = GOOD.replace("epochs: 2", "epochs: ${EPOCHS:-3}")
    assert load_grid(write(tmp_path, text), env={}).cells[0].spec.epochs == 3


@pytest.mark.parametrize("old,new,expected", [
    ("loss: softmax", "loss: arcfce", r"grid\.loss\[0\]\.loss: Unknown loss 'arcfce'"),
    ("backbone: lenet++", "backbone: lenet", r"base\.backbone: Unknown backbone 'lenet'\. Did you mean 'lenet\+\+'"),
    ("dataset: digits", "dataset: digts", r"base\.dataset: Unknown dataset 'digts'\. Did you mean 'digits'"),
    ("m: 0.2}", "margin: 0.2}", r"grid\.loss\[1\]\.loss: loss 'cosface' has no parameter 'margin'"),
    ("epochs: 2", "epochz: 2", r"unknown trial key 'epochz'\. Did you mean 'epochs'"),
    ("seeds: [0, 1]", "seeds: [0, 0]", r"seeds: seeds repeat"),
    ("seeds: [0, 1]", "seeds: 0", r"seeds: a count of seeds is at least 1, but got 0; write seeds: 1"),
    ("seeds: [0, 1]", "seeds: -2", r"seeds: a count of seeds is at least 1, but got -2"),
    ("name: g", "name: g\nsearh: {}", r"searh: unknown top-level key 'searh' \(did you mean 'search'\?\)"),
    ("seeds: [0, 1]", "seeds: [0, 1]\nreport: {tables: [{name: t, rows: loss, where: {embedding_dim: '4'}}]}",
     r"report\.tables\[0\]\.where\.embedding_dim: no cell of the grid has the label '4'; labels of embedding_dim: "
     r"2, 3$"),
    ("seeds: [0, 1]", "seeds: [0, 1]\nreport: {tables: [{name: t, rows: embedding_dim, where: {loss: [soft, coss]}}]}",
     r"where\.loss: no cell of the grid has the label 'coss' \(did you mean 'cos'\?\); labels of loss: soft, cos$"),
])
def test_errors_name_file_key_and_fix_before_training(tmp_path, old, new, expected):
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(GridError, match=expected) as err:
        load_grid(path)
    assert str(err.value).startswith(str(path))


def test_where_labels_of_the_grid_validate(tmp_path):
    text = GOOD.replace("seeds: [0, 1]", "seeds: [0, 1]\nreport: {tables: [{name: t, rows: loss, where: "
                                         "{embedding_dim: 3}}]}")
    assert len(load_grid(write(tmp_path, text)).cells) == 4  # an int label is the axis's label "3"


def test_missing_dataset_files_fail_at_validation(tmp_path):
    text = GOOD.replace("dataset: digits", f"dataset: {{name: mnist, root: {tmp_path / 'nowhere'}}}")
    with pytest.raises(GridError, match=r"base\.dataset: dataset 'mnist': IDX files missing under"):
        load_grid(write(tmp_path, text))


def test_bare_name_is_found_in_sweeps(tmp_path, monkeypatch):
    (tmp_path / "sweeps").mkdir()
    write(tmp_path / "sweeps", GOOD, "mine.yaml")
    monkeypatch.chdir(tmp_path)
    assert load_grid("mine").name == "g"


def test_unknown_grid_lists_available(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="Available in sweeps/:.*quickstart.yaml"):
        load_grid("nonexistent-grid")


def test_shipped_quickstart_validates():
    grid = load_grid("quickstart")
    assert {c.labels["loss"] for c in grid.cells} == {"softmax", "cosface"} and grid.seeds == [0, 1]


_DATASETS = {"digits 28": ("{name: digits}", (28, 28), 1), "digits 4": ("{name: digits, image_size: 4}", (4, 4), 1),
             "digits 2": ("{name: digits, image_size: 2}", (2, 2), 1),
             "faces 32x24": ("{name: synthetic-faces, image_size: [32, 24]}", (32, 24), 3),
             "mnist": ("{name: mnist, download: true}", (28, 28), 1)}
_BACKBONES = ("lenet++", "mini-resnet18", "{name: sphereface, depth: 4}",
              "{name: sphereface, depth: 4, input_size: 28}",
              "{name: mobilefacenet, blocks: [1, 1, 1, 1], scale: 1, input_size: [32, 24]}",
              "timm/mobilenetv3_small_100", "timm/vit_tiny_patch16_224",
              "{name: timm/vit_tiny_patch16_224, kwargs: {img_size: 28}}")


@pytest.mark.parametrize("dataset", list(_DATASETS))
@pytest.mark.parametrize("backbone", _BACKBONES)
def test_a_backbone_that_cannot_take_the_datasets_images_is_refused_with_the_grid(tmp_path, backbone, dataset):
    # The reference is the trial itself: the backbone built as a trial builds it, run on a batch of the dataset's
    # image size. Validation refuses exactly the pairs whose first training step would fail (a face net built for
    # another size, images smaller than the net pools), and passes the ones that adapt (lenet++ on faces, the face
    # nets without input_size, timm models that pool on any size; a ViT only at its img_size).
    import torch

    from bench import yamlio
    from bench.spec import TrialSpec
    from bench.trial import build_models
    from registry.datasets import DataBundle, TensorSplit

    text, size, chans = _DATASETS[dataset]
    path = write(tmp_path, f"name: g\nbase: {{dataset: {text}, backbone: {backbone}, embedding_dim: 4}}\n")
    bundle = DataBundle("x", 10, chans, size, TensorSplit(torch.zeros(1, chans, *size), torch.zeros(1).long()))
    try:
        spec = load_grid(path).cells[0].spec
    except GridError as err:
        assert str(path) in str(err) and "backbone" in str(err)
        assert "base.dataset.image_size" in str(err) or "base.dataset) gives 28x28 images, a fixed size" in str(err)
        assert err.key in ("base.backbone.input_size", "base.dataset.image_size", "base.backbone",
                           "base.backbone.kwargs.img_size")
        spec = TrialSpec.from_nested({"backbone": yamlio.load(backbone), "embedding_dim": 4})  # unvalidated
        with pytest.raises((ValueError, RuntimeError, AssertionError)):  # noqa: PT012 - build or 1st forward
            backbone_net = build_models(spec, bundle)[0]
            backbone_net(torch.randn(2, chans, *size))
        return
    backbone_net = build_models(spec, bundle)[0]
    assert backbone_net(torch.randn(2, chans, *size)).shape == (2, 4)


def test_a_face_net_built_for_another_size_names_both_keys_and_the_fix(tmp_path):
    path = write(tmp_path, "name: g\nbase: {dataset: {name: synthetic-faces, image_size: 112}, embedding_dim: 4}\n"
                           "grid:\n  net:\n    - {label: a, backbone: lenet++}\n"
                           "    - {label: b, backbone: {name: sphere20a, input_size: [112, 96]}}\n")
    with pytest.raises(GridError) as err:
        load_grid(path)
    assert err.value.key == "grid.net[1].backbone.input_size"
    assert ("built for 112x96 inputs" in str(err.value) and "gives 112x112 images (base.dataset.image_size: 112)"
            in str(err.value) and "Set input_size: [112, 112] or drop it" in str(err.value)
            and "or set base.dataset.image_size: [112, 96]" in str(err.value))


def test_a_timm_model_of_a_fixed_input_size_names_its_size_and_the_kwargs_that_change_it(tmp_path):
    # timm's ViT asserts "Input height (28) doesn't match model (224)" in its first forward
    path = write(tmp_path, "name: g\nbase: {dataset: {name: digits}, embedding_dim: 4}\n"
                           "grid:\n  net:\n    - {label: a, backbone: timm/mobilenetv3_small_100}\n"
                           "    - {label: b, backbone: timm/vit_tiny_patch16_224}\n")
    with pytest.raises(GridError) as err:
        load_grid(path)
    assert err.value.key == "grid.net[1].backbone"
    assert ("takes only 224x224 inputs (timm's fixed_input_size)" in str(err.value)
            and "gives 28x28 images (base.dataset.image_size: 28, the default)" in str(err.value)
            and "Set kwargs: {img_size: [28, 28]}" in str(err.value)
            and "or set base.dataset.image_size: 224" in str(err.value))
    ok = write(tmp_path, "name: g\nbase: {dataset: {name: digits}, embedding_dim: 4,\n"
                         "  backbone: {name: timm/vit_tiny_patch16_224,\n"
                         "             kwargs: {patch_size: 4, dynamic_img_size: true}}}\n")
    assert len(load_grid(ok).cells) == 1  # dynamic_img_size: any size the patches divide


def test_a_misspelt_grid_name_suggests_the_grid_and_lists_each_place_once():
    # before: run from the checkout, ./sweeps and the installed sweeps are one folder, listed twice, and the
    # error left the researcher to spot 'quickstart' in the list of available grids
    from bench.grid import find_grid_file

    root = Path(__file__).resolve().parents[2]
    with pytest.raises(FileNotFoundError) as info:
        find_grid_file("quickstrat", cwd=root)
    message = str(info.value)
    assert "Did you mean 'quickstart'?" in message
    looked = message.split("(looked in: ")[1].split(")")[0].split(", ")
    assert looked == [str(root / "quickstrat"), str(root / "sweeps" / "quickstrat.yaml"),
                      str(root / "sweeps" / "quickstrat.yml"), str(root / "sweeps" / "quickstrat")]


THREE_BAD = """
name: g
base: {dataset: digits, backbone: lenet++, loss: softmax, epochs: 1}
grid:
  loss:
    - {label: soft, loss: softmax}
    - {label: arc, loss: arcfce}
    - {label: net, backbone: lenet_pp}
    - {label: sphere, loss: {name: sphereface, m: 7}}
  embedding_dim: [2, 3]
"""
THREE_KEYS = ["grid.loss[1].loss", "grid.loss[2].backbone", "grid.loss[3].loss"]


def test_every_bad_cell_is_reported_in_one_error_in_grid_order(tmp_path):
    # before: the first bad cell's error only; fixing it and rerunning met the next
    path = write(tmp_path, THREE_BAD)
    with pytest.raises(GridError) as err:
        load_grid(path)
    assert [key for key, _ in err.value.problems] == THREE_KEYS  # each once, though each axis entry is in 2 cells
    assert err.value.key == THREE_KEYS[0]
    lines = str(err.value).splitlines()
    assert lines[0] == f"{path}: 3 problems:"
    assert lines[1].startswith("  grid.loss[1].loss: Unknown loss 'arcfce'. Did you mean 'arcface'")
    assert lines[2].startswith("  grid.loss[2].backbone: Unknown backbone 'lenet_pp'. Did you mean 'lenet++'?")
    assert lines[3] == "  grid.loss[3].loss: loss 'sphereface': m must be an integer in 1..4, but got m=7"


def test_a_problem_in_base_is_listed_once_and_hides_no_cell_problem(tmp_path):
    # base's backbone fails in all 8 cells; before, its error also hid the loss typo of grid.loss[1]
    text = THREE_BAD.replace("backbone: lenet++", "backbone: lenet+", 1).replace(
        "{label: net, backbone: lenet_pp}", "{label: net, loss: cosface}").replace("m: 7", "m: 2")
    with pytest.raises(GridError) as err:
        load_grid(write(tmp_path, text))
    assert [key for key, _ in err.value.problems] == ["base.backbone", "grid.loss[1].loss"]


def test_every_unknown_trial_key_is_listed_and_hides_no_other_problem_of_its_cell(tmp_path):
    # before: the first unknown key of base only (epoch); it also hid batchsize, the axis entry's lr and arcfce
    text = THREE_BAD.replace("epochs: 1}", "epoch: 1, batchsize: 8, 1: x}").replace(
        "{label: soft, loss: softmax}", "{label: soft, loss: softmax, lr: 0.1}")
    with pytest.raises(GridError) as err:
        load_grid(write(tmp_path, text))
    assert [key for key, _ in err.value.problems] == [
        "base.epoch", "base.batchsize", "base.1", "grid.loss[0].lr", *THREE_KEYS]
    messages = [message.split(" Valid keys: ")[0] for _, message in err.value.problems[:4]]
    assert messages == ["unknown trial key 'epoch'. Did you mean 'epochs'?",
                        "unknown trial key 'batchsize'. Did you mean 'batch_size'?",
                        "unknown trial key 1.", "unknown trial key 'lr'."]


def test_every_refused_value_is_listed_and_hides_no_problem_of_the_components(tmp_path):
    # before: the first value the spec checks only (precision); each of the others came one round later, and
    # all of them hid the unknown loss of grid.loss[1].
    text = THREE_BAD.replace("epochs: 1}", "epochs: abc, precision: fp64, optimizer: {name: adam, lr: -1}}").replace(
        "{label: soft, loss: softmax}", "{label: soft, loss: softmax, batch_size: 0}")
    with pytest.raises(GridError) as err:
        load_grid(write(tmp_path, text))
    assert err.value.problems[:4] == [
        ("base.precision", "precision must be one of fp32, bf16, fp16, but got 'fp64'"),
        ("base.optimizer", "optimizer.lr must be a number > 0, but got -1"),
        ("base.epochs", "epochs must be a positive integer, but got 'abc'"),
        ("grid.loss[0].batch_size", "batch_size must be a positive integer, but got 0")]
    assert [key for key, _ in err.value.problems[4:]] == THREE_KEYS


THREE_BAD_COMPONENTS = """
name: g
base: {dataset: {root: here}, backbone: lenet+++, loss: {name: cosface, s: abc}, epochs: 0}
"""


def test_each_component_of_a_cell_is_checked_though_another_is_malformed(tmp_path):
    # before: 1 problem, the dataset without a name; the unknown backbone, the loss's bad s and epochs: 0 came one
    # round later each. The built cell's checks (image size, metric names) still wait for the dataset's fix.
    path = write(tmp_path, THREE_BAD_COMPONENTS)
    with pytest.raises(GridError) as err:
        load_grid(path)
    assert [key for key, _ in err.value.problems] == ["base.epochs", "base.dataset", "base.backbone", "base.loss.s"]
    lines = str(err.value).splitlines()
    assert lines[0] == f"{path}: 4 problems:"
    assert lines[2] == "  base.dataset: dataset needs a 'name', e.g. dataset: {name: ..., ...}; got keys ['root']"
    assert lines[3].startswith("  base.backbone: Unknown backbone 'lenet+++'. Did you mean 'lenet++'?")
    assert lines[4] == "  base.loss.s: loss 'cosface': s must be a number, but got 'abc' (default 64.0)"



@pytest.fixture
def needs_k():
    """A throwaway loss with a required parameter (no registered loss has one), removed again after the test."""
    from registry import LOSSES

    @LOSSES.register("needs-k")
    def needs_k(embedding_dim: int, num_classes: int, k: float, scale: float = 1.0) -> None:
        """Needs k."""

    yield "needs-k"
    LOSSES.unregister("needs-k")


COMPONENT_PROBLEMS = """
name: g
base: {dataset: digits, backbone: lenet++, loss: {name: cosface, s: abc}, epochs: 1}
grid:
  loss:
    - {label: cos, loss: {name: cosface, m: [1]}}
    - {label: k, loss: {name: needs-k, q: 1, scale: x}}
"""


def test_each_problem_of_a_component_is_its_own_line_at_its_own_key(tmp_path, needs_k):
    # before: 2 problems, the first of each cell's loss (s: abc; the unknown q); m: [1], the missing k and
    # scale: x came a round later each. Now 5, a bad value at its own key, and s where the grid sets it (base)
    path = write(tmp_path, COMPONENT_PROBLEMS)
    with pytest.raises(GridError) as err:
        load_grid(path)
    assert str(err.value).splitlines() == [
        f"{path}: 5 problems:",
        "  base.loss.s: loss 'cosface': s must be a number, but got 'abc' (default 64.0)",
        "  grid.loss[0].loss.m: loss 'cosface': m must be a number, but got [1] (default 0.35)",
        "  grid.loss[1].loss: loss 'needs-k' has no parameter 'q'. Its parameters: k=<required>, scale=1.0.",
        "  grid.loss[1].loss: loss 'needs-k' needs 'k'; none was given.",
        "  grid.loss[1].loss.scale: loss 'needs-k': scale must be a number, but got 'x' (default 1.0)"]


SET_PARAMS = """
name: g
base: {dataset: digits, backbone: lenet++, loss: {name: cosface, s: abc, m: 0.1}, epochs: 1}
grid:
  loss:
    - {label: a, loss: {name: cosface, m: [1]}}
    - {label: b, loss: {name: cosface, m: 0.2}, embedding_dim: 3}
"""  # b's embedding_dim keeps the cells two trials under a --set of their m (else that collapse is listed too)


@pytest.mark.parametrize("overrides, typed, want", [
    # before: both at --set loss.m=x, the grid's s: abc too
    ({"loss.m": "x"}, None, [
        ("--set loss.m=x", "loss 'cosface': m must be a number, but got 'x' (default 0.35)"),
        ("base.loss.s", "loss 'cosface': s must be a number, but got 'abc' (default 64.0)")]),
    # before: --set loss.s=20 for the axis's m: [1], which the --set does not touch
    ({"loss.s": 20}, {"loss.s": "loss.s=2e1"}, [
        ("grid.loss[0].loss.m", "loss 'cosface': m must be a number, but got [1] (default 0.35)")]),
    # the same name keeps the grid's s; m is the --set's (before: both at the --set)
    ({"loss": {"name": "cosface", "m": "y"}}, {"loss": "loss={name: cosface, m: y}"}, [
        ("base.loss.s", "loss 'cosface': s must be a number, but got 'abc' (default 64.0)"),
        ("--set loss={name: cosface, m: y}", "loss 'cosface': m must be a number, but got 'y' (default 0.35)")]),
    # a flat --set goes on top of a whole one: m is the flat one's
    ({"loss": {"name": "cosface", "m": "y"}, "loss.m": "z"}, None, [
        ("base.loss.s", "loss 'cosface': s must be a number, but got 'abc' (default 64.0)"),
        ("--set loss.m=z", "loss 'cosface': m must be a number, but got 'z' (default 0.35)")]),
    # a new name drops the grid's s: the --set's own s is the only problem
    ({"loss": {"name": "arcface", "s": "w"}}, None, [
        ("--set loss={name: arcface, s: w}", "loss 'arcface': s must be a number, but got 'w' (default 64.0)")]),
])
def test_a_parameter_problem_is_named_where_it_was_set_the_grid_or_the_set(tmp_path, overrides, typed, want):
    with pytest.raises(GridError) as err:
        load_grid(write(tmp_path, SET_PARAMS), overrides=overrides, typed=typed)
    assert sorted(err.value.problems) == sorted(want)


def test_a_whole_component_problem_stays_at_the_set_that_named_it(tmp_path):
    with pytest.raises(GridError) as err:
        load_grid(write(tmp_path, SET_PARAMS), overrides={"loss": "arcfce", "loss.m": 0.3})
    assert [key for key, _ in err.value.problems] == ["--set loss=arcfce --set loss.m=0.3"]
    assert err.value.problems[0][1].startswith("Unknown loss 'arcfce'. Did you mean 'arcface'")


UNKNOWN_PARAM = """
name: g
base: {dataset: digits, backbone: lenet++, loss: {name: cosface, q: 1}, epochs: 1}
grid: {embedding_dim: [2, 3]}
"""
NO_Q = "loss 'cosface' has no parameter 'q'. Its parameters: s=64.0, m=0.35, chunk_classes=65536."


@pytest.mark.parametrize("overrides, want", [
    ({"loss.m": 0.3}, [("base.loss", NO_Q)]),  # before: at --set loss.m=0.3, which has no q
    ({"loss.m": "x"}, [("base.loss", NO_Q),
                       ("--set loss.m=x", "loss 'cosface': m must be a number, but got 'x' (default 0.35)")]),
    # the --set's own unknown parameter joins the grid's in one message: it stays at the --set
    ({"loss.z": 1}, [("--set loss.z=1", NO_Q.replace("'q'", "'q', 'z'"))]),
    ({"loss": "cosface"}, [("--set loss=cosface", NO_Q)]),  # the --set named the component: it stays there
])
def test_a_whole_component_problem_of_the_grid_is_named_at_the_grid_beside_a_set_of_a_parameter(
        tmp_path, overrides, want):
    with pytest.raises(GridError) as err:
        load_grid(write(tmp_path, UNKNOWN_PARAM), overrides=overrides)
    assert err.value.problems == want


MALFORMED_BASE_LOSS = """
name: g
base: {dataset: digits, backbone: lenet++, loss: {s: 1}, epochs: 1}
grid: {embedding_dim: [2, 3]}
"""

MALFORMED_AXIS_LOSS = """
name: g
base: {dataset: digits, backbone: lenet++, loss: {name: cosface, m: 0.1}, epochs: 1}
grid:
  loss:
    - {label: bad, loss: {s: 1}}
    - {label: arc, loss: {name: arcface, m: 0.2}, embedding_dim: 3}
"""  # arc's embedding_dim keeps the cells two trials under a whole --set loss=... (else they are one, a problem)


@pytest.mark.parametrize("text", [MALFORMED_BASE_LOSS, MALFORMED_AXIS_LOSS])
@pytest.mark.parametrize("overrides, loss, params", [
    ({"loss": "cosface"}, "cosface", {}),
    ({"loss": {"name": "cosface", "m": 0.2}}, "cosface", {"m": 0.2}),
])
def test_a_malformed_component_that_a_whole_set_replaces_is_not_a_problem(tmp_path, text, overrides, loss, params):
    # before: base.loss (or grid.loss[0].loss): loss needs a 'name' ..., though the --set replaces it in every cell
    grid = load_grid(write(tmp_path, text), overrides=overrides)
    assert {(c.spec.loss, tuple(sorted(c.spec.loss_params.items()))) for c in grid.cells} == {
        (loss, tuple(sorted(params.items())))}


def test_a_malformed_component_is_still_a_problem_beside_a_set_of_one_parameter(tmp_path):
    # --set loss.m=0.2 changes a parameter of the grid's loss, which has to be well formed for it
    with pytest.raises(GridError) as err:
        load_grid(write(tmp_path, MALFORMED_AXIS_LOSS), overrides={"loss.m": 0.2})
    assert ("grid.loss[0].loss", "loss needs a 'name', e.g. loss: {name: ..., ...}; got keys ['s']"
            ) in err.value.problems


def test_a_malformed_component_is_still_a_problem_beside_a_refused_whole_set(tmp_path):
    # a whole --set that is refused replaces nothing: both are listed, as before
    with pytest.raises(GridError) as err:
        load_grid(write(tmp_path, MALFORMED_BASE_LOSS), overrides={"loss": {"m": 0.2}})
    assert [key for key, _ in err.value.problems] == ["base.loss", "--set loss={m: 0.2}"]


def test_a_searched_component_with_several_problems_is_one_line_of_the_listing(tmp_path, needs_k):
    from bench.study import load_grid_and_config

    text = ("name: g\nbase: {dataset: digits, backbone: lenet++, loss: {name: cosface, s: 30}}\n"
            "search: {loss: [cosface, needs-k]}\nn_trials: 2\n")
    with pytest.raises(GridError) as err:
        load_grid_and_config(write(tmp_path, text))
    assert err.value.problems == [("search.loss", "loss 'needs-k' has no parameter 's'. Its parameters: k=<required>, "
                                                  "scale=1.0; loss 'needs-k' needs 'k'; none was given (cell cosface, "
                                                  "value 'needs-k')")]


def test_a_malformed_component_in_an_axis_is_listed_not_raised_from_the_merge(tmp_path):
    # before: bench.spec.SpecError escaped check_grid from the merge (a traceback from bench run --validate-only),
    # and nothing else of the grid was listed
    text = GOOD.replace("{label: soft, loss: softmax}", "{label: soft, loss: {s: 10}, backbone: lenet+}")
    with pytest.raises(GridError) as err:
        load_grid(write(tmp_path, text))
    assert [key for key, _ in err.value.problems] == ["grid.loss[0].loss", "grid.loss[0].backbone"]
    assert err.value.problems[0][1] == "loss needs a 'name', e.g. loss: {name: ..., ...}; got keys ['s']"


def test_one_problem_reads_as_a_single_error(tmp_path):
    # a typo in base fails every cell the same way: one problem, the message as it always was
    path = write(tmp_path, GOOD.replace("epochs: 2", "epochz: 2"))
    with pytest.raises(GridError) as err:
        load_grid(path)
    assert str(err.value).startswith(f"{path}: base.epochz: unknown trial key 'epochz'. Did you mean 'epochs'?")
    assert "\n" not in str(err.value) and len(err.value.problems) == 1


def test_a_long_list_of_problems_is_cut_at_twenty(tmp_path):
    names = [f"nope{i}" for i in range(25)]
    path = write(tmp_path, "name: g\nbase: {dataset: digits, backbone: lenet++}\ngrid:\n  loss: [" + ", ".join(names)
                 + "]\n")
    with pytest.raises(GridError) as err:
        load_grid(path)
    lines = str(err.value).splitlines()
    assert lines[0] == f"{path}: 25 problems:" and len(err.value.problems) == 25
    assert [line.split(":")[0] for line in lines[1:21]] == [f"  grid.loss[{i}].loss" for i in range(20)]
    assert lines[21:] == ["  ... and 5 more"]


@pytest.mark.parametrize("command", [["run", "--no-progress"], ["report"]])
def test_every_bad_cell_is_printed_by_the_cli_before_any_store_is_made(in_tmp, capsys, command):
    # three wrong axis values: one exit, all three keys on stderr, no mlflow.db, mlruns/ or optuna journal
    from bench.cli import main

    grid = write(in_tmp, THREE_BAD)
    assert main([command[0], "--grid", str(grid), *command[1:]]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bench: invalid grid: {grid}: 3 problems:\n") and "Traceback" not in err
    assert [line.split(": ")[0] for line in err.splitlines()[1:]] == [f"  {key}" for key in THREE_KEYS]
    assert sorted(p.name for p in in_tmp.iterdir()) == ["grid.yaml"]


# a wrong axis value (the grid's check) and two wrong study keys (StudyConfig's check), in one file
BOTH_STAGES = """
name: g
base: {dataset: digits, backbone: lenet++, loss: softmax, epochs: 1}
grid:
  loss: [softmax, arcfce]
objective: {metric: test_acc, direction: up}
workers: 0
"""
BOTH_KEYS = ["grid.loss[1].loss", "objective.direction", "workers"]


def test_the_grids_problems_and_its_study_keys_problems_are_listed_in_one_error(tmp_path):
    # before: load_grid raised the axis value alone; the study keys' list came only on the run after fixing it
    from bench.study import load_grid_and_config

    path = write(tmp_path, BOTH_STAGES)
    with pytest.raises(GridError) as err:
        load_grid_and_config(path)
    assert [key for key, _ in err.value.problems] == BOTH_KEYS and err.value.key == BOTH_KEYS[0]
    lines = str(err.value).splitlines()
    assert lines[0] == f"{path}: 3 problems:"
    assert lines[1].startswith("  grid.loss[1].loss: Unknown loss 'arcfce'. Did you mean 'arcface'")
    assert lines[2:] == ["  objective.direction: must be maximize or minimize, but got 'up'",
                         "  workers: must be a positive integer, but got 0"]


def test_a_layout_problem_and_a_study_key_problem_are_listed_in_one_error(tmp_path):
    # repeated seeds stop the grid's check before its cells; the study keys are still checked on their own
    from bench.study import load_grid_and_config

    path = write(tmp_path, "name: g\nbase: {dataset: digits, backbone: lenet++}\nseeds: [0, 0]\nworkers: 0\n")
    with pytest.raises(GridError) as err:
        load_grid_and_config(path)
    assert err.value.problems == [("seeds", "seeds repeat: [0, 0]"),
                                  ("workers", "must be a positive integer, but got 0")]


# four mistakes in the layout (top-level key, name, seeds, an axis) and a --set on each of two searched keys
LAYOUT_BAD = """
name: my grid
base: {dataset: digits, backbone: lenet++, loss: {name: cosface, s: 10, m: 0.1}, epochs: 1}
grid:
  loss: [softmax, softmax]
  embedding_dim: [2, 3]
seedz: [0, 1]
seeds: abc
search: {loss.m: [0.1, 0.2], optimizer.lr: [0.01, 0.1]}
n_trials: 2
"""


def test_every_layout_problem_is_listed_in_one_error(tmp_path):
    # before: the first one only (seedz), then name, seeds, grid.loss and each --set, one round of editing each
    path = write(tmp_path, LAYOUT_BAD)
    with pytest.raises(GridError) as err:
        load_grid(path, overrides={"optimizer.lr": 0.05, "loss.m": 0.3, "epochs": 1})
    assert [key for key, _ in err.value.problems] == [
        "seedz", "name", "seeds", "--set loss.m=0.3", "--set optimizer.lr=0.05", "grid.loss"]
    lines = str(err.value).splitlines()
    assert lines[0] == f"{path}: 6 problems:"
    assert lines[1].startswith("  seedz: unknown top-level key 'seedz' (did you mean 'seeds'?); valid keys: name,")
    assert lines[2:] == [
        "  name: a name of letters, digits, '_', '-', '.' is required, but got 'my grid'",
        "  seeds: a list of integers (or a count) is required, but got 'abc'",
        "  --set loss.m=0.3: loss.m is searched (search: loss.m), so the sampler sets it in every trial; drop --set "
        "loss.m=..., or take loss.m out of search: to fix it",
        "  --set optimizer.lr=0.05: optimizer.lr is searched (search: optimizer.lr), so the sampler sets it in every "
        "trial; drop --set optimizer.lr=..., or take optimizer.lr out of search: to fix it",
        "  grid.loss: labels must be unique within an axis; repeated: ['softmax']"]


def test_the_cells_are_checked_beside_a_bad_name_or_bad_seeds(tmp_path):
    # the cells do not depend on name: or seeds:, so a typo in base and in an axis entry show in the same round
    text = LAYOUT_BAD.replace("[softmax, softmax]", "[softmax, arcfce]").replace("lenet++", "lenet+")
    with pytest.raises(GridError) as err:
        load_grid(write(tmp_path, text))
    assert [key for key, _ in err.value.problems] == ["seedz", "name", "seeds", "base.backbone", "grid.loss[1].loss"]
    assert err.value.problems[-1][1].startswith("Unknown loss 'arcfce'. Did you mean 'arcface'")


def test_a_report_problem_is_listed_beside_the_other_layout_problems(tmp_path):
    # the report names an axis the grid lacks; its where: label of a bad axis is not listed as unknown on top
    text = (LAYOUT_BAD.replace("seedz: [0, 1]\n", "") + "report: {tables: [{name: t, rows: los}, "
            "{name: u, rows: embedding_dim, where: {loss: nope}}]}\n")
    with pytest.raises(GridError) as err:
        load_grid(write(tmp_path, text))
    assert [key for key, _ in err.value.problems] == ["name", "seeds", "grid.loss", ""]
    assert "report.tables[0].rows" in err.value.problems[-1][1] and "'los'" in err.value.problems[-1][1]


def test_every_bad_table_of_the_report_is_listed_beside_the_cells_problems(tmp_path):
    # before: the report's first problem only (report.tabels); each bad table came one round later
    text = THREE_BAD.replace("embedding_dim: [2, 3]", "embedding_dim: [2, 3]\nreport:\n  tabels: 1\n  tables:\n"
                             "    - {name: a, rows: los}\n    - {name: b, rows: loss, colums: [test_acc]}\n"
                             "    - {name: c, rows: [loss, embedding_dim]}\n"
                             "    - {name: d, rows: loss, where: {embedding_dim: '4'}}\n")
    path = write(tmp_path, text)
    with pytest.raises(GridError) as err:
        load_grid(path)
    lines = str(err.value).splitlines()
    assert lines[0] == f"{path}: 7 problems:"
    assert [line.split(": ")[0] for line in lines[1:]] == [
        "  report.tabels", "  report.tables[0].rows", "  report.tables[1].colums",
        "  report.tables[3].where.embedding_dim", *(f"  {key}" for key in THREE_KEYS)]
    assert lines[2].endswith("'los' is not an axis of the grid (did you mean 'loss'?); axes: loss, embedding_dim "
                             "(or 'label': all labels joined)")


def test_each_problem_of_one_table_is_a_line_of_the_grids_listing(tmp_path):
    # before: a table's first problem only (report.tables[0].rows); its digits and ci came one round later each
    text = THREE_BAD.replace("embedding_dim: [2, 3]", "embedding_dim: [2, 3]\nreport:\n  tables:\n"
                             "    - {name: a, rows: [los, embedding_dim], digits: -1, ci: 'yes'}\n")
    path = write(tmp_path, text)
    with pytest.raises(GridError) as err:
        load_grid(path)
    lines = str(err.value).splitlines()
    assert lines[0] == f"{path}: 6 problems:"
    assert lines[1:4] == [
        "  report.tables[0].rows[0]: 'los' is not an axis of the grid (did you mean 'loss'?); axes: loss, "
        "embedding_dim (or 'label': all labels joined)",
        "  report.tables[0].digits: must be an integer in 0..12, but got -1",
        "  report.tables[0].ci: must be true or false, but got 'yes'"]
    assert [key for key, _ in err.value.problems[3:]] == THREE_KEYS


def test_a_grid_section_that_is_not_a_mapping_stops_only_the_axes_and_the_report(tmp_path):
    path = write(tmp_path, "name: a b\nbase: [1]\ngrid: [loss]\nseeds: 0\nreport: {tables: [{name: t, rows: x}]}\n")
    with pytest.raises(GridError) as err:
        load_grid(path)
    assert [key for key, _ in err.value.problems] == ["name", "base", "seeds", "grid"]
    assert err.value.problems[3] == ("grid", "must map axis names to value lists, but got ['loss']")


def test_an_unknown_axis_is_one_problem_and_hides_no_problem_of_the_cells(tmp_path):
    # before: one "unknown trial key" per value, and in every cell it hid the cell's other problems (arcfce here)
    text = THREE_BAD.replace("embedding_dim: [2, 3]", "embeding_dim: [2, 3, 4]")
    with pytest.raises(GridError) as err:
        load_grid(write(tmp_path, text))
    assert [key for key, _ in err.value.problems] == ["grid.embeding_dim", *THREE_KEYS]
    assert err.value.problems[0][1].startswith(
        "an axis of plain values sets the trial key of its name, but 'embeding_dim' is not a trial key (did you "
        "mean 'embedding_dim'?); name the axis after one (dataset, backbone, loss, embedding_dim, ")


def test_a_dotted_axis_of_plain_values_is_named_with_the_mapping_to_write(tmp_path):
    text = GOOD.replace("embedding_dim: [2, 3]", "loss.m: [0.1, 0.2]")
    with pytest.raises(GridError) as err:
        load_grid(write(tmp_path, text))
    assert [key for key, _ in err.value.problems] == ["grid.loss.m"]
    assert err.value.problems[0][1].endswith("or give each value as a mapping of trial keys with a label, e.g. "
                                             "- {label: m0.2, loss: {name: cosface, m: 0.2}}")


def test_a_key_that_yaml_reads_as_a_number_is_named_not_a_traceback(tmp_path):
    # before: TypeError from difflib, for a top-level key 1: and (after the unknown-axis check) an axis 1:
    path = write(tmp_path, "name: g\nbase: {dataset: digits, backbone: lenet++, epochs: 1}\ngrid: {1: [2, 3]}\n2: x\n")
    with pytest.raises(GridError) as err:
        load_grid(path)
    assert [key for key, _ in err.value.problems] == ["2", "grid.1"]
    assert err.value.problems[0][1].startswith("unknown top-level key 2; valid keys: name, description, base,")
    assert err.value.problems[1][1].startswith("an axis of plain values sets the trial key of its name, but 1 is "
                                               "not a trial key; name the axis after one (dataset, ")


def test_an_axis_of_mappings_or_of_a_trial_key_is_not_an_unknown_axis(tmp_path):
    text = GOOD.replace("embedding_dim: [2, 3]", "dims: [{label: two, embedding_dim: 2}]\n  epochs: [1, 2]")
    grid = load_grid(write(tmp_path, text))
    assert grid.axes == ["loss", "dims", "epochs"] and {c.spec.epochs for c in grid.cells} == {1, 2}


def test_an_unknown_top_level_key_no_longer_hides_the_study_keys_problems(tmp_path):
    # before: the unknown key was raised before anything else, the study keys' problems came a round later
    from bench.study import load_grid_and_config

    path = write(tmp_path, BOTH_STAGES.replace("workers: 0", "workers: 0\nworker: 2"))
    with pytest.raises(GridError) as err:
        load_grid_and_config(path)
    assert [key for key, _ in err.value.problems] == ["worker", *BOTH_KEYS]
    assert err.value.problems[0][1].startswith("unknown top-level key 'worker' (did you mean 'workers'?)")


def test_an_unset_environment_variable_is_listed_with_the_unknown_top_level_keys(tmp_path):
    # the values are not known, so nothing else is checked; the unknown key (found before) is not dropped
    text = GOOD.replace("epochs: 2", "epochs: ${EPOCHS}") + "seedz: [0]\n"
    with pytest.raises(GridError) as err:
        load_grid(write(tmp_path, text), env={})
    assert [key for key, _ in err.value.problems] == ["seedz", "base.epochs"]
    assert err.value.problems[1][1].startswith("environment variable EPOCHS is not set")


@pytest.mark.parametrize("command", [["run", "--no-progress"], ["run", "--validate-only"]])
def test_the_cli_prints_every_layout_problem_before_any_store_is_made(in_tmp, capsys, command):
    # a misspelled top-level key, seeds: abc and an unknown axis: one exit 2 with all three, nothing written
    from bench.cli import main

    grid = write(in_tmp, "name: g\nbase: {dataset: digits, backbone: lenet++, epochs: 1}\n"
                         "grid:\n  embeding_dim: [2]\nseedz: [0, 1]\nseeds: abc\n")
    assert main([command[0], "--grid", str(grid), *command[1:]]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bench: invalid grid: {grid}: 3 problems:\n") and "Traceback" not in err
    assert [line.split(": ")[0] for line in err.splitlines()[1:]] == ["  seedz", "  seeds", "  grid.embeding_dim"]
    assert sorted(p.name for p in in_tmp.iterdir()) == ["grid.yaml"]


def test_a_search_key_is_checked_against_the_sound_cells_only_beside_a_bad_cell(tmp_path):
    # the cell of the unknown loss is listed once, under its axis entry, not again under search.loss.m; the sound
    # cell still shows the searched image size that lenet++ cannot take (it pools three times: at least 8x8)
    from bench.study import load_grid_and_config

    text = ("name: g\nbase: {dataset: digits, backbone: lenet++, loss: {name: cosface, s: 10, m: 0.1}}\n"
            "grid:\n  loss: [cosface, arcfce]\n"
            "search: {loss.m: [0.1, 0.2], dataset.image_size: {type: int, low: 4, high: 28}}\nn_trials: 2\n")
    with pytest.raises(GridError) as err:
        load_grid_and_config(write(tmp_path, text))
    assert [key for key, _ in err.value.problems] == ["grid.loss[1].loss", "search.dataset.image_size"]
    assert "at least 8x8" in err.value.problems[1][1] and "cell cosface" in err.value.problems[1][1]


def test_a_single_problem_of_either_stage_reads_as_before(tmp_path):
    from bench.study import load_grid_and_config

    path = write(tmp_path, BOTH_STAGES.replace("arcfce", "arcface").replace("direction: up", "direction: maximize"))
    with pytest.raises(GridError) as err:
        load_grid_and_config(path)
    assert str(err.value) == f"{path}: workers: must be a positive integer, but got 0"
    path = write(tmp_path, BOTH_STAGES.replace("direction: up", "direction: maximize").replace("workers: 0", ""))
    with pytest.raises(GridError) as err:
        load_grid_and_config(path)
    assert str(err.value).startswith(f"{path}: grid.loss[1].loss: Unknown loss 'arcfce'.")


def test_a_valid_grid_gives_the_grid_and_its_config():
    from bench.study import StudyConfig, load_grid_and_config

    grid, config = load_grid_and_config("quickstart")
    assert [c.spec for c in grid.cells] == [c.spec for c in load_grid("quickstart").cells]
    assert config == StudyConfig.from_grid(grid)


@pytest.mark.parametrize("command", [["run", "--no-progress"], ["run", "--validate-only"], ["worker", "--wait", "1"]])
def test_the_cli_prints_both_stages_problems_in_one_error_before_any_store_is_made(in_tmp, capsys, command):
    # one exit 2 with the three keys on stderr; no mlflow.db, mlruns/, optuna.journal or .bench/ left behind
    from bench.cli import main

    grid = write(in_tmp, BOTH_STAGES)
    assert main([command[0], "--grid", str(grid), *command[1:]]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bench: invalid grid: {grid}: 3 problems:\n") and "Traceback" not in err
    assert [line.split(": ")[0] for line in err.splitlines()[1:]] == [f"  {key}" for key in BOTH_KEYS]
    assert sorted(p.name for p in in_tmp.iterdir()) == ["grid.yaml"]


HEADERS = """
name: g
base: {dataset: digits, backbone: lenet++, epochs: 1}
grid:
  loss: [softmax, cosface]
  embedding_dim: [2, 3]
report:
  tables:
"""


@pytest.mark.parametrize("table, bad, keys", [
    # metric columns: the axes in rows and the metrics listed; 'tset_acc' and 'los' used to be ignored silently
    ("{name: t, rows: [loss, embedding_dim], columns: [train_acc, test_acc], "
     "headers: {tset_acc: Test, los: Loss, test_acc: Test acc., embedding_dim: Dim}}",
     ["tset_acc", "los"], "loss, embedding_dim, train_acc, test_acc"),
    # a matrix: its column axis and that axis's labels, not the metric in its cells
    ("{name: t, rows: loss, columns: embedding_dim, metric: test_acc, headers: {embedding_dim: Dim, '2': two, "
     "test_acc: Acc, '4': four}}", ["test_acc", "4"], "loss, embedding_dim, 2, 3"),
    # a pattern: the metrics it matches among those the trials log (digits: classes 0..9); 'metric' only names the
    # corner of a transposed table
    ("{name: t, rows: [loss, embedding_dim], columns: {pattern: 'test_acc.class_*'}, headers: "
     "{test_acc.class_3: three, test_acc.class_12: twelve, metric: Class}}", ["test_acc.class_12", "metric"],
     "loss, embedding_dim, " + ", ".join(f"test_acc.class_{c}" for c in range(10))),
])
def test_a_header_key_that_names_no_column_of_its_table_is_listed_with_the_valid_keys(tmp_path, table, bad, keys):
    path = write(tmp_path, HEADERS + f"    - {table}\n")
    with pytest.raises(GridError) as err:
        load_grid(path)
    assert [key for key, _ in err.value.problems] == [f"report.tables[0].headers.{k}" for k in bad]
    for _, message in err.value.problems:
        assert message.endswith(f"; keys it has: {keys}"), message


def test_header_keys_that_each_show_somewhere_validate(tmp_path):
    # the corner of a transposed table is 'metric'; the joined labels of rows: label are axis-free keys
    tables = ("    - {name: a, rows: [loss, embedding_dim], columns: [test_acc], transpose: true, "
              "headers: {metric: Metric, test_acc: Acc, loss: Loss}}\n"
              "    - {name: b, rows: loss, columns: embedding_dim, metric: test_acc, headers: {'3': three}}\n"
              "    - {name: c, rows: embedding_dim, columns: label, metric: test_acc, "
              "headers: {label: Cell, softmax / 2: plain}}\n")
    grid = load_grid(write(tmp_path, HEADERS + tables))
    assert [t["headers"] for t in grid.report["tables"]] == [
        {"metric": "Metric", "test_acc": "Acc", "loss": "Loss"}, {"3": "three"},
        {"label": "Cell", "softmax / 2": "plain"}]


@pytest.mark.parametrize("err", [
    GridError("g.yaml", "base.loss", "Unknown loss 'arcfce'"),
    GridError("g.yaml", "", "not valid YAML"),
    GridError.listing("g.yaml", [("grid.loss[1].loss", "Unknown loss 'x'"), ("seeds", "seeds repeat: [0, 0]")]),
])
def test_a_grid_error_survives_pickle_and_deepcopy(err):
    # before: pickle rebuilt it as GridError(message) and failed (missing key and message), so an error raised in
    # a ProcessPool worker broke the pool instead of reaching the parent
    import copy
    import pickle

    for twin in (pickle.loads(pickle.dumps(err)), copy.deepcopy(err)):
        assert type(twin) is GridError and twin is not err
        assert (str(twin), twin.path, twin.key, twin.problems) == (str(err), err.path, err.key, err.problems)


def _raise_grid_error(_: int) -> None:
    raise GridError.listing("g.yaml", [("base.epochz", "unknown trial key"), ("seeds", "seeds repeat")])


def test_a_grid_error_raised_in_a_process_pool_worker_reaches_the_parent():
    import concurrent.futures
    import multiprocessing

    context = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        with pytest.raises(GridError) as err:
            pool.submit(_raise_grid_error, 0).result()
    assert err.value.problems == [("base.epochz", "unknown trial key"), ("seeds", "seeds repeat")]
    assert str(err.value) == "g.yaml: 2 problems:\n  base.epochz: unknown trial key\n  seeds: seeds repeat"
