"""``bench run --grid FILE``: validate the grid, train every cell x seed, log each to MLflow, print the table."""

from __future__ import annotations

import argparse

from bench.commands._common import add_grid_options, add_tracking_option, load_grid_or_exit


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="train every cell of a grid (one MLflow run per cell and seed)",
                       description=__doc__)
    add_grid_options(p)
    add_tracking_option(p)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when available)")
    p.add_argument("--plots", action=argparse.BooleanOptionalAction, default=None,
                   help="embedding pictures per epoch (default: the grid's `plots`)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--validate-only", action="store_true", help="check the grid and list its trials, train nothing")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    grid = load_grid_or_exit(args)
    trials = grid.trials()
    print(f"grid {grid.name} ({grid.path}): {len(grid.cells)} cells x {len(grid.seeds)} seeds = {len(trials)} trials")
    if args.validate_only:
        for spec in trials:
            print(f"  {spec.label} seed={spec.seed}  [{spec.key()}]")
        return 0
    from bench.runner import run_grid
    from reports.markdown import default_table

    outcomes = run_grid(grid, tracking_uri=args.tracking_uri, device=args.device, progress=not args.no_progress,
                        plots=args.plots)
    print()
    print(default_table(grid, tracking_uri=args.tracking_uri))
    return 0 if all(o.status != "failed" for o in outcomes) else 1
