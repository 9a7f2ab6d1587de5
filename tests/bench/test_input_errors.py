"""Bad grids and command lines found by an adversarial audit: each is a clear error naming the file, the key
and the fix, before anything trains (no traceback, no mlflow.db), or is read the way the researcher meant."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.cli import main
from bench.grid import GridError, load_grid

BASE = """
name: g
base:
  dataset: digits
  backbone: lenet++
  epochs: 1
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text", ["1e-3", "1.0e-3", "1E-3"])
def test_exponent_floats_are_numbers_in_grids(tmp_path, text):
    # PyYAML alone reads 1e-3 as the string '1e-3': it passed validation and failed inside torch's optimizer
    grid = load_grid(write(tmp_path, BASE + f"  optimizer: {{name: adam, lr: {text}}}\n"))
    assert grid.cells[0].spec.optimizer_params["lr"] == pytest.approx(1e-3)


def test_exponent_floats_are_numbers_in_set(tmp_path):
    grid = load_grid(write(tmp_path, BASE), overrides={"optimizer.lr": 1e6})
    from bench.commands._common import parse_sets

    assert parse_sets(["optimizer.lr=1e6"]) == {"optimizer.lr": 1e6}
    assert grid.cells[0].spec.optimizer_params["lr"] == 1e6


def test_a_key_written_twice_is_an_error(tmp_path):
    with pytest.raises(GridError, match=r"found key 'dataset' twice"):
        load_grid(write(tmp_path, "name: g\nbase: {dataset: mnist, dataset: digits}\n"))


@pytest.mark.parametrize("line, where, message", [
    ("  optimizer: {name: adam, lr: abc}", "base.optimizer", "optimizer.lr must be a number > 0, but got 'abc'"),
    ("  grad_clip: abc", "base.grad_clip", "grad_clip must be a number > 0 or null"),
    ("  optimizer: {name: sgd, lr: 0.1, momentum: abc}", "base.optimizer", "optimizer.momentum must be a number"),
    ("  optimizer: {name: adam, lr: 0.1, betas: 3}", "base.optimizer", "optimizer.betas must be two numbers"),
    ("  scheduler: {name: step, step_size: 0}", "base.scheduler", "scheduler.step_size must be an integer >= 1"),
    ("  scheduler: {name: multistep, milestones: 5}", "base.scheduler", "scheduler.milestones must be a non-empty"),
    ("  center_loss: {weight: -1}", "base.center_loss", "center_loss.weight must be a number >= 0"),
    ("  center_loss: {weight: 0.1, alpha: 5}", "base.center_loss", r"center_loss.alpha must be a number in \[0, 1\]"),
    ("  channels_last: maybe", "base.channels_last", "channels_last must be true or false"),
    ("  epoch: 3", "base.epoch", "unknown trial key 'epoch'. Did you mean 'epochs'"),
])
def test_bad_values_are_grid_errors_naming_the_key(tmp_path, line, where, message):
    with pytest.raises(GridError, match=message) as info:
        load_grid(write(tmp_path, BASE + line + "\n"))
    assert info.value.key == where


def test_a_typo_in_an_axis_entry_names_that_entry(tmp_path):
    text = BASE + "grid:\n  loss:\n    - {label: a, lossx: softmax}\n"
    with pytest.raises(GridError, match="Did you mean 'loss'") as info:
        load_grid(write(tmp_path, text))
    assert info.value.key == "grid.loss[0].lossx"


@pytest.mark.parametrize("sets, message", [
    (["epochs=[1"], "--set 'epochs=\\[1': the value is not valid YAML"),
    (["optimizer.lr=abc"], "optimizer.lr must be a number > 0"),
    (["seed=3"], "set `seeds: \\[3\\]`"),
    (["epoch=1"], "unknown parameter 'epoch' \\(did you mean 'epochs'\\?\\); valid: "),
    (["los.m=0.2"], "'los' is not a component \\(did you mean 'loss'\\?\\)"),
])
def test_bad_set_exits_2_without_a_traceback(in_tmp, capsys, sets, message):
    grid = write(in_tmp, BASE)
    argv = ["run", "--grid", str(grid), "--validate-only"]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    import re

    assert re.search(message, err), err
    assert not (in_tmp / "mlflow.db").exists()


def test_every_malformed_set_is_listed_in_one_exit(in_tmp, capsys):
    # before: the first one only ('epochs=[1'); the seed and the missing '=' came one run each later
    grid = write(in_tmp, BASE)
    argv = ["run", "--grid", str(grid), "--validate-only", "--set", "epochs=[1", "--set", "loss.m=0.2", "--set",
            "seed=3", "--set", "batch_size"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "bench: 3 problems with --set:",
        "  --set 'epochs=[1': the value is not valid YAML (expected ',' or ']', but got '<stream end>'); quote it, "
        "e.g. --set 'epochs=\"...\"', or write a list as [1, 2]",
        "  --set seed=... would be replaced by the grid's seeds; set `seeds: [3]` (or a count, `seeds: 3`) in the "
        "grid instead",
        "  --set takes KEY=VALUE (e.g. --set epochs=1), but got 'batch_size'"]
    assert sorted(p.name for p in in_tmp.iterdir()) == ["grid.yaml"]


@pytest.mark.parametrize("argv, message", [
    (["--device", "cuda"], "--device cuda, but torch sees no CUDA GPU"),
    (["--device", "tpu"], "--device 'tpu' is not a device"),
    (["--gpus", "0"], "--gpus 0, but torch sees no CUDA GPU"),
])
@pytest.mark.parametrize("command", ["run", "worker"])
def test_a_device_this_machine_lacks_exits_2_before_the_study(in_tmp, capsys, monkeypatch, command, argv, message):
    # before: the study and mlflow.db were created and every trial failed with torch's error in turn
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    grid = write(in_tmp, BASE)
    assert main([command, "--grid", str(grid), *argv]) == 2
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in in_tmp.iterdir()) == ["grid.yaml"]


@pytest.mark.parametrize("command", ["run", "worker"])
def test_a_gpu_id_beyond_the_visible_gpus_exits_2_before_the_study(in_tmp, capsys, monkeypatch, command):
    # ids count the GPUs this process sees (worker 0 trains on cuda:<id>); under CUDA_VISIBLE_DEVICES the check
    # was skipped, and --gpus 3 with two GPUs visible failed in every trial (worker 0: invalid device ordinal)
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")

    def trained(*args, **kwargs):
        raise AssertionError("the study started: no GPU here to train on")

    import bench.workers

    monkeypatch.setattr(bench.workers, "spawn_workers", lambda *a, **k: [])
    monkeypatch.setattr(bench.workers, "work", trained)
    grid = write(in_tmp, BASE)
    assert main([command, "--grid", str(grid), "--gpus", "0,3"]) == 2
    assert "--gpus 0,3, but CUDA_VISIBLE_DEVICES=4,5 leaves 2 GPU(s): ids 0..1" in capsys.readouterr().err
    assert sorted(p.name for p in in_tmp.iterdir()) == ["grid.yaml"]


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_bench_worker_refuses_a_worker_count_below_one(in_tmp, capsys, value):
    # before: max(1, N) ran one worker for --workers 0 or -2 without a word (bench run refuses -1)
    grid = write(in_tmp, BASE)
    with pytest.raises(SystemExit) as info:
        main(["worker", "--grid", str(grid), "--workers", value, "--wait", "0"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --workers: must be an integer >= 1, but got '{value}'" in err and "Traceback" not in err
    assert sorted(p.name for p in in_tmp.iterdir()) == ["grid.yaml"]


def test_bench_worker_before_any_study_exits_2_and_leaves_no_journal(in_tmp, capsys):
    # before: the default optuna.journal it opened to look for the study stayed behind, empty
    grid = write(in_tmp, BASE)
    assert main(["worker", "--grid", str(grid), "--wait", "0"]) == 2
    assert "no study 'g' in the storage yet; start `bench run --grid ...`" in capsys.readouterr().err
    assert sorted(p.name for p in in_tmp.iterdir()) == ["grid.yaml"]


@pytest.mark.parametrize("value", ["-5", "70000", "http"])
def test_bench_ui_refuses_a_port_outside_0_to_65535(in_tmp, capsys, value):
    # before: -5 and 70000 ended in socket's OverflowError traceback ("bind(): port must be 0-65535")
    from bench.cli import build_parser

    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["ui", "--port", value])
    assert info.value.code == 2
    assert f"argument --port: a port is 0..65535 (0: any free port), but got '{value}'" in capsys.readouterr().err


@pytest.mark.parametrize("extra, code", [([], 0), (["--export"], 1)])
def test_report_of_a_grid_never_run_leaves_no_mlflow_db(in_tmp, capsys, extra, code):
    grid = write(in_tmp, BASE)
    assert main(["report", "--grid", str(grid), *extra]) == code
    assert "no runs of g yet" in capsys.readouterr().out
    assert sorted(p.name for p in in_tmp.iterdir()) == ["grid.yaml"]


def test_a_folder_of_unreadable_images_fails_the_trial_saying_so(in_tmp, capsys):
    # before: the trial trained on nothing, logged train_acc 0.0 as a result and blamed objective.metric
    for c in range(3):
        (in_tmp / "faces" / f"id{c}").mkdir(parents=True)
        for i in range(2):
            (in_tmp / "faces" / f"id{c}" / f"{i}.jpg").write_text("not an image")
    grid = write(in_tmp, "name: g\nbase: {dataset: {name: imagefolder, root: faces, image_size: 16, split: none}, "
                         "backbone: lenet++, epochs: 1, batch_size: 4}\n")
    assert main(["run", "--grid", str(grid), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "epoch 0 trained on no images: all 6 training images seen were unreadable" in out
    assert "objective metric" not in out


@pytest.mark.parametrize("damage, message", [
    ("truncate", "truncated or padded"),
    ("swap", "not labels \\(N,\\); is it an images file"),
    ("garbage", "not an IDX file"),
])
@pytest.mark.parametrize("gz", [False, True])
def test_damaged_idx_files_fail_validation_not_the_trials(in_tmp, capsys, damage, message, gz):
    # before: the grid validated (the files existed) and every trial failed reading them, stores left behind
    import gzip
    import re

    from tests.conftest import write_tiny_mnist

    write_tiny_mnist(in_tmp / "mnist")
    if gz:
        for p in (in_tmp / "mnist").iterdir():
            p.with_name(p.name + ".gz").write_bytes(gzip.compress(p.read_bytes()))
            p.unlink()
    ext = ".gz" if gz else ""
    images = in_tmp / "mnist" / f"t10k-images-idx3-ubyte{ext}"
    labels = in_tmp / "mnist" / f"t10k-labels-idx1-ubyte{ext}"
    read = (lambda p: gzip.decompress(p.read_bytes())) if gz else (lambda p: p.read_bytes())
    put = (lambda p, b: p.write_bytes(gzip.compress(b))) if gz else (lambda p, b: p.write_bytes(b))
    if damage == "truncate":
        put(images, read(images)[:-100])
    elif damage == "swap":
        put(labels, read(images))
    else:
        put(labels, b"garbage")
    grid = write(in_tmp, "name: g\nbase: {dataset: {name: mnist, root: mnist}, epochs: 1}\n")
    assert main(["run", "--grid", str(grid)]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert "base.dataset" in err and "Traceback" not in err
    assert sorted(p.name for p in in_tmp.iterdir()) == ["grid.yaml", "mnist"]


def test_idx_shape_reads_only_the_header_of_a_sound_file(tmp_path):
    import gzip

    import numpy as np

    from registry.datasets.idx import idx_shape, write_idx

    array = np.zeros((7, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "a.idx", array)
    write_idx(tmp_path / "a.idx.gz", array)
    assert idx_shape(tmp_path / "a.idx") == idx_shape(tmp_path / "a.idx.gz") == (7, 28, 28)
    # a multi-member .gz (ISIZE of the last member only) is still read right, through the full read
    data = gzip.decompress((tmp_path / "a.idx.gz").read_bytes())
    (tmp_path / "b.idx.gz").write_bytes(gzip.compress(data[:100]) + gzip.compress(data[100:]))
    assert idx_shape(tmp_path / "b.idx.gz") == (7, 28, 28)


@pytest.mark.parametrize("params, message", [
    ("{name: digits, test_fraction: 1.5}",
     r"base\.dataset: .*test_fraction must be a number in \(0, 1\), but got 1\.5"),
    ("{name: digits, test_fraction: 0}", r"test_fraction must be a number in \(0, 1\), but got 0"),
    ("{name: digits, image_size: 0}", r"image_size must be a whole number of pixels >= 1, but got 0"),
])
def test_digits_values_fail_validation_before_training(tmp_path, params, message):
    from bench.grid import GridError, load_grid

    path = tmp_path / "g.yaml"
    path.write_text(f"name: g\nbase: {{dataset: {params}, backbone: lenet++, loss: softmax}}\n")
    with pytest.raises(GridError, match=message):
        load_grid(path)


@pytest.mark.parametrize("fraction, message", [
    (0.004, r"test_fraction 0\.004 holds out ceil\(0\.004 x 1797\) = 8 test images, fewer than the 10 classes.*"
            r"set test_fraction to at least 0\.00501"),
    (0.995, r"test_fraction 0\.995 leaves 1797 - 1789 = 8 training images.*set test_fraction to at most 0\.994"),
])
def test_a_digits_split_without_every_class_on_both_sides_fails_validation(tmp_path, fraction, message):
    # the registry check passed any fraction in (0, 1); scikit-learn's stratified split then refused it when the
    # first trial started ("The test_size = 8 should be greater or equal to the number of classes = 10")
    path = write(tmp_path, f"name: g\nbase: {{dataset: {{name: digits, test_fraction: {fraction}}}, "
                           f"backbone: lenet++, loss: softmax}}\n")
    with pytest.raises(GridError, match=message) as err:
        load_grid(path)
    assert err.value.key == "base.dataset"


def test_the_digits_test_fraction_bounds_are_scikit_learns():
    # the bounds the message gives, against scikit-learn's own split of the real digits: they split, and the next
    # value past each (three significant digits) is refused
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from registry.datasets.digits import _CLASSES, _IMAGES, _fraction_bounds

    target = load_digits().target
    assert (len(target), len(np.unique(target))) == (_IMAGES, _CLASSES)
    low, high = _fraction_bounds()
    for fraction in (low, high):
        train, test = train_test_split(np.arange(len(target)), test_size=fraction, stratify=target, random_state=0)
        assert len(np.unique(target[train])) == len(np.unique(target[test])) == 10
    for fraction in (low - 0.00001, high + 0.001):
        with pytest.raises(ValueError, match="should be greater or equal to the number of classes"):
            train_test_split(np.arange(len(target)), test_size=fraction, stratify=target, random_state=0)


def test_an_imagefolder_without_image_size_is_checked_against_the_backbone_at_its_first_images_size(tmp_path):
    # image_size unset: the trial sizes images by the first readable file; a face net needs at least 16x16, and
    # before this was found only when the first trial built it, after the grid had been accepted
    import numpy as np
    from PIL import Image

    from registry import DATASETS

    for c in range(2):
        (tmp_path / "faces" / f"id{c}").mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.zeros((12, 10, 3), np.uint8)).save(tmp_path / "faces" / f"id{c}" / f"{i}.png")
    root = tmp_path / "faces"
    assert DATASETS.create("imagefolder", root=str(root), split="none").image_size == (12, 10)  # the trial's size
    grid = write(tmp_path, f"name: g\nbase: {{dataset: {{name: imagefolder, root: {root}, split: none}}, "
                           f"backbone: sphere20a}}\n")
    with pytest.raises(GridError) as err:
        load_grid(grid)
    assert err.value.key == "base.dataset.image_size"
    assert "takes images of at least 16x16, but dataset imagefolder gives 12x10 images" in str(err.value)
    load_grid(write(tmp_path, f"name: g\nbase: {{dataset: {{name: imagefolder, root: {root}, split: none}}, "
                              f"backbone: lenet++}}\n"))  # lenet++ takes 12x10


def test_a_truncated_idx_file_with_download_true_fails_validation_not_the_trials(tmp_path):
    # before: download: true skipped the registry's file check and the metric-name probe swallowed the IDXError,
    # so the grid validated and every trial failed reading t10k-labels-idx1-ubyte
    from tests.conftest import write_tiny_mnist

    write_tiny_mnist(tmp_path / "mnist", test=20)
    labels = tmp_path / "mnist" / "t10k-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-3])  # 20 labels promised, 17 left
    path = write(tmp_path, f"name: g\nbase: {{dataset: {{name: mnist, root: {tmp_path / 'mnist'}, download: true}}, "
                           f"epochs: 1}}\n")
    with pytest.raises(GridError) as err:
        load_grid(path)
    assert err.value.key == "base.dataset" and len(err.value.problems) == 1
    assert str(labels) in str(err.value) and "(20 data bytes), the file has 17" in str(err.value)


def test_a_dataset_that_fails_while_its_metrics_are_told_is_a_grid_problem(tmp_path, monkeypatch):
    # a dataset whose files pass the registry's check but fail when read for the metric names: listed with the
    # key that set the dataset, not dropped (the trials would all fail on it)
    from registry.datasets._types import EVALUATIONS

    def unreadable(params, max_classes):
        raise ValueError("data/x.bin: truncated")

    monkeypatch.setitem(EVALUATIONS, "digits", unreadable)
    path = write(tmp_path, BASE + "grid:\n  dataset:\n    - {label: a, dataset: {name: digits, test_fraction: 0.5}}\n")
    with pytest.raises(GridError) as err:
        load_grid(path)
    assert err.value.problems == [("grid.dataset[0].dataset", "dataset 'digits' cannot be read, so every trial "
                                                              "would fail loading it: data/x.bin: truncated")]


@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist"])
@pytest.mark.parametrize("damaged, missing", [
    ("train-images-idx3-ubyte", None),
    ("train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"),  # files still to download are no problem
])
def test_a_damaged_train_idx_file_with_download_true_fails_validation(tmp_path, dataset, damaged, missing):
    # before: download: true skipped the registry's check; only t10k-labels was read (for the metric names), so a
    # truncated train file validated, was kept by the download, and failed every trial
    from registry import DATASETS
    from tests.conftest import write_tiny_mnist

    write_tiny_mnist(tmp_path / "data", train=40)
    path = tmp_path / "data" / damaged
    path.write_bytes(path.read_bytes()[:-5])
    if missing:
        (tmp_path / "data" / missing).unlink()
    grid = write(tmp_path, f"name: g\nbase: {{dataset: {{name: {dataset}, root: {tmp_path / 'data'}, "
                           f"download: true}}, epochs: 1}}\n")
    with pytest.raises(GridError) as err:
        load_grid(grid)
    assert err.value.key == "base.dataset" and len(err.value.problems) == 1
    assert f"{path}: truncated or padded" in str(err.value) and "delete it and download it again" in str(err.value)
    path.unlink()  # the same folder with that file missing too: all to download, nothing wrong
    DATASETS.check(dataset, {"root": str(tmp_path / "data"), "download": True})


def test_a_set_that_makes_every_cell_one_trial_exits_2_naming_the_option_as_typed(in_tmp, capsys):
    # before: exit 0 and 2 cells of one trial key, so `bench run` trained cosface twice under soft and arc
    grid = write(in_tmp, BASE + "grid:\n  loss:\n    - {label: soft, loss: softmax}\n"
                                "    - {label: arc, loss: {name: arcface, m: 0.5}}\n")
    assert main(["run", "--grid", str(grid), "--validate-only", "--set", "loss=cosface"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert ("--set loss=cosface: makes these cells one trial: {soft, arc}; the grid's axis loss varies loss, loss.m, "
            "which --set loss=cosface sets the same in every cell") in err, err
    assert not (in_tmp / "mlflow.db").exists()
