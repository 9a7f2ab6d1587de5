"""Shared mode: two workers on a PostgreSQL-backed Optuna study and an MLflow tracking server."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from optuna.trial import TrialState

from tests.sweeps.conftest import DIGITS_BASE, bench, bench_env, mlflow_children, optuna_trials

GRID = "name: shared\n" + DIGITS_BASE + """\
  epochs: 2
grid:
  loss:
    - {label: softmax, loss: softmax}
    - {label: cosface, loss: {name: cosface, s: 10.0, m: 0.1}}
    - {label: arcface, loss: {name: arcface, s: 10.0, m: 0.2}}
seeds: [0, 1]
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(databases, tmp_path):
    """An MLflow tracking server on a free local port, its runs in PostgreSQL, artifacts proxied to tmp_path."""
    port = _free_port()
    backend = databases[1].replace("postgresql://", "postgresql+psycopg2://")
    log = open(tmp_path / "mlflow-server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
                             "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"], env=bench_env(), stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 150
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the MLflow server did not start:\n" + (tmp_path / "mlflow-server.log").read_text())
        time.sleep(1)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_two_workers_share_a_postgres_study_and_run_each_trial_once(tmp_path, write_grid, databases, mlflow_server):
    grid = write_grid(GRID)
    storage = databases[0]
    shared = ["--storage", storage, "--tracking-uri", mlflow_server, "--no-progress"]
    # "another machine": a worker that waits for the study, started before `bench run` prepares it
    joined_log = open(tmp_path / "worker.log", "w")
    joined = subprocess.Popen([sys.executable, "-m", "bench", "worker", "--grid", str(grid), "--worker-index", "1",
                               "--wait", "200", *shared], cwd=tmp_path, env=bench_env(), stdout=joined_log,
                              stderr=subprocess.STDOUT)
    run = bench("run", "--grid", str(grid), "--workers", "1", *shared, cwd=tmp_path, timeout=360)
    assert joined.wait(timeout=120) == 0, (tmp_path / "worker.log").read_text()
    joined_log.close()

    trials = optuna_trials("shared", storage)
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials), run.stdout
    assert len({t.user_attrs["marginbench.key"] for t in trials}) == 6  # each trial exactly once
    owners = {t.system_attrs["marginbench.owner"]["pid"] for t in trials}
    assert len(owners) == 2, "both workers should have run trials"  # the shared queue fed both
    runs = mlflow_children("shared", mlflow_server)
    assert sorted(r.data.tags["marginbench.trial_key"] for r in runs) == sorted(t.user_attrs["marginbench.key"]
                                                                                for t in trials)
    assert all(r.info.status == "FINISHED" for r in runs)
    parents = {r.data.tags["mlflow.parentRunId"] for r in runs}
    assert len(parents) == 1  # one parent run per study, found by both workers
    # each trial's own line only: MLflow's "View run ... at: http://..." per run is off in bench's processes
    assert "View run" not in run.stdout and "View run" not in (tmp_path / "worker.log").read_text()


@pytest.mark.postgres
@pytest.mark.timeout(300)
@pytest.mark.parametrize("older_study_run", [False, True], ids=["new", "older-without-counts-tag"])
def test_workers_closing_a_study_at_the_same_moment_all_succeed(mlflow_server, older_study_run):
    """Every worker that finds the queue empty closes the study's run. On a PostgreSQL-backed server a tag's
    first write is a look-then-insert, so workers finishing together raced to a unique-key error; a study
    run made by an earlier version, without the counts tag, must close as well."""
    import threading

    from mlflow.tracking import MlflowClient

    from bench.tracking import COUNTS_TAG, ROLE_TAG, STUDY_TAG, StudyTracker

    workers = 8
    for attempt in range(6):
        study = f"close-race-{older_study_run}-{attempt}"
        if older_study_run:
            client = MlflowClient(mlflow_server)
            client.create_run(client.create_experiment(study), tags={ROLE_TAG: "study", STUDY_TAG: study})
        trackers = [StudyTracker(study, mlflow_server) for _ in range(workers)]
        assert len({t.parent_run_id for t in trackers}) == 1
        assert (COUNTS_TAG in trackers[0].client.get_run(trackers[0].parent_run_id).data.tags) != older_study_run
        barrier, errors = threading.Barrier(workers), []

        def close(tracker: StudyTracker, barrier: threading.Barrier, errors: list[Exception]) -> None:
            barrier.wait()
            try:
                tracker.close({"finished": 6})
            except Exception as err:  # noqa: BLE001 - collected and reported below
                errors.append(err)

        threads = [threading.Thread(target=close, args=(t, barrier, errors)) for t in trackers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, f"study {study}: {errors[0]!r}"
        parent = trackers[0].client.get_run(trackers[0].parent_run_id)
        assert parent.data.tags[COUNTS_TAG] == "6 finished" and parent.info.status == "FINISHED"


@pytest.mark.postgres
@pytest.mark.timeout(120)
def test_workers_opening_a_new_database_at_the_same_moment_all_succeed(databases):
    """On a new database every process that opens the storage creates Optuna's tables; two at once (workers
    started together, or `bench run` and a worker waiting for it) collided in PostgreSQL's catalog and one
    died with a UniqueViolation on pg_type_typname_nsp_index."""
    storage = databases[0]
    start = time.time() + 10.0  # after every interpreter has imported what it needs
    code = ("import sys, time; import optuna.storages, psycopg2; from bench.study import open_storage; "
            f"late = time.time() - {start}; time.sleep(max(0.0, -late)); open_storage(sys.argv[1]); "
            "print('late by', late)")
    procs = [subprocess.Popen([sys.executable, "-c", code, storage], env=bench_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(4)]
    outputs = [p.communicate(timeout=100)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(outputs)
