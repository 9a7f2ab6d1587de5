"""``bench run --grid FILE``: the grid as an Optuna study; every trial an MLflow child run; the table at the end.

    bench run --grid quickstart                       # one process, embedded stores in this folder
    bench run --grid losses.yaml --workers 4          # four trials at once (one GPU, or the CPU)
    bench run --grid losses.yaml --gpus 0,1,2,3       # one worker per GPU
    bench run --grid losses.yaml --workers 2 --fuse 6 # two workers, each training six trials as one program
    bench run --grid losses.yaml --storage postgresql://bench@db/optuna --tracking-uri http://mlflow:5000
                                                      # shared mode; add `bench worker`s on other machines

Running the same command again continues the same study: finished trials are kept, trials that were
running when a process died run again (from their last checkpoint), nothing is duplicated.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bench.commands._common import add_grid_options, add_tracking_option, int_arg, load_grid_and_config_or_exit


def add_storage_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage", default=None, metavar="URL",
                        help="Optuna storage: a journal file path, or an RDB URL such as postgresql://user@host/db "
                             "(default: $MARGINBENCH_STORAGE, else optuna.journal beside mlflow.db)")


_positive_int = int_arg(1)


def add_worker_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when available)")
    parser.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                        help="torch threads per worker (default: CPU cores divided among the workers)")
    parser.add_argument("--plots", action=argparse.BooleanOptionalAction, default=None,
                        help="embedding pictures per epoch (default: the grid's `plots`)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--fuse", type=int, default=1, metavar="K",
                        help="each worker trains up to K trials as one program when they share the backbone's "
                             "shapes, batch size and an in-memory dataset (one vmapped step for all; default 1)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="train every cell of a grid as an Optuna study (one MLflow run per trial)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_grid_options(p)
    add_tracking_option(p)
    add_storage_option(p)
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="trials at once, each in its own process (default: the grid's `workers`, else one per "
                        "--gpus entry, else 1 in this process); 0 only enqueues the trials for `bench worker`s")
    p.add_argument("--gpus", default=None, metavar="IDS",
                   help="comma-separated GPU ids; worker i runs on GPU ids[i %% len(ids)]")
    add_worker_options(p)
    p.add_argument("--validate-only", action="store_true",
                   help="check the grid (and, when the storage exists, that its study is this grid file's) and list "
                        "its trials; train nothing, create nothing")
    p.set_defaults(handler=run)


def check_fuse(fuse: int, flag: str = "--fuse") -> None:
    if fuse < 1:
        raise SystemExit(f"bench: {flag} must be >= 1 (1: one trial at a time), but got {fuse}")


def check_device(device: str | None, gpus: list[str] | None) -> None:
    """``--device`` and ``--gpus`` name devices this machine has, or exit 2 before the study is created (else every
    trial fails with torch's error, one after the other, and the stores are left behind)."""
    if device is None and not gpus:
        return
    import os

    import torch

    if device is not None:
        try:
            dev = torch.device(device)
        except (RuntimeError, ValueError):
            raise SystemExit(f"bench: --device {device!r} is not a device; use cpu, cuda, cuda:N or mps") from None
        if dev.type not in ("cpu", "cuda", "mps"):
            raise SystemExit(f"bench: --device {device!r}: trials run on cpu, cuda, cuda:N or mps")
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise SystemExit("bench: --device mps, but this machine has no usable MPS device; use --device cpu")
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit(f"bench: --device {device}, but torch sees no CUDA GPU here (torch "
                             f"{torch.__version__}); leave --device out to run on the CPU, or install a CUDA build")
        if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
            raise SystemExit(f"bench: --device {device}, but torch sees {torch.cuda.device_count()} GPU(s): "
                             f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    if gpus:
        if not torch.cuda.is_available():
            raise SystemExit(f"bench: --gpus {','.join(gpus)}, but torch sees no CUDA GPU here (torch "
                             f"{torch.__version__}); leave --gpus out to run on the CPU")
        count = torch.cuda.device_count()  # the GPUs CUDA_VISIBLE_DEVICES leaves; ids count those (bench.workers)
        if any(int(g) >= count for g in gpus):
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            where = f"CUDA_VISIBLE_DEVICES={visible} leaves" if visible is not None else "this machine has"
            raise SystemExit(f"bench: --gpus {','.join(gpus)}, but {where} {count} GPU(s): ids 0..{count - 1}")


def parse_gpus(text: str | None) -> list[str] | None:
    if text is None:
        return None
    ids = [g.strip() for g in text.split(",") if g.strip()]
    if not ids or not all(g.isdigit() for g in ids):
        raise SystemExit(f"bench: --gpus takes comma-separated GPU ids like 0,1,3, but got {text!r}")
    return ids


def _owner_problem(grid: Any, args: argparse.Namespace) -> Exception | None:
    """The `bench.study_owner` refusal ``bench run`` would meet (the study of the grid's name made from another grid
    file), read from the storage when it exists; the storage is only read, never created."""
    from bench.grid import GridError
    from bench.study import hide_password, read_storage, resolve_storage
    from bench.study_owner import check_owner
    from bench.tracking import resolve_tracking_uri

    url = resolve_storage(args.storage, tracking_uri=resolve_tracking_uri(args.tracking_uri))
    storage = read_storage(url)
    if storage is None:
        return None  # no study yet: this grid's run makes it
    try:
        check_owner(grid, storage, shown=hide_password(url))
    except GridError as err:
        return err
    return None


def run(args: argparse.Namespace) -> int:
    from bench.grid import GridError
    from bench.study import plan_slots

    grid, config = load_grid_and_config_or_exit(args)  # the grid's problems and its study keys' in one listing
    gpus = parse_gpus(args.gpus)
    if args.workers is not None and args.workers < 0:
        raise SystemExit(f"bench: --workers must be >= 0, but got {args.workers}")
    check_fuse(args.fuse)
    if gpus and args.device and args.device != "cuda":
        raise SystemExit("bench: give either --gpus (one GPU per worker) or --device, not both")
    if args.workers != 0 and not args.validate_only:  # 0: enqueue only, workers elsewhere bring their devices
        check_device(args.device, gpus)
    slots = plan_slots(grid, config)
    if config.search:
        scope = "per cell" if config.scope == "cell" else "across the grid"
        print(f"grid {grid.name} ({grid.path}): {len(grid.cells)} cells, search over "
              f"{', '.join(config.search)}: {config.n_trials} trials {scope} = {len(slots)} trials")
    else:
        print(f"grid {grid.name} ({grid.path}): {len(grid.cells)} cells x {len(grid.seeds)} seeds = "
              f"{len(slots)} trials")
    if args.validate_only:
        problem = _owner_problem(grid, args)
        if problem is not None:
            print(f"bench: {problem}", file=sys.stderr)
            return 2
        if config.search:
            for key, param in config.search.items():
                print(f"  search {key}: {param.as_dict()}")
            for cell in grid.cells:
                print(f"  cell {cell.spec.label}")
        else:
            for spec in grid.trials():
                print(f"  {spec.label} seed={spec.seed}  [{spec.key()}]")
        return 0
    import signal

    from bench.commands.worker import on_sigterm
    from bench.tracking import check_tracking_uri, resolve_tracking_uri
    from bench.workers import run_study

    check_tracking_uri(resolve_tracking_uri(args.tracking_uri))

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        report = run_study(grid, storage=args.storage, tracking_uri=args.tracking_uri, workers=args.workers, gpus=gpus,
                           device=args.device, plots=args.plots, progress=not args.no_progress, threads=args.threads,
                           sets=args.set, fuse=args.fuse, config=config)
    except GridError as err:
        print(f"bench: {err}", file=sys.stderr)
        return 2
    print(f"study {grid.name}: " + ", ".join(f"{v} {k}" for k, v in report.counts.items() if v))
    if args.workers != 0:
        try:
            from reports.markdown import default_table

            print()
            print(default_table(grid, tracking_uri=report.tracking_uri))
        except Exception as err:  # the table is a convenience; the runs are stored either way
            print(f"bench: could not build the table ({type(err).__name__}: {err}); try `bench report`",
                  file=sys.stderr)
    return 0 if report.ok else 1
