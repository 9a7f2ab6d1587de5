"""``bench report --grid FILE``: the grid's tables as markdown, from its MLflow runs."""

from __future__ import annotations

import argparse

from bench.commands._common import add_grid_options, add_tracking_option, load_grid_or_exit


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="print a grid's accuracy tables as markdown", description=__doc__)
    add_grid_options(p)
    add_tracking_option(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from reports.markdown import default_table

    grid = load_grid_or_exit(args)
    print(default_table(grid, tracking_uri=args.tracking_uri))
    return 0
