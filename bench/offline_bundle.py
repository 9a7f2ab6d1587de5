"""Packs what an offline GPU machine with its own PyTorch needs to run marginbench from a copy of this checkout.

A GPU box without a package index (an air-gapped cluster node, a lent cloud image) usually has torch,
torchvision, timm and the scientific stack already, and lacks MLflow, Optuna and their dependencies. This
script, run where the project is installed (``.venv/bin/python bench/offline_bundle.py``), walks the installed
requirement closure of ``marginbench`` (no extras), drops what the target already has, downloads wheels of the
same versions for the target's Python and platform, and copies the MNIST files the GPU checks read::

    .venv/bin/python bench/offline_bundle.py --have bench/gpu_image_packages.txt --python 3.12 \\
        --mnist ../shared/data/mnist-10k --out .bundle

On the target, from the checkout's root (``bench/gpu_checks.sh`` does this itself when it finds ``.bundle``)::

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .bundle/wheels/*.whl
    export PYTHONPATH=/tmp/site:$PWD; python3 -m bench perf ...

``--have`` takes the target's ``python3 -m pip list --format=freeze`` (or one name a line; ``#`` comments).
Versions there are not compared: a package the target has is used as it is.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import re
import shutil
import subprocess
import sys
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

#: manylinux tags pip must be told one by one for a foreign target (it matches each exactly).
MANYLINUX = ["manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_27_x86_64", "manylinux_2_28_x86_64",
             "manylinux_2_31_x86_64", "manylinux_2_34_x86_64", "manylinux_2_35_x86_64", "manylinux1_x86_64"]


def canonical(name: str) -> str:
    """PEP 503 name: ``Flask_Cors`` -> ``flask-cors``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_closure(root: str, python_version: str) -> dict[str, str]:
    """``{canonical name: installed version}`` of ``root`` and everything it requires, from the installed metadata;
    markers are evaluated for ``python_version`` (the target's), extras are not followed."""
    env = {**default_environment(), "python_version": python_version, "extra": ""}
    found: dict[str, str] = {}
    stack = [(root, "")]
    while stack:
        name, parent = stack.pop()
        if canonical(name) in found:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            where = f", required by {parent} on Python {python_version}," if parent else ""
            raise SystemExit(f"offline_bundle: {name}{where} is not installed here, so its version is unknown; run "
                             f"this with the project's environment (`make install`, then .venv/bin/python "
                             f"bench/offline_bundle.py), or `pip install {name}` into it first") from None
        found[canonical(name)] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate(env):
                stack.append((req.name, name))
    return found


def read_have(path: Path) -> set[str]:
    """Canonical names of a ``pip list --format=freeze`` file (or one name a line, ``#`` comments)."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise SystemExit(f"offline_bundle: --have {path}: no such file; write it on the target with "
                         f"`python3 -m pip list --format=freeze > {path.name}`") from None
    names = set()
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(canonical(re.split(r"[=<>~!@ ;\[]", line, maxsplit=1)[0]))
    return names


def to_fetch(closure: dict[str, str], have: set[str], project: str = "marginbench") -> list[str]:
    """``name==version`` of the closure's packages the target lacks (the project itself travels as source)."""
    return sorted(f"{name}=={version}" for name, version in closure.items()
                  if name not in have and name != canonical(project))


def download(pins: list[str], dest: Path, python_version: str) -> None:
    """Binary wheels of ``pins`` for CPython ``python_version`` on manylinux x86-64, without their dependencies."""
    platforms = [arg for tag in MANYLINUX for arg in ("--platform", tag)]
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--implementation", "cp", "--python-version", python_version, *platforms, "--dest", str(dest), *pins]
    if subprocess.run(cmd).returncode != 0:
        raise SystemExit(f"offline_bundle: pip could not download every wheel for Python {python_version} (above); "
                         f"a package without a wheel for that Python needs a version that has one")


def copy_mnist(src: Path, dest: Path) -> None:
    """The four IDX files of ``src`` (raw or .gz, where the mnist dataset looks for them) into ``dest``."""
    from registry.datasets.mnist import find_idx_files

    try:
        files = find_idx_files(src)
    except FileNotFoundError as err:
        raise SystemExit(f"offline_bundle: --mnist {src}: {err}") from None
    dest.mkdir(parents=True, exist_ok=True)
    for f in files.values():
        shutil.copy2(f, dest / f.name)


def folder_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--have", type=Path, required=True, help="the target's `pip list --format=freeze` (or names)")
    p.add_argument("--python", default="3.12", help="the target's Python version, major.minor (default 3.12)")
    p.add_argument("--mnist", type=Path, default=None, help="also copy these MNIST IDX files (into OUT/mnist-10k)")
    p.add_argument("--out", type=Path, default=Path(".bundle"), help="the bundle folder (default .bundle; replaced)")
    args = p.parse_args(argv)
    if not re.fullmatch(r"3\.\d+", args.python):
        raise SystemExit(f"offline_bundle: --python {args.python!r}: give major.minor, e.g. 3.12")
    have = read_have(args.have)
    pins = to_fetch(requirement_closure("marginbench", args.python), have)
    staging = args.out.with_name(args.out.name + ".partial")  # nothing half-written under --out
    shutil.rmtree(staging, ignore_errors=True)
    try:
        (staging / "wheels").mkdir(parents=True)
        if args.mnist is not None:  # first: a wrong folder is told before any download
            copy_mnist(args.mnist, staging / "mnist-10k")
        download(pins, staging / "wheels", args.python)
        (staging / "packages.txt").write_text("\n".join(pins) + "\n")
        shutil.rmtree(args.out, ignore_errors=True)
        staging.rename(args.out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"{args.out}: {len(pins)} wheels for Python {args.python}{' and MNIST' if args.mnist else ''}, "
          f"{folder_mib(args.out):.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
