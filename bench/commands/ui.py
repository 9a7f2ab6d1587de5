"""``bench ui``: the MLflow UI on 127.0.0.1 over this directory's store, with the study's experiment selected.

    bench ui                       # the most recently updated study in ./mlflow.db, on http://127.0.0.1:5000
    bench ui --grid quickstart     # that grid's study selected
    bench ui --port 0              # any free port

It runs ``mlflow server`` with ``--backend-store-uri sqlite:///<abs>/mlflow.db`` and the artifacts in
``./mlartifacts`` (where `bench.tracking` puts them), waits until it answers, prints the experiment's
address, and runs until Ctrl-C, which stops the server cleanly. With ``--tracking-uri http://...`` a server
already runs: the address is printed and nothing is started.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bench.commands._common import add_tracking_option, int_arg, seconds_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ui", help="open the MLflow UI on 127.0.0.1 with the study selected", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", metavar="FILE", help="select this grid's study (default: the latest updated study)")
    p.add_argument("--study", metavar="NAME", help="select the study (experiment) of this name")
    add_tracking_option(p)
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int_arg(0, 65535, message="a port is 0..65535 (0: any free port)"), default=5000,
                   help="port (default: 5000; 0: any free port)")
    p.add_argument("--workers", type=int_arg(1), default=1, metavar="N", help="server worker processes (default: 1)")
    p.add_argument("--timeout", type=seconds_arg, default=120.0, metavar="SECONDS",
                   help="seconds to wait for the server to answer (default: 120)")
    p.set_defaults(handler=run)


def _study_name(args: argparse.Namespace) -> str | None:
    if args.study:
        return str(args.study)
    if not args.grid:
        return None
    import yaml

    from bench import yamlio
    from bench.grid import find_grid_file

    try:
        path = find_grid_file(args.grid)
        raw = yamlio.load(path.read_text())
    except (FileNotFoundError, yaml.YAMLError) as err:
        raise SystemExit(f"bench ui: {err}") from err
    if not isinstance(raw, dict) or not raw.get("name"):
        raise SystemExit(f"bench ui: {path} has no name: (the study's name)")
    return str(raw["name"])


def _experiment(tracking_uri: str, study: str | None) -> tuple[str | None, str]:
    """``(experiment_id, note)``: the study's experiment, or the latest updated one but Default."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    if study is not None:
        exp = client.get_experiment_by_name(study)
        if exp is None:
            names = sorted(e.name for e in client.search_experiments() if e.name != "Default")
            raise SystemExit(f"bench ui: no study {study!r} in {tracking_uri}; studies: {', '.join(names) or 'none'} "
                             f"(run it first: bench run --grid ...)")
        return exp.experiment_id, f"study {study}"
    exps = [e for e in client.search_experiments() if e.name != "Default"]
    if not exps:
        return None, "no studies yet"
    latest = max(exps, key=lambda e: (e.last_update_time or 0, int(e.experiment_id) if e.experiment_id.isdigit()
                                      else 0))
    others = sorted(e.name for e in exps if e is not latest)
    return latest.experiment_id, f"study {latest.name}" + (f" (also: {', '.join(others)})" if others else "")


def experiment_url(base: str, experiment_id: str | None) -> str:
    """The UI address with the experiment's runs table open."""
    base = base.rstrip("/")
    return f"{base}/#/experiments/{experiment_id}/runs" if experiment_id else f"{base}/"


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _wait_ready(url: str, proc: subprocess.Popen[Any], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:  # noqa: S310 - our own local server
                if resp.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    return False


def _stop(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM to the server's process group (uvicorn/gunicorn workers included), SIGKILL after 10 s."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # not reaped yet (a loaded machine): never fail the shutdown over it
            pass


def run(args: argparse.Namespace) -> int:
    from bench.tracking import artifact_root, check_tracking_uri, resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    study = _study_name(args)
    if uri.startswith(("http://", "https://")):
        check_tracking_uri(uri)  # one line at once, not MLflow's silent retries for minutes
        experiment_id, note = _experiment(uri, study)
        print(f"MLflow UI: {experiment_url(uri, experiment_id)} ({note}; served by the tracking server)", flush=True)
        return 0
    if not uri.startswith("sqlite:///"):
        print(f"bench ui: serves a local sqlite store or points at an http(s) server, but got {uri}", file=sys.stderr)
        return 2
    db = Path(uri[len("sqlite:///"):])
    if not db.is_file():
        print(f"bench ui: no MLflow store at {db}; train something first (bench run --grid quickstart) or pass "
              f"--tracking-uri", file=sys.stderr)
        return 2
    experiment_id, note = _experiment(uri, study)
    port = args.port or _free_port(args.host)
    if _port_in_use(args.host, port):
        print(f"bench ui: port {port} on {args.host} is in use; pass --port N (or --port 0 for any free port)",
              file=sys.stderr)
        return 2
    artifacts = artifact_root(uri) or (db.parent / "mlartifacts").resolve().as_uri()
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--default-artifact-root", artifacts,
           "--artifacts-destination", artifacts, "--host", args.host, "--port", str(port),
           "--workers", str(args.workers)]
    log = tempfile.TemporaryFile(mode="w+b")
    env = dict(os.environ)
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # GenAI job workers: not needed to browse runs
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    host = "127.0.0.1" if args.host in ("0.0.0.0", "") else args.host
    base = f"http://{host}:{port}"
    try:
        if not _wait_ready(base, proc, args.timeout):
            _stop(proc)
            log.seek(0)
            tail = log.read().decode(errors="replace")[-4000:]
            print(f"bench ui: the MLflow server did not answer on {base} within {args.timeout:g} s:\n{tail}",
                  file=sys.stderr)
            return 1
        print(f"MLflow UI: {experiment_url(base, experiment_id)} ({note}; store {db}; Ctrl-C to stop)", flush=True)
        proc.wait()
        log.seek(0)
        print(f"bench ui: the MLflow server exited with code {proc.returncode}:\n"
              f"{log.read().decode(errors='replace')[-4000:]}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        _stop(proc)
        print("bench ui: stopped", file=sys.stderr, flush=True)
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        _stop(proc)
        log.close()
