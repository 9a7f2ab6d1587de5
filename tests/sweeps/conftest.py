"""Helpers for the sweep tests: grids written to the test's folder, `bench` in a subprocess, the two stores."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: A grid on scikit-learn digits at 8x8 (registered in every process, unlike the tests' tiny-blobs).
DIGITS_BASE = """\
base:
  dataset: {name: digits, image_size: 8, test_fraction: 0.5}
  backbone: lenet++
  embedding_dim: 8
  batch_size: 64
  eval_batch_size: 512
"""


@pytest.fixture
def write_grid(tmp_path):
    """``write_grid(text, name="grid.yaml")`` writes a grid file in the test's folder and returns its path."""

    def write(text: str, name: str = "grid.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


def bench_env(threads: int = 1) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MARGINBENCH_STORAGE", None)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = str(threads)
    env["MLFLOW_ENABLE_ASYNC_LOGGING"] = "false"
    return env


def bench(*args: str, cwd: Path, timeout: float = 240, check: bool = True) -> subprocess.CompletedProcess:
    """Runs ``python -m bench ARGS`` in ``cwd`` and returns the finished process (stdout and stderr captured)."""
    proc = subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, env=bench_env(), capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"bench {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def optuna_trials(study: str, storage: str) -> list:
    import optuna

    from bench.study import open_storage

    return optuna.load_study(study_name=study, storage=open_storage(storage, heartbeat=False)).get_trials()


def mlflow_children(study: str, tracking_uri: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(study)
    return client.search_runs([exp.experiment_id], filter_string="tags.`marginbench.role` = 'trial'",
                              max_results=1000)


@pytest.fixture(autouse=True)
def no_store_environment(monkeypatch):
    """The stores come from the test's folder, never from the caller's environment."""
    monkeypatch.delenv("MARGINBENCH_STORAGE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: the sweeps put several processes on 2 cores, where spinning threads cost 10x."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


#: The PostgreSQL server of the `postgres` tests (trust authentication).
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "test"}


def _admin():
    """A connection to `PG` in autocommit mode; the test is skipped when psycopg2 or the server is missing."""
    psycopg2 = pytest.importorskip("psycopg2")
    try:
        conn = psycopg2.connect(connect_timeout=3, **PG)
    except psycopg2.OperationalError as err:
        pytest.skip(f"no PostgreSQL server answers at {PG['host']}:{PG['port']} ({str(err).strip()}); "
                    f"the postgres tests need one")
    conn.autocommit = True
    return conn


@pytest.fixture
def databases():
    """Two fresh databases (Optuna's and MLflow's), dropped afterwards."""
    conn = _admin()
    names = [f"mb_sweeps_{kind}_{uuid.uuid4().hex[:8]}" for kind in ("optuna", "mlflow")]
    with conn.cursor() as cur:
        for name in names:
            cur.execute(f"CREATE DATABASE {name}")
    base = f"postgresql://{PG['user']}@{PG['host']}:{PG['port']}/"
    yield [base + n for n in names]
    with conn.cursor() as cur:
        for name in names:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    conn.close()
