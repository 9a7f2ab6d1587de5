"""`bench perf` runs on a tiny case (a benchmark, not a timed test: no speed is asserted here)."""

from __future__ import annotations

import json

import pytest
import torch

from bench.cli import main
from tests.conftest import write_tiny_mnist


def test_bench_perf_prints_both_throughputs_and_their_ratio(in_tmp, capsys):
    out_json = in_tmp / "perf.json"
    assert main(["perf", "--workload", "lenet", "--epochs", "1", "--batch-size", "512", "--logging",
                 "--logging-epochs", "2", "--head", "--head-classes", "3000", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "bare img/s" in out and "harness img/s" in out and "MLflow logging" in out and "CosFace head" in out
    report = json.loads(out_json.read_text())
    lenet = report["workloads"][0]
    assert lenet["bare_images_per_second"] > 0 and lenet["harness_images_per_second"] > 0
    assert abs(lenet["ratio"] - lenet["harness_images_per_second"] / lenet["bare_images_per_second"]) < 1e-9
    assert 0 <= report["logging"]["logging_share_in_trial"] < 1
    assert report["head"]["loss_rel_diff"] < 1e-5 and report["head"]["finite"] == 1.0
    for name in ("plain", "chunked"):  # float32 against the plain head in float64
        assert report["head"][f"{name}_loss_err_vs_fp64"] < 1e-4
        assert report["head"][f"{name}_grad_w_err_vs_fp64"] < 1e-5
        assert report["head"][f"{name}_grad_x_err_vs_fp64"] < 1e-5


def test_a_section_that_fails_leaves_the_json_of_the_sections_before_it_and_the_error(in_tmp, monkeypatch):
    # a GPU step that runs out of memory (or is killed at the device's time limit) in its second section kept
    # nothing: the JSON was written only at the end
    import bench.perf

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (stand-in)")

    monkeypatch.setattr(bench.perf, "head_memory", out_of_memory)
    out_json = in_tmp / "perf.json"
    with pytest.raises(RuntimeError, match="stand-in"):
        main(["perf", "--workload", "lenet", "--epochs", "1", "--head", "--json", str(out_json)])
    report = json.loads(out_json.read_text())
    assert [w["workload"] for w in report["workloads"]] == ["lenet"] and report["workloads"][0]["ratio"] > 0
    assert report["error"] == "RuntimeError: CUDA out of memory (stand-in)" and "head" not in report
    assert [p.name for p in in_tmp.iterdir() if "perf.json" in p.name] == ["perf.json"]  # no .tmp left


def test_bench_perf_jpeg_trains_from_jpeg_files_and_from_the_device(in_tmp, capsys):
    out_json = in_tmp / "perf.json"
    assert main(["perf", "--workload", "lenet", "--epochs", "1", "--jpeg", "--loader-workers", "1",
                 "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "JPEG feed" in out and "from JPEG files" in out
    jpeg = json.loads(out_json.read_text())["jpeg"]
    assert jpeg["images"] == 256 and jpeg["loader_workers"] == 1 and jpeg["jpeg_bytes_per_image"] > 0
    assert jpeg["resident_images_per_second"] > 0 and jpeg["jpeg_images_per_second"] > 0
    assert abs(jpeg["ratio"] - jpeg["jpeg_images_per_second"] / jpeg["resident_images_per_second"]) < 1e-9


def test_bench_perf_fused_times_fused_trials_against_one_alone(in_tmp, capsys):
    out_json = in_tmp / "perf.json"
    assert main(["perf", "--fused", "2", "--epochs", "1", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "2 fused" in out and "bare img/s" not in out  # --fused alone runs no lenet workload
    fused = json.loads(out_json.read_text())["fused"]
    assert fused["trials"] == 2 and fused["alone_images_per_second"] > 0 and fused["fused_images_per_second"] > 0
    assert abs(fused["speedup"] - fused["fused_images_per_second"] / fused["alone_images_per_second"]) < 1e-9


def test_bench_perf_grid_trains_every_cell_with_relative_paths_and_overrides(in_tmp, capsys):
    # The grid's dataset root is relative to the working directory, as for `bench run` (time_grid used to
    # chdir into a temporary folder, where data/mnist is not); two worker processes train the two cells.
    write_tiny_mnist(in_tmp / "data" / "mnist")
    (in_tmp / "g.yaml").write_text(
        "name: perf-grid\nbase: {dataset: {name: mnist, root: data/mnist}, backbone: lenet++, embedding_dim: 2,\n"
        "       epochs: 2, batch_size: 16}\ngrid: {loss: [softmax, cosface]}\nseeds: [0]\n")
    out_json = in_tmp / "perf.json"
    assert main(["perf", "--workload", "lenet", "--epochs", "1", "--grid", "g.yaml", "--workers", "2",
                 "--set", "epochs=1", "--json", str(out_json)]) == 0
    grid = json.loads(out_json.read_text())["grid"]
    assert grid["trials"] == 2 and grid["workers"] == 2 and grid["counts"].get("finished") == 2
    assert "| cosface |" in grid["tables"] and "| softmax |" in grid["tables"]  # the accuracies, to compare runs
    assert "2 trials with 2 workers" in capsys.readouterr().out
    assert not (in_tmp / "mlflow.db").exists()  # a throwaway store, not the folder's


def test_float64_head_reference_is_cosface_by_autograd():
    # The formula `bench perf --head` measures both heads against, checked against autograd through
    # F.cross_entropy in float64 (batch in row blocks of 7, duplicate labels included).
    import torch.nn.functional as F

    from bench.perf import float64_head_reference

    torch.manual_seed(0)
    classes, batch, dim = 300, 40, 16
    w, x, y = torch.randn(classes, dim), torch.randn(batch, dim), torch.randint(0, classes, (batch,))
    loss, (grad_x, grad_w) = float64_head_reference(w, x, y, s=64.0, m=0.35, rows=7)
    W, X = w.double().requires_grad_(), x.double().requires_grad_()
    cos = F.normalize(X, dim=1) @ F.normalize(W, dim=1).T
    expected = F.cross_entropy(64.0 * (cos - 0.35 * F.one_hot(y, classes).double()), y)
    expected.backward()
    assert abs(loss - expected.item()) < 1e-12
    torch.testing.assert_close(grad_x, X.grad, rtol=0, atol=1e-13)
    torch.testing.assert_close(grad_w, W.grad, rtol=0, atol=1e-13)


@pytest.mark.parametrize("flags", [["--fused", "0"], ["--grid", "quickstart", "--fuse", "0"]])
def test_bench_perf_rejects_fewer_than_one_trial_a_program_before_training(in_tmp, capsys, flags):
    assert main(["perf", *flags]) == 2
    out = capsys.readouterr()
    assert f"{flags[-2]} must be >= 1 (1: one trial at a time), but got 0" in out.err and "img/s" not in out.out
    assert list(in_tmp.iterdir()) == []  # no store, no grid run, nothing half-written


def test_lenet_workload_on_a_gpu_reads_mnist_from_mnist_root(tmp_path):
    from bench.perf import workload_spec

    cuda = torch.device("cuda")  # only its type is read: no GPU is needed to build the spec
    spec = workload_spec("lenet", cuda, mnist_root=str(tmp_path))
    assert spec.dataset == "mnist" and spec.dataset_params == {"root": str(tmp_path), "repeat": 6}
    assert workload_spec("lenet", torch.device("cpu"), mnist_root=str(tmp_path)).dataset == "digits"
    assert workload_spec("mobilenet", cuda, mnist_root=str(tmp_path)).dataset == "synthetic-faces"


def test_missing_mnist_for_the_gpu_lenet_workload_stops_naming_the_folder_and_the_option(tmp_path):
    from bench.perf import check_workload_data

    cuda = torch.device("cuda")
    with pytest.raises(SystemExit) as err:
        check_workload_data(["mobilenet", "lenet"], cuda, mnist_root=str(tmp_path / "nowhere"))
    message = str(err.value)
    assert "lenet workload on cuda" in message and "nowhere" in message and "--mnist-root" in message
    assert "train-images-idx3-ubyte" in message
    write_tiny_mnist(tmp_path / "mnist")
    check_workload_data(["lenet", "mobilenet", "lenet"], cuda, mnist_root=str(tmp_path / "mnist"))  # no exit
    check_workload_data(["lenet"], torch.device("cpu"), mnist_root=str(tmp_path / "nowhere"))  # digits: no files


def test_bench_perf_checks_the_workload_data_before_training(in_tmp, capsys, monkeypatch):
    monkeypatch.setattr("bench.trial.pick_device", lambda requested=None: torch.device("cuda"))
    assert main(["perf", "--fused", "2", "--mnist-root", "no-such-folder"]) == 2
    out = capsys.readouterr()
    assert "no-such-folder" in out.err and "--mnist-root" in out.err and "img/s" not in out.out
    assert list(in_tmp.iterdir()) == []  # nothing trained, nothing written


def test_bench_perf_grid_with_missing_data_stops_before_the_workloads_train(in_tmp, capsys):
    (in_tmp / "g.yaml").write_text("name: g\nbase: {dataset: {name: mnist, root: no-mnist-here}, backbone: lenet++}\n"
                                   "grid: {loss: [softmax]}\n")
    assert main(["perf", "--workload", "lenet", "--grid", "g.yaml"]) == 2
    out = capsys.readouterr()
    assert "invalid grid" in out.err and "base.dataset" in out.err and "no-mnist-here" in out.err
    assert "img/s" not in out.out and sorted(p.name for p in in_tmp.iterdir()) == ["g.yaml"]


def test_bench_perf_grid_with_a_bad_study_key_stops_before_the_workloads_train(in_tmp, capsys):
    # before: the grid's check skipped its study keys, so the workloads trained and time_grid then failed with a
    # traceback (StudyConfig.from_grid inside run_study); now one listing with the grid's own problem, exit 2
    (in_tmp / "g.yaml").write_text("name: g\nbase: {dataset: digits, backbone: lenet++}\n"
                                   "grid: {loss: [softmax, arcfce]}\nworkers: 0\n")
    assert main(["perf", "--workload", "lenet", "--grid", "g.yaml"]) == 2
    out = capsys.readouterr()
    assert out.err.startswith(f"bench: invalid grid: {in_tmp / 'g.yaml'}: 2 problems:\n") and "Traceback" not in out.err
    assert [line.split(": ")[0] for line in out.err.splitlines()[1:]] == ["  grid.loss[1].loss", "  workers"]
    assert "img/s" not in out.out and sorted(p.name for p in in_tmp.iterdir()) == ["g.yaml"]


def test_bare_loop_scales_the_loss_in_fp16_as_the_harness_does(tiny_dataset, monkeypatch):
    # "Same precision" on both sides: an fp16 loop without loss scaling is not a correct fp16 loop, and skipping
    # the scaler's per-step work would flatter the bare side. One GradScaler step per training step, each side.
    from bench.perf import bare_images_per_second, harness_images_per_second
    from bench.spec import TrialSpec

    steps = []
    step = torch.amp.GradScaler.step
    monkeypatch.setattr(torch.amp.GradScaler, "step", lambda self, opt, *a, **k: steps.append(self.is_enabled())
                        or step(self, opt, *a, **k))
    spec = TrialSpec(dataset="tiny-blobs", backbone="lenet++", loss="cosface", embedding_dim=4, batch_size=40,
                     epochs=1, precision="fp16")
    cpu = torch.device("cpu")
    bare_images_per_second(spec, cpu)
    bare = list(steps)
    steps.clear()
    harness_images_per_second(spec, cpu)
    assert bare == steps == [True] * 4  # 80 images in batches of 40: a warm-up epoch and a timed one


def test_logging_overhead_charges_closing_the_run_once(in_tmp, monkeypatch):
    # The run's closing tags take 0.3 s here: they belong to opening/closing the run, not to the trial loop,
    # and the total share counts them once (it used to count finish's flush and tags in both).
    import time

    from mlflow.tracking import MlflowClient

    from bench.perf import logging_overhead

    log_batch = MlflowClient.log_batch

    def slow_tags(self, run_id, *args, **kwargs):
        if kwargs.get("tags"):
            time.sleep(0.3)
        return log_batch(self, run_id, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", slow_tags)
    lo = logging_overhead(epochs=1, device="cpu")
    assert lo["logging_seconds_in_trial"] < 0.3 <= lo["run_open_close_seconds"]
    total = lo["logging_seconds_in_trial"] + lo["run_open_close_seconds"]
    assert lo["logging_share_total"] == pytest.approx(total / lo["wall_seconds"])
    assert total <= lo["wall_seconds"]


def test_time_grid_counts_the_sampled_trials_of_a_search_grid(in_tmp, tiny_dataset):
    # One cell, one seed, three sampled trials: three trials ran (it used to say 1, the cells x seeds).
    from bench.perf import time_grid

    (in_tmp / "s.yaml").write_text(
        "name: perf-search\nbase: {dataset: tiny-blobs, backbone: lenet++, embedding_dim: 4, epochs: 1,\n"
        "       batch_size: 40, loss: {name: cosface, s: 10.0, m: 0.1}}\ngrid: {loss: [cosface]}\nseeds: [0]\n"
        "search: {loss.m: {type: uniform, low: 0.05, high: 0.3}}\nn_trials: 3\nsampler: {type: random, seed: 0}\n")
    g = time_grid("s.yaml")
    assert g["counts"]["finished"] == 3 and g["trials"] == 3


SEARCH = ("name: perf-search\nbase: {dataset: tiny-blobs, backbone: lenet++, embedding_dim: 4, epochs: 1,\n"
          "       batch_size: 40, loss: {name: cosface, s: 10.0, m: 0.1}}\ngrid: {loss: [cosface]}\nseeds: [0]\n"
          "search: {loss.m: {type: uniform, low: 0.05, high: 0.3}}\nn_trials: 2\nsampler: {type: random, seed: 0}\n")


def test_bench_perf_seeds_on_a_search_grid_exit_2_before_anything_trains(in_tmp, tiny_dataset, capsys):
    # before: the lenet workload trained, then time_grid's run_study failed in a GridError traceback (exit 1) on
    # "/tmp/marginbench-grid-.../s.yaml: seeds: a search: grid samples hyperparameters with one seed", a
    # temporary copy of the grid, gone by then, and a key the user never wrote
    (in_tmp / "s.yaml").write_text(SEARCH)
    assert main(["perf", "--workload", "lenet", "--grid", "s.yaml", "--seeds", "0,1", "--json", "p.json"]) == 2
    out = capsys.readouterr()
    assert out.err == (f"bench perf: --seeds 0,1 with --grid {in_tmp / 's.yaml'}: the grid has search: ranges "
                       "(loss.m), whose trials sample hyperparameters with one seed, so 2 seeds give no seed noise to "
                       "measure; drop --seeds (or give one seed, --seeds 0,), or time a grid without search: over "
                       "seeds\n")
    assert "img/s" not in out.out and sorted(p.name for p in in_tmp.iterdir()) == ["s.yaml"]
    from bench.perf import time_grid

    with pytest.raises(ValueError, match=r"s\.yaml: seeds \[0, 1\]: the grid has search: ranges \(loss\.m\)"):
        time_grid("s.yaml", seeds=[0, 1])
    # one seed in place of the grid's is a search grid still: its sampled trials run with that seed
    assert main(["perf", "--grid", "s.yaml", "--seeds", "3,", "--json", "p.json"]) == 0
    grid = json.loads((in_tmp / "p.json").read_text())["grid"]
    assert grid["seeds"] == [3] and grid["counts"]["finished"] == 2 and grid["trials"] == 2


@pytest.mark.parametrize("flag", ["--repeats", "--epochs", "--batch-size", "--logging-epochs"])
def test_bench_perf_rejects_counts_below_one_before_training(in_tmp, capsys, flag):
    # --repeats 0 used to time nothing and end in ZeroDivisionError; the others in a SpecError traceback
    with pytest.raises(SystemExit) as exit_:
        main(["perf", flag, "0"])
    assert exit_.value.code == 2
    out = capsys.readouterr()
    assert f"{flag}: must be an integer >= 1, but got '0'" in out.err and "img/s" not in out.out


@pytest.mark.parametrize("value, message", [("1", "a head needs at least 2 classes, but got '1'"),
                                            ("0", "must be an integer >= 1, but got '0'")])
def test_bench_perf_head_classes_below_two_exit_2(in_tmp, capsys, value, message):
    with pytest.raises(SystemExit) as exit_:
        main(["perf", "--head", "--head-classes", value])
    assert exit_.value.code == 2 and f"--head-classes: {message}" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--grid", "quickstart", "--workers", "0"], "--workers: must be an integer >= 1, but got '0'"),
    (["--grid", "quickstart", "--workers", "-1"], "--workers: must be an integer >= 1, but got '-1'"),
    (["--jpeg", "--loader-workers", "-1"], "--loader-workers: must be an integer >= 0, but got '-1'"),
])
def test_bench_perf_rejects_bad_worker_counts_when_parsing(capsys, argv, message):
    # before: --workers 0 timed a grid that was only enqueued, -1 ran one worker, and --loader-workers -1 ended
    # in torch's DataLoader ValueError (a traceback) after the resident half of the JPEG comparison had trained
    from bench.cli import build_parser

    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["perf", *argv])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.timeout(300)
def test_a_sigterm_to_bench_perf_grid_cleans_its_temp_store_and_says_so_in_the_json(tmp_path):
    # `bench perf --grid` trains into a throwaway store in the temp folder. A SIGTERM (`kill PID`, a scheduler's
    # time limit) ended the process on the spot: the store, checkpoints and all (11 MB for digits), stayed in
    # the temp folder for good, and --json was never written to say the grid section was cut short.
    import contextlib
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from tests.sweeps.conftest import DIGITS_BASE, bench_env

    (tmp_path / "g.yaml").write_text("name: perf-term\n" + DIGITS_BASE + "  epochs: 2000\n"
                                     "grid:\n  loss: [softmax, cosface]\nseeds: [0]\n")
    temp = tmp_path / "temp"
    temp.mkdir()
    env = {**bench_env(), "TMPDIR": str(temp)}
    log = open(tmp_path / "perf.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "bench", "perf", "--grid", "g.yaml", "--workers", "2",
                             "--json", "perf.json"], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    children: list[int] = []
    try:
        deadline = time.monotonic() + 180
        # trials are training once a checkpoint is in the store (the worker process is up by then too)
        while time.monotonic() < deadline and not list(temp.glob("marginbench-grid-*/.bench/checkpoints/*/*.pt")):
            assert proc.poll() is None, (tmp_path / "perf.log").read_text()
            time.sleep(0.5)
        assert list(temp.glob("marginbench-grid-*")), "no grid store in the temp folder:\n" + \
            (tmp_path / "perf.log").read_text()
        children = [int(pid) for f in Path(f"/proc/{proc.pid}/task").glob("*/children")
                    for pid in f.read_text().split()]
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=90)  # a bound against hanging, not a speed target
        except subprocess.TimeoutExpired:
            pytest.fail("`bench perf --grid` was still running 90 s after its SIGTERM")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in children:  # the worker process (it also gets SIGKILL when bench perf dies, on Linux)
            with contextlib.suppress(OSError):
                if b"worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
        log.close()
    assert list(temp.glob("marginbench-grid-*")) == [], (tmp_path / "perf.log").read_text()
    report = json.loads((tmp_path / "perf.json").read_text())
    assert report["error"].startswith("Terminated") and "grid" not in report
