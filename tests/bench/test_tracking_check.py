"""A tracking URI that cannot work stops `bench run`, `bench worker` and `bench report` at once with one line
naming the option and the fix: a server that does not answer (MLflow's client would retry for about four
minutes, then print a long traceback), one that refuses this machine's Host header, a misspelt scheme."""

from __future__ import annotations

import http.server
import socket
import threading

import pytest

from bench.cli import main
from bench.tracking import check_tracking_uri, resolve_tracking_uri
from tests.conftest import TINY_GRID


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def http_server():
    """``http_server(status, body)``: a local HTTP server answering every POST so; its URL."""
    servers = []

    def start(status: int, body: bytes) -> str:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(status)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()


def test_a_server_that_does_not_answer_is_named_with_the_option():
    uri = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(SystemExit) as err:
        check_tracking_uri(uri)
    assert "does not answer" in str(err.value.code) and "--tracking-uri" in str(err.value.code) and uri in str(
        err.value.code)


def test_a_server_refusing_the_host_header_says_allowed_hosts(http_server):
    uri = http_server(403, b"Invalid Host header - possible DNS rebinding attack detected")
    with pytest.raises(SystemExit) as err:
        check_tracking_uri(uri)
    assert f"--allowed-hosts {uri[len('http://'):]}" in str(err.value.code)


def test_not_an_mlflow_server(http_server):
    with pytest.raises(SystemExit, match="not as an MLflow tracking server"):
        check_tracking_uri(http_server(404, b"not found"))


@pytest.mark.parametrize("status", [200, 401])
def test_an_answering_server_passes_and_credentials_are_left_to_mlflow(http_server, status):
    check_tracking_uri(http_server(status, b"{}"))


@pytest.mark.parametrize("uri", ["sqlite:////tmp/x/mlflow.db", "file:///tmp/mlruns", "./mlruns", "databricks"])
def test_local_stores_are_not_probed(uri):
    check_tracking_uri(uri)


@pytest.mark.parametrize("scheme", ["postgresql", "postgresql+psycopg2"])
def test_a_database_store_that_refuses_is_named_with_the_option(scheme):
    # MLflow retried a refused PostgreSQL store for about two minutes, then printed a traceback; a bare
    # postgresql:// failed at once on psycopg 3 (SQLAlchemy 2.1's default), which the postgres extra lacks
    pytest.importorskip("psycopg2")
    uri = f"{scheme}://postgres@127.0.0.1:{closed_port()}/test"
    with pytest.raises(SystemExit) as err:
        check_tracking_uri(resolve_tracking_uri(uri))
    message = str(err.value.code)
    assert "cannot open the MLflow tracking store --tracking-uri" in message and "Connection refused" in message


def test_bench_run_stops_on_a_refused_database_store_before_the_optuna_storage(in_tmp, tiny_dataset, capsys):
    pytest.importorskip("psycopg2")
    (in_tmp / "tiny.yaml").write_text(TINY_GRID)
    assert main(["run", "--grid", "tiny.yaml", "--no-progress", "--tracking-uri",
                 f"postgresql://postgres@127.0.0.1:{closed_port()}/test"]) == 2
    err = capsys.readouterr().err
    assert "cannot open the MLflow tracking store" in err and "Traceback" not in err
    assert sorted(p.name for p in in_tmp.iterdir()) == ["tiny.yaml"]  # no optuna.journal, no .bench


def test_a_misspelt_scheme():
    with pytest.raises(SystemExit, match="unknown scheme 'htp'"):
        check_tracking_uri("htp://mlflow:5000")


@pytest.mark.parametrize("command", ["run", "worker", "report"])
def test_the_commands_stop_before_anything_else(command, in_tmp, tiny_dataset, capsys):
    (in_tmp / "tiny.yaml").write_text(TINY_GRID)
    args = [command, "--grid", "tiny.yaml", "--tracking-uri", f"http://127.0.0.1:{closed_port()}"]
    if command != "report":
        args += ["--storage", "optuna.journal", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "does not answer" in err and "Traceback" not in err
    assert not (in_tmp / "optuna.journal").exists()


def test_bench_ui_names_a_server_that_does_not_answer(in_tmp, capsys):
    # it used to sit silent in MLflow's retries (30 s and more), then print a traceback
    assert main(["ui", "--tracking-uri", f"http://127.0.0.1:{closed_port()}"]) == 2
    err = capsys.readouterr().err
    assert "does not answer" in err and "Traceback" not in err


def test_an_mps_device_is_named_as_the_mac_chip_not_the_cpu(monkeypatch):
    # --device mps used to be tagged "cpu (arm, 8 cores)", so its runs were tabled as CPU runs
    import subprocess

    from bench.tracking import device_name, environment_tags

    run = subprocess.run

    def sysctl(args, **kwargs):  # what macOS answers
        if args[0] != "sysctl":
            return run(args, **kwargs)  # git, for the commit tag
        assert args == ["sysctl", "-n", "machdep.cpu.brand_string"]
        return subprocess.CompletedProcess(args, 0, stdout="Apple M2 Pro\n", stderr="")

    monkeypatch.setattr(subprocess, "run", sysctl)
    assert device_name("mps") == "Apple M2 Pro (MPS)"
    assert environment_tags("mps:0")["device_name"] == "Apple M2 Pro (MPS)"

    def no_sysctl(args, **kwargs):
        raise FileNotFoundError(args[0])

    monkeypatch.setattr(subprocess, "run", no_sysctl)
    monkeypatch.setattr("platform.machine", lambda: "arm64")
    assert device_name("mps") == "Apple arm64 (MPS)"
