"""``bench run --fuse K``: a worker pops up to K trials and trains the fusable ones as one program; every
trial still gets its own Optuna outcome and MLflow run, equal to the unfused study's."""

from __future__ import annotations

import pytest
from optuna.trial import TrialState

from bench.grid import load_grid
from bench.workers import run_study
from tests.sweeps.conftest import DIGITS_BASE, bench, mlflow_children, optuna_trials

GRID = """\
name: {name}
base: {{dataset: tiny-blobs, backbone: lenet++, embedding_dim: 4, epochs: 2, batch_size: 16, eval_batch_size: 64}}
grid:
  loss:
    - {{label: softmax, loss: softmax}}
    - {{label: cosface, loss: {{name: cosface, s: 10.0, m: 0.1}}, optimizer: {{name: sgd, lr: 0.05, momentum: 0.9}}}}
    - {{label: exploding, loss: softmax, optimizer: {{name: adam, lr: 1.0e+30}}}}
    - {{label: big-batch, loss: softmax, batch_size: 32}}
seeds: [0]
"""


def test_fused_study_records_every_trial_like_the_unfused_one(in_tmp, tiny_dataset, write_grid):
    lines: list[str] = []
    fused = run_study(load_grid(write_grid(GRID.format(name="fused"), "fused.yaml")), progress=False, fuse=4,
                      echo=lines.append)
    plain = run_study(load_grid(write_grid(GRID.format(name="plain"), "plain.yaml")), progress=False,
                      echo=lambda s: None)
    counts = {"finished": 3, "pruned": 0, "diverged": 1, "failed": 0, "waiting": 0, "running": 0}
    assert fused.counts == plain.counts == counts and fused.ok

    fused_trials = {t.user_attrs["marginbench.labels"]["loss"]: t for t in optuna_trials("fused", fused.storage)}
    plain_trials = {t.user_attrs["marginbench.labels"]["loss"]: t for t in optuna_trials("plain", plain.storage)}
    for label in ("softmax", "cosface", "big-batch"):
        assert fused_trials[label].state == TrialState.COMPLETE
        # float32 rounding in another summation order, amplified by training: one of 40 test images at most
        assert fused_trials[label].value == pytest.approx(plain_trials[label].value, abs=1 / 40 + 1e-9)
    assert fused_trials["exploding"].state == TrialState.FAIL
    assert fused_trials["exploding"].user_attrs["marginbench.diverged"] == \
        plain_trials["exploding"].user_attrs["marginbench.diverged"]

    runs = {r.info.run_id: r for r in mlflow_children("fused", fused.tracking_uri)}
    assert len(runs) == 4
    for label, trial in fused_trials.items():
        run = runs[trial.user_attrs["marginbench.mlflow_run_id"]]
        # batch 32 cannot share the others' steps: it trains alone, untagged
        assert run.data.tags.get("fused_trials") == (None if label == "big-batch" else "3"), label
        assert run.data.tags["marginbench.status"] == ("diverged" if label == "exploding" else "finished")
        if label != "exploding":
            assert len(run.data.metrics) > 0 and "test_acc" in run.data.metrics
    trial_lines = [line for line in lines if line.startswith("trial ")]
    assert len(trial_lines) == 4 and sum(": finished" in line for line in trial_lines) == 3


def test_max_trials_bounds_what_a_fusing_worker_pops(in_tmp, tiny_dataset, write_grid):
    from bench.study import StudyConfig, open_storage, prepare_study, study_summary
    from bench.tracking import StudyTracker
    from bench.workers import WorkerOptions, work

    grid = load_grid(write_grid(GRID.format(name="bounded")))
    storage = str(in_tmp / "optuna.journal")
    tracker = StudyTracker(grid.name, "sqlite:///mlflow.db")
    prepare_study(grid, StudyConfig.from_grid(grid), open_storage(storage),
                  mlflow={"tracking_uri": "sqlite:///mlflow.db", "parent_run_id": tracker.parent_run_id})
    outcomes = work(grid.name, storage, "sqlite:///mlflow.db",
                    WorkerOptions(device="cpu", fuse=4, max_trials=2), echo=lambda s: None)
    assert len(outcomes) == 2
    import optuna

    study = optuna.load_study(study_name=grid.name, storage=open_storage(storage, heartbeat=False))
    assert study_summary(study)["waiting"] == 2


def test_fuse_must_be_positive(in_tmp, write_grid):
    path = write_grid("name: digits\n" + DIGITS_BASE)
    proc = bench("run", "--grid", str(path), "--fuse", "0", cwd=in_tmp, check=False)
    assert proc.returncode != 0 and "--fuse must be >= 1" in proc.stderr
    assert not (in_tmp / "mlflow.db").exists()  # nothing started


def test_spawned_workers_fuse_their_trials(in_tmp, write_grid):
    path = write_grid("name: digits\n" + DIGITS_BASE + """\
  epochs: 1
grid:
  loss: [softmax, cosface, arcface, norm-softmax]
""")
    proc = bench("run", "--grid", str(path), "--workers", "2", "--fuse", "2", "--no-progress", cwd=in_tmp,
                 timeout=400)
    assert "4 finished" in proc.stdout
    runs = mlflow_children("digits", f"sqlite:///{in_tmp / 'mlflow.db'}")
    assert len(runs) == 4
    assert all(r.data.tags.get("fused_trials") == "2" for r in runs), [r.data.tags.get("fused_trials") for r in runs]
    workers = {r.data.tags.get("marginbench.worker", r.data.tags.get("host")) for r in runs}
    assert workers  # each run names where it ran
