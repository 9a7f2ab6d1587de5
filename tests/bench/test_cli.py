"""The CLI end to end, in process: bench run -> MLflow store -> bench report; bench list; bad grids."""

from __future__ import annotations

import pytest

from bench.cli import main
from bench.spec import TrialSpec

GRID = """
name: tiny
base: {dataset: tiny-blobs, backbone: lenet++, embedding_dim: 4, epochs: 3, batch_size: 16,
       optimizer: {name: adam, lr: 0.003}}
grid:
  loss:
    - {label: softmax, loss: softmax}
    - {label: cosface, loss: {name: cosface, s: 10.0, m: 0.1}}
seeds: [0, 1]
"""


def test_run_logs_one_finished_run_per_loss_and_seed(in_tmp, tiny_dataset, capsys):
    (in_tmp / "tiny.yaml").write_text(GRID)
    assert main(["run", "--grid", "tiny.yaml", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "| loss" in out and "softmax" in out and "cosface" in out

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{in_tmp / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["tiny"], filter_string="tags.`marginbench.role` = 'trial'")
    assert len(runs) == 4 and set(runs["status"]) == {"FINISHED"}
    assert sorted(zip(runs["tags.label.loss"], runs["params.seed"], strict=True)) == [
        ("cosface", "0"), ("cosface", "1"), ("softmax", "0"), ("softmax", "1")]
    # the params are the whole spec and round-trip to it
    row = runs.iloc[0]
    params = {k[len("params."):]: v for k, v in row.items() if k.startswith("params.") and v is not None}
    spec = TrialSpec.from_params(params)
    assert spec.epochs == 3 and spec.backbone == "lenet++"
    # one value per epoch for each metric
    client = mlflow.tracking.MlflowClient()
    for metric in ("train_loss", "train_acc", "test_acc"):
        history = client.get_metric_history(row["run_id"], metric)
        assert sorted(m.step for m in history) == [0, 1, 2]
    assert row["tags.git_commit"] and row["tags.torch_version"] and row["tags.device_name"]

    capsys.readouterr()
    assert main(["report", "--grid", "tiny.yaml"]) == 0
    table = capsys.readouterr().out
    assert table.count("(n=2)") >= 4  # two rows x (train, test), each over two seeds


def test_rerun_skips_finished_trials(in_tmp, tiny_dataset, capsys):
    (in_tmp / "tiny.yaml").write_text(GRID.replace("seeds: [0, 1]", "seeds: [0]"))
    assert main(["run", "--grid", "tiny.yaml", "--no-progress", "--set", "epochs=1"]) == 0
    capsys.readouterr()
    assert main(["run", "--grid", "tiny.yaml", "--no-progress", "--set", "epochs=1"]) == 0
    assert capsys.readouterr().out.count("already finished") == 2


def test_bad_grid_exits_2_before_training(in_tmp, tiny_dataset, capsys):
    (in_tmp / "bad.yaml").write_text(GRID.replace("loss: softmax", "loss: sofmax"))
    assert main(["run", "--grid", "bad.yaml"]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml: grid.loss[0].loss: Unknown loss 'sofmax'. Did you mean 'softmax'" in err
    assert not (in_tmp / "mlflow.db").exists()  # nothing half-written


@pytest.mark.parametrize("kind,expected", [("losses", "cosface"), ("backbones", "lenet++"), ("datasets", "mnist")])
def test_list_shows_entries_with_parameters(capsys, kind, expected):
    assert main(["list", kind]) == 0
    out = capsys.readouterr().out
    assert expected in out and "params:" in out


def test_list_losses_shows_defaults(capsys):
    main(["list", "losses", "cosface"])
    assert "s=64.0, m=0.35" in capsys.readouterr().out


def test_list_backbones_under_the_timm_prefix_lists_the_timm_models_that_match(capsys):
    # timm answers the names below 'timm/': the pattern lists them, not only the family's summary line.
    main(["list", "backbones", "timm/mobilenetv3_small_1*"])
    out = capsys.readouterr().out
    assert "timm/mobilenetv3_small_100" in out and "timm/mobilenetv3_small_075" not in out


def test_a_reader_that_leaves_the_pipe_ends_the_command_quietly():
    # `bench list backbones 'timm/*' | head -1`: the reader is gone before bench writes (closed here before the
    # child has imported torch), as a shell tool bench stops with SIGPIPE's status and no traceback
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "bench", "list", "backbones", "timm/*"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and "Traceback" not in err and err == ""


def test_list_with_a_pattern_nothing_matches_says_so(capsys):
    # The timm family line is not an answer to a pattern that cannot name a timm model.
    main(["list", "backbones", "nothing*"])
    assert capsys.readouterr().out.strip() == "no backbones match 'nothing*'"
    main(["list", "backbones", "lenet*"])
    assert "timm/<name>" not in capsys.readouterr().out


@pytest.mark.parametrize("env, expected", [({"MARGINBENCH_GIT_COMMIT": "abc123"}, "abc123"), ({}, "unknown")])
def test_git_commit_without_git_comes_from_the_environment(monkeypatch, env, expected):
    # a copy of the checkout without .git (sent to a GPU machine) still tags its runs with the commit it was
    import subprocess

    from bench import tracking

    def no_repository(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 128, stdout="", stderr="fatal: not a git repository")

    monkeypatch.setattr(tracking.subprocess, "run", no_repository)
    monkeypatch.delenv("MARGINBENCH_GIT_COMMIT", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    tracking._git_commit.cache_clear()
    try:
        assert tracking._git_commit() == expected
    finally:
        tracking._git_commit.cache_clear()


def test_the_default_stores_in_the_checkout_are_ignored_by_git():
    """`make quickstart` runs in the repository root: the stores it writes there (MLflow's, Optuna's journal and
    its lock, the checkpoints) must not show up in `git status`."""
    import shutil
    import subprocess
    from pathlib import Path

    from bench.study import DEFAULT_STORAGE_NAME

    root = Path(__file__).resolve().parents[2]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    names = ["mlflow.db", "mlartifacts/x", DEFAULT_STORAGE_NAME, DEFAULT_STORAGE_NAME + ".lock",
             ".bench/checkpoints/quickstart/k.pt"]
    done = subprocess.run(["git", "check-ignore", "--no-index", *names], cwd=root, capture_output=True, text=True)
    assert sorted(done.stdout.split()) == sorted(names)


@pytest.mark.parametrize("argv, message", [
    # before: --workers 0 started an MLflow server anyway; a timeout <= 0 gave up at once with "did not answer
    # within 0 s"; --max-trials 0 or -1 trained nothing and exited 0; --worker-index -3 ran with that index
    (["ui", "--workers", "0"], "argument --workers: must be an integer >= 1, but got '0'"),
    (["ui", "--workers", "two"], "argument --workers: must be an integer >= 1, but got 'two'"),
    (["ui", "--timeout", "0"], "argument --timeout: must be a number of seconds > 0 (e.g. 120), but got '0'"),
    (["ui", "--timeout", "-1"], "argument --timeout: must be a number of seconds > 0 (e.g. 120), but got '-1'"),
    (["ui", "--timeout", "nan"], "argument --timeout: must be a number of seconds > 0 (e.g. 120), but got 'nan'"),
    (["worker", "--grid", "g.yaml", "--max-trials", "0"],
     "argument --max-trials: must be an integer >= 1, but got '0'"),
    (["worker", "--grid", "g.yaml", "--max-trials", "-1"],
     "argument --max-trials: must be an integer >= 1, but got '-1'"),
    (["worker", "--grid", "g.yaml", "--worker-index", "-3"],
     "argument --worker-index: must be an integer >= 0, but got '-3'"),
])
def test_counts_and_timeouts_out_of_range_are_refused_when_parsing(capsys, argv, message):
    from bench.cli import build_parser

    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_the_lowest_valid_counts_and_timeouts_are_taken():
    from bench.cli import build_parser

    args = build_parser().parse_args(["ui", "--workers", "1", "--timeout", "0.5"])
    assert (args.workers, args.timeout) == (1, 0.5)
    args = build_parser().parse_args(["worker", "--grid", "g.yaml", "--max-trials", "1", "--worker-index", "0"])
    assert (args.max_trials, args.worker_index) == (1, 0)


def test_bench_ui_help_shows_the_timeouts_default(capsys):
    from bench.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["ui", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps help lines at the terminal's width
    assert "seconds to wait for the server to answer (default: 120)" in out
    assert build_parser().parse_args(["ui"]).timeout == 120


def test_the_readme_describes_the_server_bench_ui_starts(in_tmp, monkeypatch, capsys):
    # before: the README called it `mlflow ui --backend-store-uri sqlite:///mlflow.db`; it is `mlflow server`
    # with an absolute store, the artifacts folder beside it, a host, a port and workers
    import re
    import sys
    from pathlib import Path

    from mlflow.tracking import MlflowClient

    from bench.commands import ui

    MlflowClient(f"sqlite:///{in_tmp / 'mlflow.db'}").create_experiment("tiny")
    started = []

    class Exited:  # a server that exits at once: bench ui reports it and returns
        pid, returncode = 0, 1

        def poll(self):
            return 1

        def wait(self, timeout=None):
            return 1

    monkeypatch.setattr(ui.subprocess, "Popen", lambda cmd, **kwargs: started.append(cmd) or Exited())
    monkeypatch.setattr(ui, "_port_in_use", lambda host, port: False)
    assert main(["ui"]) == 1
    cmd = started[0]
    artifacts = (in_tmp / "mlartifacts").resolve().as_uri()
    assert cmd == [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                   f"sqlite:///{(in_tmp / 'mlflow.db').resolve()}", "--default-artifact-root", artifacts,
                   "--artifacts-destination", artifacts, "--host", "127.0.0.1", "--port", "5000", "--workers", "1"]
    readme = " ".join((Path(__file__).resolve().parents[2] / "README.md").read_text().split())
    described = re.search(r"\(`bench ui` starts an MLflow tracking server, `([^`]*)`", readme)
    assert described is not None and "mlflow ui" not in readme
    words = described.group(1).split()
    assert words[:2] == ["mlflow", "server"]
    assert [w for w in words if w.startswith("--")] == [c for c in cmd if c.startswith("--")]
    assert dict(zip(words[2::2], words[3::2], strict=True))["--port"] == "5000"


def test_a_set_error_through_the_cli_names_the_option_as_typed(in_tmp, capsys):
    # before: "grid.yaml: --set: epochs must be ..." and "grid.yaml: --set.loss: ..."
    (in_tmp / "g.yaml").write_text("name: g\nbase: {dataset: digits, backbone: lenet++, epochs: 1}\n")
    for typed, message in (("epochs=abc", "epochs must be a positive integer, but got 'abc'"),
                           ("loss.m=0.5", "loss 'softmax' has no parameter 'm'")):
        assert main(["run", "--grid", "g.yaml", "--validate-only", "--set", "epochs=1", "--set", typed]) == 2
        assert f"g.yaml: --set {typed}: {message}" in capsys.readouterr().err


def test_set_takes_a_whole_component_as_a_yaml_mapping(in_tmp, capsys):
    # before: "--set.loss: Unknown loss \"{'name': 'arcface', 'm': 0.5}\""
    (in_tmp / "g.yaml").write_text("name: g\nbase: {dataset: digits, backbone: lenet++, epochs: 1}\n")
    assert main(["run", "--grid", "g.yaml", "--validate-only", "--set", "loss={name: arcface, m: 0.5}"]) == 0
    from bench.grid import load_grid

    spec = load_grid(in_tmp / "g.yaml", overrides={"loss": {"name": "arcface", "m": 0.5}}).cells[0].spec
    assert f"arcface seed=0  [{spec.replace(seed=0).key()}]" in capsys.readouterr().out
    assert (spec.loss, dict(spec.loss_params)) == ("arcface", {"m": 0.5})


def test_bench_ui_says_a_fractional_timeout_as_given(in_tmp, monkeypatch, capsys):
    # before: "{timeout:.0f}" printed --timeout 0.5 as "within 0 s"
    import subprocess
    import sys

    import bench.commands.ui as ui
    import bench.tracking
    from bench.cli import main

    (in_tmp / "mlflow.db").write_bytes(b"")
    popen = subprocess.Popen
    monkeypatch.setattr(ui, "_experiment", lambda uri, study: ("0", "experiment 0"))
    monkeypatch.setattr(bench.tracking, "artifact_root", lambda uri: None)
    monkeypatch.setattr(ui, "_wait_ready", lambda url, proc, timeout: False)  # a server that never answers
    monkeypatch.setattr(ui.subprocess, "Popen", lambda cmd, **kw: popen([sys.executable, "-c", "pass"], **kw))
    assert main(["ui", "--port", "0", "--timeout", "0.5"]) == 1
    assert " within 0.5 s:" in capsys.readouterr().err
