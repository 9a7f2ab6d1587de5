"""A two-worker sweep killed with SIGKILL mid-way and run again: every trial finished exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from optuna.trial import TrialState

from tests.sweeps.conftest import DIGITS_BASE, bench, bench_env, mlflow_children, optuna_trials

GRID = "name: killed\n" + DIGITS_BASE + """\
  epochs: 3
grid:
  loss:
    - {label: softmax, loss: softmax}
    - {label: cosface, loss: {name: cosface, s: 10.0, m: 0.1}}
    - {label: arcface, loss: {name: arcface, s: 10.0, m: 0.2}}
seeds: [0, 1]
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_sigkill_mid_sweep_then_rerun_finishes_every_trial_exactly_once(tmp_path, write_grid):
    grid = write_grid(GRID)
    journal = str(tmp_path / "optuna.journal")
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen([sys.executable, "-m", "bench", "run", "--grid", str(grid), "--workers", "2",
                              "--no-progress"], cwd=tmp_path, env=bench_env(), stdout=log, stderr=subprocess.STDOUT)
    # Wait until some trials are done and others are mid-way (a checkpoint written), then kill the sweep.
    deadline = time.monotonic() + 240
    running: list = []
    while time.monotonic() < deadline:
        time.sleep(0.5)
        assert first.poll() is None, (tmp_path / "first.log").read_text()
        if not os.path.exists(journal):
            continue
        try:
            trials = optuna_trials("killed", journal)
        except KeyError:  # the journal is open, the study not made yet
            continue
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        running = [t for t in trials if t.state == TrialState.RUNNING and "marginbench.owner" in t.system_attrs]
        checkpoints = list((tmp_path / ".bench" / "checkpoints" / "killed").glob("*.pt"))
        if len(done) >= 1 and running and checkpoints and len(done) + len(running) < 6:
            break
    else:
        pytest.fail("the sweep never reached mid-way:\n" + (tmp_path / "first.log").read_text())
    first.send_signal(signal.SIGKILL)
    first.wait()
    log.close()
    owners = {t.system_attrs["marginbench.owner"]["pid"] for t in running} | {first.pid}
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in owners) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in owners), "the workers outlived the killed `bench run`"
    after = optuna_trials("killed", journal)
    killed = {t.user_attrs["marginbench.key"] for t in after if t.state == TrialState.RUNNING}
    finished_before = {t.user_attrs["marginbench.key"] for t in after if t.state == TrialState.COMPLETE}
    assert killed and finished_before
    ckpt_dir = tmp_path / ".bench" / "checkpoints" / "killed"
    with_checkpoint = killed & {p.stem for p in ckpt_dir.glob("*.pt")}

    second = bench("run", "--grid", str(grid), "--workers", "2", "--no-progress", cwd=tmp_path, timeout=300)

    trials = optuna_trials("killed", journal)
    keys = {t.user_attrs["marginbench.key"] for t in trials}
    assert len(keys) == 6
    complete = [t.user_attrs["marginbench.key"] for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(complete) == sorted(keys), second.stdout  # every trial finished exactly once in Optuna
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert {t.user_attrs["marginbench.key"] for t in failed} == killed  # only the killed ones, re-queued
    assert all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in trials)

    runs = mlflow_children("killed", f"sqlite:///{tmp_path / 'mlflow.db'}")
    finished = [r.data.tags["marginbench.trial_key"] for r in runs if r.info.status == "FINISHED"]
    assert sorted(finished) == sorted(keys)  # exactly one finished MLflow child run per trial
    assert all(r.data.tags["marginbench.status"] == "finished" for r in runs if r.info.status == "FINISHED")
    interrupted = [r for r in runs if r.data.tags["marginbench.status"] == "interrupted"]
    assert {r.data.tags["marginbench.trial_key"] for r in interrupted} <= killed
    assert not [r for r in runs if r.info.status == "RUNNING"]
    # the trials finished before the kill were not trained again; a killed one resumed from its checkpoint
    assert all(len([r for r in runs if r.data.tags["marginbench.trial_key"] == k]) == 1 for k in finished_before)
    resumed = {r.data.tags["marginbench.trial_key"] for r in runs if r.data.tags.get("resumed_from_epoch")}
    assert resumed == with_checkpoint  # (test_resume checks the resumed history epoch by epoch)
    assert not list(ckpt_dir.glob("*.pt"))  # each deleted when its trial finished


class _Worker:
    """A stand-in for a `bench worker` Popen that is still running: records waits and signals."""

    def __init__(self) -> None:
        self.waits: list[float | None] = []
        self.signals: list[int] = []

    def wait(self, timeout: float | None = None) -> int:
        self.waits.append(timeout)
        if self.signals:
            return 0
        raise subprocess.TimeoutExpired("bench worker", timeout or 0)

    def poll(self) -> int | None:
        return 0 if self.signals else None

    def send_signal(self, signum: int) -> None:
        self.signals.append(signum)

    def kill(self) -> None:
        raise AssertionError("a worker that took the SIGINT is not killed")


@pytest.mark.parametrize("raised, first_wait", [("ctrl-c", 5.0), ("sigterm", 0.0)])
def test_a_sigterm_to_bench_run_passes_the_interrupt_to_its_workers_at_once(monkeypatch, tmp_path, raised,
                                                                            first_wait):
    # Ctrl-C in a terminal reaches every worker, which then gets a few seconds to give its trial back on its
    # own; a SIGTERM (a scheduler's, `kill`) reaches `bench run` alone, so waiting for the workers to stop by
    # themselves only delayed the exit by the whole grace period (11.2 s -> 5.7 s measured, 2 workers, loaded CPU)
    from bench import workers
    from bench.commands.worker import on_sigterm
    from bench.grid import load_grid

    grid_file = tmp_path / "g.yaml"
    grid_file.write_text("name: g\n" + DIGITS_BASE)
    fake = _Worker()

    def interrupted(*args, **kwargs):
        if raised == "sigterm":
            on_sigterm(signal.SIGTERM, None)
        raise KeyboardInterrupt

    monkeypatch.setattr(workers, "spawn_workers", lambda *a, procs, **k: procs.append(fake))
    monkeypatch.setattr(workers, "work", interrupted)
    with pytest.raises(KeyboardInterrupt):
        workers.run_study(load_grid(grid_file), storage=str(tmp_path / "j.journal"),
                          tracking_uri=f"sqlite:///{tmp_path}/m.db", workers=2, progress=False, echo=lambda s: None)
    assert fake.waits[0] == pytest.approx(first_wait, abs=0.05)
    assert fake.signals == [signal.SIGINT]


class _StoppingWorker(_Worker):
    """A worker that took its SIGINT and is still giving its trial back (a slow tracking server)."""

    def poll(self) -> int | None:
        return None


def test_a_sigterm_to_bench_run_reaches_its_workers_before_its_own_cleanup(monkeypatch, tmp_path):
    # The workers of `bench run` heard of its SIGTERM only from stop_workers, once worker 0 (this process) had given
    # its trial back and closed its runs: with a stalled tracking server they trained on all that while. Now the
    # SIGTERM is passed on first, as a SIGINT, and only once (a second one would interrupt the worker's cleanup).
    from bench import workers
    from bench.commands.worker import on_sigterm
    from bench.grid import load_grid

    grid_file = tmp_path / "g.yaml"
    grid_file.write_text("name: g\n" + DIGITS_BASE)
    fake = _StoppingWorker()
    told_at_cleanup = []

    def terminated(*args, **kwargs):
        try:
            signal.raise_signal(signal.SIGTERM)  # the handler runs here and raises Terminated
        except KeyboardInterrupt:  # worker 0's own cleanup (runs closed, trial given back) starts here
            told_at_cleanup.append(list(fake.signals))
            raise

    monkeypatch.setattr(workers, "spawn_workers", lambda *a, procs, **k: procs.append(fake))
    monkeypatch.setattr(workers, "work", terminated)
    previous = signal.signal(signal.SIGTERM, on_sigterm)  # as `bench run` sets it
    try:
        with pytest.raises(workers.Terminated):
            workers.run_study(
                load_grid(grid_file),
                storage=str(tmp_path / "j.journal"),
                tracking_uri=f"sqlite:///{tmp_path}/m.db",
                workers=2,
                progress=False,
                echo=lambda s: None,
            )
        assert signal.getsignal(signal.SIGTERM) is on_sigterm  # put back as it was
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert told_at_cleanup == [[signal.SIGINT]]
    assert fake.signals == [signal.SIGINT]


@pytest.mark.timeout(300)
def test_a_sigterm_to_a_bench_worker_group_stops_the_workers_it_started(tmp_path, write_grid):
    # `bench worker --workers 2` is this process plus one it starts. A SIGTERM to it alone (`kill PID`, a node
    # being drained) put its own trial back and then waited for the other worker, which went on training the
    # queue (the trial just given back included) until it was empty: the group never stopped.
    grid = write_grid("name: drained\n" + DIGITS_BASE + "  epochs: 2000\ngrid:\n  loss: [softmax, cosface, "
                      "arcface]\nseeds: [0]\n")
    journal = str(tmp_path / "optuna.journal")
    bench("run", "--grid", str(grid), "--workers", "0", cwd=tmp_path)
    log = open(tmp_path / "worker.log", "w")
    group = subprocess.Popen([sys.executable, "-m", "bench", "worker", "--grid", str(grid), "--workers", "2",
                              "--no-progress"], cwd=tmp_path, env=bench_env(), stdout=log, stderr=subprocess.STDOUT)
    owners: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(owners) < 2:
            time.sleep(0.5)
            assert group.poll() is None, (tmp_path / "worker.log").read_text()
            owners = {t.system_attrs["marginbench.owner"]["pid"] for t in optuna_trials("drained", journal)
                      if t.state == TrialState.RUNNING and "marginbench.owner" in t.system_attrs}
        assert len(owners) == 2, "both workers never ran a trial:\n" + (tmp_path / "worker.log").read_text()
        group.send_signal(signal.SIGTERM)
        try:
            group.wait(timeout=90)  # a bound against hanging, not a speed target: it takes seconds
        except subprocess.TimeoutExpired:
            pytest.fail("`bench worker --workers 2` was still running 90 s after its SIGTERM")
        deadline = time.monotonic() + 20
        while any(_alive(pid) for pid in owners) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(pid) for pid in owners), "the worker it started outlived the SIGTERM"
    finally:
        for pid in owners | {group.pid}:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        log.close()
    trials = optuna_trials("drained", journal)
    states = [t.state for t in trials]
    assert TrialState.RUNNING not in states and TrialState.COMPLETE not in states, states
    waiting = {t.user_attrs["marginbench.key"] for t in trials if t.state == TrialState.WAITING}
    assert len(waiting) == 3  # the two interrupted trials are queued again, the third was never started


def _dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.timeout(120)
def test_a_worker_whose_parent_died_before_it_set_its_death_signal_stops_instead_of_training(
    tmp_path, write_grid, monkeypatch
):
    # A `bench run` killed between forking a worker and the worker's prctl(PR_SET_PDEATHSIG) never sends the
    # signal (it is dead already): the worker, adopted by init, trained the study alone. Here the worker is told a
    # parent that has exited, as one that died in that window would be: it must die before running `bench worker`.
    from bench.grid import load_grid
    from bench.study import StudyConfig, open_storage, prepare_study
    from bench.workers import spawn_workers

    grid = load_grid(write_grid("name: orphan\n" + DIGITS_BASE + "  epochs: 1\ngrid:\n  loss: [softmax]\n"))
    journal = str(tmp_path / "optuna.journal")
    prepare_study(grid, StudyConfig.from_grid(grid), open_storage(journal))  # a live worker would train it
    dead = _dead_pid()
    monkeypatch.setattr(os, "getpid", lambda: dead)  # the pid spawn_workers hands its workers as their parent's
    (worker,) = spawn_workers(
        grid, 2, storage_url=journal, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", device="cpu", threads=1
    )
    monkeypatch.undo()
    try:
        code = worker.wait(timeout=90)  # a bound against a worker that trains on, not a speed target
    finally:
        if worker.poll() is None:
            worker.kill()
    assert code == -signal.SIGKILL
    assert [t.state for t in optuna_trials("orphan", journal)] == [TrialState.WAITING]  # nothing was trained


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_a_worker_whose_parent_is_alive_runs():
    # the check above lets a worker of a live parent through to its command
    import functools

    from bench.workers import _die_with_parent

    proc = subprocess.run(
        [sys.executable, "-c", "print('ran')"],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=functools.partial(_die_with_parent, os.getpid()),
    )
    assert (proc.returncode, proc.stdout) == (0, "ran\n")


def test_a_sigterm_while_bench_run_starts_its_workers_stops_those_started(monkeypatch, tmp_path):
    # `bench run --workers 3` gets a SIGTERM as it starts its second `bench worker`: the first one, started, was
    # lost with spawn_workers' list, so it got no SIGINT and was not waited for (it trained on until the PDEATHSIG
    # of this process's exit killed it mid-trial). It is told and waited for now, as a worker is once started.
    from bench import workers
    from bench.commands.worker import on_sigterm
    from bench.grid import load_grid

    grid_file = tmp_path / "g.yaml"
    grid_file.write_text("name: g\n" + DIGITS_BASE)
    popen, started = subprocess.Popen, []
    # a stand-in worker: exits 3 on the SIGINT (-SIGINT when it lands before Python's handler), else waits a minute
    worker = "import sys, time\ntry:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n    sys.exit(3)\n"

    def starting(cmd, *args, **kwargs):
        if cmd[1:4] != ["-m", "bench", "worker"]:
            return popen(cmd, *args, **kwargs)
        if started:  # the second worker: the SIGTERM lands as it is started (the handler raises Terminated)
            signal.raise_signal(signal.SIGTERM)
        started.append(popen([sys.executable, "-c", worker], preexec_fn=kwargs.get("preexec_fn")))
        return started[-1]

    monkeypatch.setattr(workers.subprocess, "Popen", starting)
    previous = signal.signal(signal.SIGTERM, on_sigterm)  # as `bench run` sets it
    try:
        with pytest.raises(workers.Terminated):
            workers.run_study(load_grid(grid_file), storage=str(tmp_path / "j.journal"),
                              tracking_uri=f"sqlite:///{tmp_path}/m.db", workers=3, progress=False,
                              echo=lambda s: None)
        codes = [p.returncode for p in started]  # set once run_study waited for them
    finally:
        signal.signal(signal.SIGTERM, previous)
        for p in started:
            if p.poll() is None:
                p.kill()
                p.wait()
    # the second too, on Linux: the SIGTERM is held from its fork until it is in the list
    assert len(started) == (2 if sys.platform == "linux" else 1), codes
    assert all(code in (3, -signal.SIGINT) for code in codes), codes
