"""The ``bench`` command: thin argument parsing; each subcommand is a module in `bench.commands` with
``register(subparsers)`` and ``run(args) -> int``."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

__all__ = ["main", "build_parser", "COMMANDS"]

#: Subcommand modules under `bench.commands`, in help order.
COMMANDS = ("run", "worker", "report", "list", "ui", "align", "perf")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench", description="Benchmark margin-based softmax losses: "
                                     "train a YAML grid, track runs in MLflow, rebuild the tables.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"bench.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"bench.commands.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # each trial prints its own line; MLflow's "View run ... at: http://..." per run (tracking servers only)
    # would double it in every worker's output. MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT=false brings it back.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader left (bench list ... | head): stop quietly, as shell tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that flushing stdout at exit does not raise again
        return 141  # 128 + SIGPIPE, what a shell reports for a tool the pipe stopped
    except SystemExit as err:  # a command's clear error (already printed): the exit status, in process too
        from bench.commands._common import exit_status

        return exit_status(err)
