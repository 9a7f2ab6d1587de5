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
