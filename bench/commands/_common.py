"""Options and error handling shared by subcommands."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import yaml

from bench import yamlio
from bench.grid import Grid, GridError, load_grid

if TYPE_CHECKING:
    from bench.study import StudyConfig

__all__ = ["add_grid_options", "add_tracking_option", "load_grid_or_exit", "load_grid_and_config_or_exit",
           "parse_sets", "typed_sets", "int_arg", "seconds_arg", "exit_status"]


def int_arg(low: int, high: int | None = None, *, message: str | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer from ``low`` (to ``high``), refused when parsing with ``message`` (default
    "must be an integer >= low") and the value given, before anything runs."""
    bound = message or (f"must be an integer >= {low}" if high is None else f"must be an integer in {low}..{high}")

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{bound}, but got {text!r}")
        return value

    return parse


def seconds_arg(text: str) -> float:
    """An argparse ``type``: a finite number of seconds > 0, refused when parsing with the value given."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0 (e.g. 120), but got {text!r}")
    return value


def add_grid_options(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    parser.add_argument("--grid", required=required, metavar="FILE",
                        help="grid YAML file; a bare name is looked up in ./sweeps (e.g. quickstart)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a flat trial key in every cell, e.g. --set epochs=1 --set dataset.root=/data, "
                             "or a whole component, --set 'loss={name: arcface, m: 0.5}'")


def add_tracking_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking-uri", default=None, metavar="URI",
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db here)")


def parse_sets(items: list[str]) -> dict[str, Any]:
    """The ``--set KEY=VALUE`` items as ``{key: parsed value}``.

    Raises:
        SystemExit: naming every item that is not ``KEY=VALUE``, sets ``seed`` or has a value that is not YAML.
    """
    out: dict[str, Any] = {}
    problems = []
    for item in items:
        try:
            key, value = _parsed_set(item)
        except ValueError as err:
            problems.append(str(err))
            continue
        out[key] = value
    if len(problems) == 1:
        raise SystemExit(f"bench: {problems[0]}")
    if problems:
        raise SystemExit(f"bench: {len(problems)} problems with --set:\n" + "\n".join(f"  {p}" for p in problems))
    return out


def _parsed_set(item: str) -> tuple[str, Any]:
    """``(key, value)`` of one ``--set`` item.

    Raises:
        ValueError: the problem and its fix, naming the item.
    """
    if "=" not in item:
        raise ValueError(f"--set takes KEY=VALUE (e.g. --set epochs=1), but got {item!r}")
    key, value = item.split("=", 1)
    key = key.strip()
    if key == "seed":
        raise ValueError("--set seed=... would be replaced by the grid's seeds; set `seeds: [3]` (or a count, "
                         "`seeds: 3`) in the grid instead")
    try:
        return key, yamlio.load(value)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"--set {item!r}: the value is not valid YAML ({problem}); quote it, e.g. "
                         f"--set '{key}=\"...\"', or write a list as [1, 2]") from None


def typed_sets(items: list[str]) -> dict[str, str]:
    """Each ``--set`` key's argument as typed (``{"epochs": "epochs=abc"}``), for `load_grid`'s messages."""
    return {item.split("=", 1)[0].strip(): item for item in items if "=" in item}


def load_grid_or_exit(args: argparse.Namespace) -> Grid:
    """The validated grid, or exit 2 with the error (file, key, fix) and nothing trained."""
    return _loaded_or_exit(load_grid, args)


def load_grid_and_config_or_exit(args: argparse.Namespace, *, prog: str = "bench") -> tuple[Grid, StudyConfig]:
    """The validated grid and its study config (`bench.study.load_grid_and_config`: the problems of both listed in
    one error), or exit 2 with the error (file, key, fix) and nothing trained or written. ``prog`` starts the
    message (``python -m bench.distributed`` says its own name)."""
    from bench.study import load_grid_and_config

    return _loaded_or_exit(load_grid_and_config, args, prog)


def _loaded_or_exit(load: Callable[..., Any], args: argparse.Namespace, prog: str = "bench") -> Any:
    """``load(args.grid, overrides=..., typed=...)`` with the ``--set`` items, or exit 2 printing its `GridError`."""
    sets = list(getattr(args, "set", []))
    try:
        return load(args.grid, overrides=parse_sets(sets), typed=typed_sets(sets))
    except (GridError, FileNotFoundError) as err:
        print(f"{prog}: invalid grid: {err}", file=sys.stderr)
        raise SystemExit(2) from err


def exit_status(err: SystemExit) -> int:
    """The exit status of a command's clear error: its code, or 2 after printing its message (`parse_sets`'
    ``SystemExit("bench: --set ...")``), as argparse exits for a bad option rather than Python's 1."""
    if isinstance(err.code, int) or err.code is None:
        return int(err.code or 0)
    print(err.code, file=sys.stderr)
    return 2
