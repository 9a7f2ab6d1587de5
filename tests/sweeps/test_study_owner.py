"""Two grid files with the same ``name:`` against one storage: the second one's ``bench run`` is refused (before,
it failed the first grid's waiting trials as "no longer in the grid" and queued its own in the same study); the
same file edited, a copy, a moved checkout and a study made before the check are let through."""

from __future__ import annotations

import hashlib
import json
import shutil

import optuna
import pytest
from optuna.trial import TrialState

from bench.grid import GridError, load_grid
from bench.study import StudyConfig, hide_password, open_storage, prepare_study
from bench.study_owner import OWNER_ATTR, check_owner
from tests.sweeps.conftest import DIGITS_BASE, bench, optuna_trials

A = "name: same\n" + DIGITS_BASE + "  epochs: 1\ngrid:\n  loss: [softmax, cosface]\n"
B = "name: same\n" + DIGITS_BASE + "  epochs: 2\ngrid:\n  loss: [arcface]\n"


@pytest.fixture(params=["journal", pytest.param("postgres", marks=pytest.mark.postgres)])
def storage_url(request, tmp_path):
    """An empty Optuna storage: a journal file in the test's folder, or a fresh PostgreSQL database."""
    if request.param == "journal":
        return str(tmp_path / "optuna.journal")
    return request.getfixturevalue("databases")[0]


def prepare(path, url, **load_kwargs):
    """What `bench run` does to the Optuna storage (the owner check, then the study), without MLflow."""
    grid = load_grid(path, **load_kwargs)
    storage = open_storage(url, heartbeat=False)
    owner = check_owner(grid, storage, shown=hide_password(url))
    return prepare_study(grid, StudyConfig.from_grid(grid), storage, owner=owner)


def recorded(url):
    return optuna.load_study(study_name="same", storage=open_storage(url, heartbeat=False)).user_attrs[OWNER_ATTR]


def parsed_hash(text):
    """The owner hash computed here from the YAML: sha256 of its sorted-key JSON."""
    import yaml

    blob = json.dumps(yaml.safe_load(text), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def test_a_new_study_records_its_grid_files_path_and_content_hash(write_grid, storage_url):
    path = write_grid(A)
    prepare(path, storage_url)
    assert recorded(storage_url) == {"path": str(path.resolve()), "hash": parsed_hash(A)}


def test_another_grid_file_with_the_same_name_is_refused_and_the_study_is_untouched(write_grid, storage_url):
    a, b = write_grid(A, "a.yaml"), write_grid(B, "b.yaml")
    study = prepare(a, storage_url)
    before = [(t.number, t.state) for t in study.get_trials()]
    with pytest.raises(GridError) as info:
        prepare(b, storage_url)
    message = str(info.value)
    assert message.startswith(
        f"{b}: name: the study 'same' in the storage {storage_url} belongs to another "
        f"grid file, {a.resolve()}, whose content differs from this one's."
    )
    assert "Rename name: in one of the two files, or use another --storage" in message
    after = optuna.load_study(study_name="same", storage=open_storage(storage_url, heartbeat=False))
    assert [(t.number, t.state) for t in after.get_trials()] == before  # a's trials still waiting, none of b's
    assert before == [(0, TrialState.WAITING), (1, TrialState.WAITING)]
    assert recorded(storage_url)["path"] == str(a.resolve())


def test_the_same_file_edited_is_the_same_study_and_its_new_content_is_recorded(write_grid, storage_url):
    path = write_grid(A)
    prepare(path, storage_url)
    edited = A.replace("[softmax, cosface]", "[softmax, cosface, arcface]")
    write_grid(edited)
    study = prepare(path, storage_url)
    assert len(study.get_trials()) == 3
    assert recorded(storage_url) == {"path": str(path.resolve()), "hash": parsed_hash(edited)}


def test_a_copy_with_other_comments_spacing_and_key_order_is_the_same_grid(write_grid, storage_url, tmp_path):
    a = write_grid(A, "a.yaml")
    prepare(a, storage_url)
    (tmp_path / "elsewhere").mkdir()
    reordered = "# a copy\ngrid:\n  loss:   [softmax,   cosface]\n" + A.replace(
        "grid:\n  loss: [softmax, cosface]\n", ""
    )
    copy = write_grid(reordered, "elsewhere/copy.yaml")
    assert parsed_hash(reordered) == parsed_hash(A)  # the same grid as parsed
    prepare(copy, storage_url)
    assert recorded(storage_url)["path"] == str(a.resolve())  # the original still exists: it keeps the study


def test_set_overrides_and_environment_variables_do_not_count(write_grid, storage_url, tmp_path, monkeypatch):
    text = A.replace("epochs: 1", "epochs: ${EPOCHS:-1}")
    a = write_grid(text, "a.yaml")
    monkeypatch.setenv("EPOCHS", "1")
    prepare(a, storage_url)
    (tmp_path / "other").mkdir()
    copy = write_grid(text, "other/copy.yaml")
    monkeypatch.setenv("EPOCHS", "3")
    study = prepare(copy, storage_url, overrides={"embedding_dim": 4})  # the same file's text: let through
    assert {t.user_attrs["marginbench.params"]["epochs"] for t in study.get_trials(states=(TrialState.WAITING,))} == {3}


def test_a_moved_checkout_keeps_its_study_and_the_record_follows_it(write_grid, storage_url, tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    old = write_grid(A, "old/losses.yaml")
    prepare(old, storage_url)
    new = write_grid(A.replace("[softmax, cosface]", "[softmax]"), "new/losses.yaml")  # moved, then edited
    shutil.rmtree(tmp_path / "old")
    prepare(new, storage_url)
    assert recorded(storage_url)["path"] == str(new.resolve())


def test_a_moved_file_under_another_name_with_other_content_is_refused_with_the_hint(write_grid, storage_url, tmp_path):
    old = write_grid(A, "losses.yaml")
    prepare(old, storage_url)
    old.unlink()
    other = write_grid(B, "other.yaml")
    with pytest.raises(
        GridError,
        match=r"\(.*losses\.yaml no longer exists; if .*other\.yaml is that file moved "
        r"and renamed, give it back the name losses\.yaml\)",
    ):
        prepare(other, storage_url)


def test_a_study_made_before_the_check_is_claimed_by_the_next_grid_file(write_grid, storage_url):
    a, b = write_grid(A, "a.yaml"), write_grid(B, "b.yaml")
    grid = load_grid(a)
    prepare_study(grid, StudyConfig.from_grid(grid), open_storage(storage_url, heartbeat=False))  # no owner
    storage = open_storage(storage_url, heartbeat=False)
    assert OWNER_ATTR not in optuna.load_study(study_name="same", storage=storage).user_attrs
    prepare(b, storage_url)
    assert recorded(storage_url)["path"] == str(b.resolve())
    with pytest.raises(GridError, match="belongs to another grid file"):
        prepare(a, storage_url)


def test_bench_run_and_bench_worker_of_another_grid_exit_2_and_write_nothing(write_grid, tmp_path):
    a, b = write_grid(A, "a.yaml"), write_grid(B, "b.yaml")
    bench("run", "--grid", str(a), "--workers", "0", cwd=tmp_path)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("same").experiment_id
    assert len(client.search_runs([experiment])) == 1  # the study's parent run
    for command in (["run"], ["worker", "--wait", "0"]):
        proc = bench(*command, "--grid", str(b), "--no-progress", cwd=tmp_path, check=False)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert f"belongs to another grid file, {a.resolve()}" in proc.stderr and "Traceback" not in proc.stderr
    assert len(client.search_runs([experiment])) == 1  # no parent run of b in a's experiment
    trials = optuna.load_study(study_name="same", storage=open_storage(str(tmp_path / "optuna.journal"))).trials
    assert [t.state for t in trials] == [TrialState.WAITING, TrialState.WAITING]


def _validate_only(grid, storage, tmp_path, monkeypatch, capsys):
    """``bench run --validate-only`` in ``tmp_path``, in this process: ``(exit code, stderr)``."""
    from bench.cli import main

    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    argv = ["run", "--grid", str(grid), "--validate-only"] + (["--storage", storage] if storage else [])
    code = main(argv)
    return code, capsys.readouterr().err


def test_validate_only_refuses_another_grid_files_study_and_leaves_the_storage_as_it_was(
    write_grid, storage_url, tmp_path, monkeypatch, capsys
):
    # --validate-only said the grid was fine, and the real run was then refused by the owner check
    a, b = write_grid(A, "a.yaml"), write_grid(B, "b.yaml")
    prepare(a, storage_url)
    before = (
        recorded(storage_url),
        len(optuna_trials("same", storage_url)),
        (tmp_path / "optuna.journal").read_bytes() if "://" not in storage_url else None,
    )
    code, err = _validate_only(b, storage_url, tmp_path, monkeypatch, capsys)
    assert code == 2
    assert (
        f"the study 'same' in the storage {hide_password(storage_url)} belongs to another grid file, {a.resolve()}"
        in err
        and "Traceback" not in err
    )
    assert _validate_only(a, storage_url, tmp_path, monkeypatch, capsys)[0] == 0  # its own grid file passes
    after = (
        recorded(storage_url),
        len(optuna_trials("same", storage_url)),
        (tmp_path / "optuna.journal").read_bytes() if "://" not in storage_url else None,
    )
    assert after == before  # only read: no record moved to b, no trial, not a byte appended to the journal


@pytest.mark.parametrize("storage", [None, "optuna.journal", "stores/optuna.journal", "sqlite:///optuna.db"])
def test_validate_only_without_a_storage_creates_none(write_grid, tmp_path, monkeypatch, capsys, storage):
    grid = write_grid(A, "a.yaml")
    assert _validate_only(grid, storage, tmp_path, monkeypatch, capsys)[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.yaml"]  # no journal, no SQLite file, no folder


@pytest.mark.postgres
def test_validate_only_on_an_empty_database_creates_no_table(write_grid, databases, tmp_path, monkeypatch, capsys):
    import sqlalchemy

    from bench.study import with_driver

    grid = write_grid(A, "a.yaml")
    assert _validate_only(grid, databases[0], tmp_path, monkeypatch, capsys)[0] == 0
    engine = sqlalchemy.create_engine(with_driver(databases[0]))
    with engine.connect() as conn:
        assert sqlalchemy.inspect(conn).get_table_names() == []  # Optuna's tables would be made by opening it
    engine.dispose()
