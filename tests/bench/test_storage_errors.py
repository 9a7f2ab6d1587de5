"""A wrong Optuna storage (--storage or $MARGINBENCH_STORAGE) is a one-line error naming the option and the fix,
not a SQLAlchemy traceback, and nothing is trained or recorded first."""

from __future__ import annotations

import pytest

from bench.cli import main
from bench.study import open_storage, resolve_storage
from tests.conftest import TINY_GRID

#: Port 1 refuses at once: no PostgreSQL server is needed to see the error.
REFUSED = "postgresql://bench:secret@127.0.0.1:1/optuna"


def test_a_misspelt_scheme_names_the_option_and_the_forms_it_takes():
    with pytest.raises(SystemExit) as err:
        open_storage("postgresq://bench@127.0.0.1/optuna")
    message = str(err.value.code)
    assert "--storage" in message and "unknown database scheme 'postgresq'" in message
    assert "postgresql://USER@HOST" in message


def test_a_server_that_does_not_answer_is_named_without_its_password():
    pytest.importorskip("psycopg2")
    with pytest.raises(SystemExit) as err:
        open_storage(REFUSED)
    message = str(err.value.code)
    assert "cannot open the Optuna storage --storage" in message and "port 1" in message
    assert "secret" not in message and "bench:***@127.0.0.1:1/optuna" in message


@pytest.mark.parametrize("url", ["postgresql:/bench@db/optuna", "postgresql:bench@db/optuna",
                                 "sqlite:/optuna.db"])
def test_a_url_without_its_double_slash_is_not_taken_for_a_journal_file(url, tmp_path):
    with pytest.raises(SystemExit) as err:
        resolve_storage(url, cwd=tmp_path)
    assert "without '://'" in str(err.value.code)
    assert not any(tmp_path.iterdir())


def test_plain_paths_are_still_journal_files(tmp_path):
    assert resolve_storage("runs/optuna.journal", cwd=tmp_path) == str(tmp_path / "runs" / "optuna.journal")


@pytest.mark.parametrize("command", ["run", "worker"])
def test_the_commands_exit_2_with_the_message_and_record_nothing(command, in_tmp, tiny_dataset, capsys):
    pytest.importorskip("psycopg2")
    (in_tmp / "tiny.yaml").write_text(TINY_GRID)
    code = main([command, "--grid", "tiny.yaml", "--storage", REFUSED, "--no-progress", "--tracking-uri",
                 f"sqlite:///{in_tmp / 'mlflow.db'}"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot open the Optuna storage --storage" in err and "Traceback" not in err
    if (in_tmp / "mlflow.db").exists():
        from mlflow.tracking import MlflowClient

        assert MlflowClient(f"sqlite:///{in_tmp / 'mlflow.db'}").get_experiment_by_name("tiny") is None


@pytest.fixture
def silent_port():
    """A local port whose kernel completes the TCP handshake (a listening socket) but that no one accepts or
    answers, as a server behind a firewall that drops the replies; closed after 30 s at most, so that code
    without a connect timeout fails instead of hanging the test run."""
    import socket
    import threading

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    timer = threading.Timer(30, sock.close)
    timer.start()
    yield sock.getsockname()[1]
    timer.cancel()
    sock.close()


@pytest.mark.parametrize("command", ["run", "worker"])
def test_a_server_that_never_answers_is_given_up_after_the_connect_timeout(command, silent_port, in_tmp,
                                                                           tiny_dataset, capsys, monkeypatch):
    # libpq waited for the server's answer without end (bench run hung for minutes); with the variable at 2 s
    # the command exits 2 within a few seconds, saying it got no answer in 2 s and which variable sets the wait
    import time

    pytest.importorskip("psycopg2")
    monkeypatch.setenv("MARGINBENCH_STORAGE_CONNECT_TIMEOUT", "2")
    (in_tmp / "tiny.yaml").write_text(TINY_GRID)
    start = time.monotonic()
    code = main([command, "--grid", "tiny.yaml", "--storage", f"postgresql://bench:secret@127.0.0.1:{silent_port}/optuna",
                 "--no-progress", "--tracking-uri", f"sqlite:///{in_tmp / 'mlflow.db'}"])
    elapsed = time.monotonic() - start
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "secret" not in err
    assert "cannot open the Optuna storage" in err and "timeout expired" in err
    assert "no answer within 2 s; $MARGINBENCH_STORAGE_CONNECT_TIMEOUT sets the wait" in err
    assert elapsed < 10


@pytest.mark.parametrize("value", ["abc", "1", "0", "-5", "2.5"])
def test_a_bad_connect_timeout_is_refused_naming_the_variable(value, monkeypatch):
    monkeypatch.setenv("MARGINBENCH_STORAGE_CONNECT_TIMEOUT", value)
    with pytest.raises(SystemExit) as err:
        open_storage(REFUSED)
    message = str(err.value.code)
    assert "$MARGINBENCH_STORAGE_CONNECT_TIMEOUT must be a whole number of seconds >= 2" in message
    assert f"but got {value!r}" in message and "unset it for the default 20" in message


@pytest.fixture
def fresh_database():
    """A new database on the PostgreSQL server of the `postgres` tests, dropped afterwards."""
    import uuid

    psycopg2 = pytest.importorskip("psycopg2")
    admin = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test", connect_timeout=3)
    admin.autocommit = True
    name = f"mb_timeout_{uuid.uuid4().hex[:8]}"
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.close()


@pytest.mark.postgres
@pytest.mark.parametrize(("env", "query", "expected"), [(None, "", "20"), ("7", "", "7"),
                                                         ("7", "?connect_timeout=11", "11")])
def test_a_postgres_storage_connects_with_the_timeout(fresh_database, monkeypatch, env, query, expected):
    # what libpq was given, read back from the open connection: the default, the variable, or the URL's own
    from bench.study import read_storage

    if env is None:
        monkeypatch.delenv("MARGINBENCH_STORAGE_CONNECT_TIMEOUT", raising=False)
    else:
        monkeypatch.setenv("MARGINBENCH_STORAGE_CONNECT_TIMEOUT", env)
    assert read_storage(fresh_database + query) is None  # no Optuna tables yet: read, nothing created
    storage = open_storage(fresh_database + query, heartbeat=False)
    try:
        raw = storage.engine.raw_connection()
        try:
            assert raw.dbapi_connection.get_dsn_parameters()["connect_timeout"] == expected
        finally:
            raw.close()
    finally:
        storage.engine.dispose()
