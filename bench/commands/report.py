"""``bench report``: a grid's tables as markdown from its MLflow runs; results files; README splicing.

    bench report --grid quickstart                    # print the tables (from ./mlflow.db)
    bench report --grid quickstart --export           # also write reports/results/quickstart/<table>.csv,
                                                      #   .meta.json and plots, and log the plots to MLflow
    bench report --readme README.md                   # rebuild every <!-- bench:table NAME --> block
    bench report --readme README.md --check           # exit 1 with a diff when the README is out of date

A README block ``NAME`` is ``<grid>/<table>`` or a bare ``<table>`` found in exactly one grid's results.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.atomic import replace_text
from bench.commands._common import add_tracking_option, load_grid_or_exit


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="print a grid's tables as markdown; export results; update the README",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", metavar="FILE", help="grid YAML file; a bare name is looked up in ./sweeps "
                                                  "(required unless --readme)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a flat trial key in every cell, as bench run takes it")
    add_tracking_option(p)
    p.add_argument("--table", action="append", default=[], metavar="NAME",
                   help="only this table of the grid (repeatable)")
    p.add_argument("--export", action="store_true",
                   help="write each table's runs to <results-dir>/<grid>/<table>.csv (+ .meta.json) and its plots")
    p.add_argument("--plots", action=argparse.BooleanOptionalAction, default=None,
                   help="write the plots beside the results and log them to the study's parent run "
                        "(default: with --export)")
    p.add_argument("--results-dir", type=Path, default=None, metavar="DIR",
                   help="results folder (default: reports/results here; for --readme, beside the README)")
    p.add_argument("--readme", type=Path, default=None, metavar="FILE",
                   help="rebuild the <!-- bench:table NAME --> ... <!-- bench:end --> blocks from the results files")
    p.add_argument("--check", action="store_true",
                   help="with --readme: write nothing; exit 1 and print the diff when the README is out of date")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from reports.spec import ReportError

    if args.grid is None and args.readme is None:
        print("bench report: give --grid FILE (tables from MLflow) or --readme README.md (from results files)",
              file=sys.stderr)
        return 2
    if args.check and args.readme is None:
        print("bench report: --check goes with --readme README.md", file=sys.stderr)
        return 2
    try:
        if args.grid is not None:
            code = _grid_report(args)
            if code:
                return code
        if args.readme is not None:
            return _readme(args)
    except (ReportError, FileNotFoundError) as err:
        print(f"bench report: {err}", file=sys.stderr)
        return 2
    return 0


def _grid_report(args: argparse.Namespace) -> int:
    from reports.markdown import grid_tables, render_results, study_results
    from reports.results import DEFAULT_RESULTS_DIR, check_headers, write_results
    from reports.runs import load_study

    grid = load_grid_or_exit(args)
    specs = grid_tables(grid)
    if args.table:
        unknown = [t for t in args.table if t not in {s.name for s in specs}]
        if unknown:
            print(f"bench report: no table {unknown[0]!r} in {grid.path}; tables: "
                  f"{', '.join(s.name for s in specs)}", file=sys.stderr)
            return 2
        specs = [s for s in specs if s.name in args.table]
    from bench.tracking import check_tracking_uri, resolve_tracking_uri

    check_tracking_uri(resolve_tracking_uri(args.tracking_uri))
    study = load_study(grid.name, args.tracking_uri)
    if study.runs.empty:
        print(f"(no runs of {grid.name} yet in {study.tracking_uri}: bench run --grid {grid.path})")
        return 1 if args.export or args.plots else 0
    results_dir = args.results_dir or DEFAULT_RESULTS_DIR
    plots = args.export if args.plots is None else args.plots
    client = None
    if plots:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=study.tracking_uri)
    tables = study_results(grid, study.runs, specs)
    if args.export:  # every table before any file: an export that stops at its second table leaves no first one
        for results in tables:
            check_headers(results)
    sections = []
    for results in tables:
        sections.append(f"### {results.grid}/{results.spec.name}\n\n{render_results(results)}")
        if args.export:
            path = write_results(results, results_dir)
            print(f"wrote {path} ({len(results.frame)} runs) and {path.with_suffix('.meta.json').name}",
                  file=sys.stderr)
        if plots:
            from reports.plots import write_plots

            written = write_plots(results, study.history, Path(results_dir) / grid.name, client=client,
                                  parent_run_id=study.parent_run_id, experiment_id=study.experiment_id)
            where = f", logged to run {study.parent_run_id} under reports/{results.spec.name}/" \
                if study.parent_run_id else ""
            print(f"wrote {', '.join(str(p) for p in written)}{where}", file=sys.stderr)
    print("\n\n".join(sections))
    return 0


def _readme(args: argparse.Namespace) -> int:
    from reports.readme import splice_file

    result = splice_file(args.readme, args.results_dir)
    names = ", ".join(result.names) or "none"
    count = f"{len(result.names)} table{'s' if len(result.names) != 1 else ''}"
    if not result.names:
        print(f"{args.readme}: no <!-- bench:table NAME --> blocks", file=sys.stderr)
    if args.check:
        if result.changed:
            sys.stdout.write(result.diff())
            print(f"{args.readme} differs from the results files (out of date: {', '.join(result.stale)}); "
                  f"run: bench report --readme {args.readme}", file=sys.stderr)
            return 1
        print(f"{args.readme}: {count} up to date ({names})", file=sys.stderr)
        return 0
    if result.changed:
        replace_text(result.path, result.new)
        print(f"{args.readme}: rebuilt {count} ({names})", file=sys.stderr)
    else:
        print(f"{args.readme}: {count} already up to date ({names})", file=sys.stderr)
    return 0
