"""bench/offline_bundle.py: the wheels an offline GPU machine lacks, from the installed requirement closure."""

from __future__ import annotations

import importlib.metadata as metadata
import subprocess

import pytest

from bench import offline_bundle
from bench.offline_bundle import canonical, copy_mnist, read_have, requirement_closure, to_fetch
from registry.datasets.mnist import MNIST_FILES
from tests.conftest import write_tiny_mnist


def test_closure_holds_the_declared_dependencies_at_their_installed_versions():
    closure = requirement_closure("marginbench", "3.12")
    for name in ("torch", "mlflow", "optuna", "timm", "pyyaml", "scipy"):  # pyproject's dependencies
        assert closure[name] == metadata.version(name)
    assert closure["sqlalchemy"] == metadata.version("sqlalchemy")  # optuna's, one level down
    assert "pytest" not in closure and "psycopg2-binary" not in closure  # extras are not followed


def _fake_dist(site, name: str, version: str, *requires: str) -> None:
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines += [f"Requires-Dist: {r}" for r in requires]
    (info / "METADATA").write_text("\n".join(lines) + "\n")


def test_closure_evaluates_markers_for_the_target_python_and_names_a_missing_package(tmp_path, monkeypatch):
    _fake_dist(tmp_path, "mb-root", "1.0", "mb-core>=2", 'mb-backport; python_version < "3.10"',
               'mb-extra-only; extra == "test"')
    _fake_dist(tmp_path, "mb-core", "2.5")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert requirement_closure("mb-root", "3.12") == {"mb-root": "1.0", "mb-core": "2.5"}
    with pytest.raises(SystemExit) as err:  # the backport applies on 3.9 and is not installed: no version to pin
        requirement_closure("mb-root", "3.9")
    assert "mb-backport, required by mb-root on Python 3.9, is not installed here" in str(err.value)


def test_read_have_takes_pip_freeze_lines_names_and_comments(tmp_path):
    have = tmp_path / "have.txt"
    have.write_text("# the GPU image\nTorch==2.11.0+cu130\nscikit_learn\nFlask.Cors>=6  # trailing\n\n"
                    "timm @ file:///wheels/timm.whl\n")
    assert read_have(have) == {"torch", "scikit-learn", "flask-cors", "timm"}
    with pytest.raises(SystemExit, match="pip list --format=freeze"):
        read_have(tmp_path / "missing.txt")


def test_to_fetch_drops_what_the_target_has_and_the_project_itself():
    closure = {"marginbench": "0.1.0", "torch": "2.14.1", "mlflow": "3.17.2", "alembic": "1.20.1"}
    assert to_fetch(closure, {canonical("Torch")}) == ["alembic==1.20.1", "mlflow==3.17.2"]


def test_copy_mnist_copies_the_four_files_and_names_the_missing_ones(tmp_path):
    write_tiny_mnist(tmp_path / "src")
    copy_mnist(tmp_path / "src", tmp_path / "dest")
    assert sorted(p.name.split(".")[0] for p in (tmp_path / "dest").iterdir()) == sorted(MNIST_FILES.values())
    with pytest.raises(SystemExit, match="train-images-idx3-ubyte"):
        copy_mnist(tmp_path / "empty", tmp_path / "dest2")


def test_a_failed_download_leaves_no_bundle_behind(tmp_path, monkeypatch):
    have = tmp_path / "have.txt"
    have.write_text("torch\n")
    calls = []

    def failing_pip(cmd, *args, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1)

    monkeypatch.setattr(offline_bundle.subprocess, "run", failing_pip)
    out = tmp_path / ".bundle"
    with pytest.raises(SystemExit, match="could not download"):
        offline_bundle.main(["--have", str(have), "--python", "3.12", "--out", str(out)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["have.txt"]  # no .bundle, no .bundle.partial
    cmd = calls[0]
    assert cmd[cmd.index("--python-version") + 1] == "3.12" and "--no-deps" in cmd
    assert f"mlflow=={metadata.version('mlflow')}" in cmd and not any(c.startswith("torch==") for c in cmd)


def test_python_version_must_be_major_minor(tmp_path):
    with pytest.raises(SystemExit, match="major.minor"):
        offline_bundle.main(["--have", str(tmp_path), "--python", "312"])
