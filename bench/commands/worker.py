"""``bench worker --grid FILE --storage URL --tracking-uri URL``: join a study that ``bench run`` prepared.

Run it on any machine that reaches the storage (PostgreSQL) and the MLflow server; it pops waiting trials
until none is waiting or running, then exits. It waits up to --wait seconds for the study to be prepared.
Under ``torchrun --nproc_per_node K -m bench worker ...`` each trial uses all K processes
(DistributedDataParallel; rank 0 talks to the stores). See docs/shared-mode.md.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from bench.commands._common import add_grid_options, add_tracking_option, load_grid_or_exit
from bench.commands.run import add_storage_option, add_worker_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="run trials of a study prepared by `bench run` (shared storage)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_grid_options(p)
    add_tracking_option(p)
    add_storage_option(p)
    add_worker_options(p)
    p.add_argument("--worker-index", type=int, default=0, metavar="I",
                   help="this worker's number (offsets a seeded sampler)")
    p.add_argument("--wait", type=float, default=600.0, metavar="SECONDS",
                   help="how long to wait for `bench run` to prepare the study (default 600)")
    p.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                   help="per-epoch checkpoints (default: .bench/checkpoints/<study> beside the storage file, or "
                        "here); a shared folder lets a trial resume on another machine")
    p.add_argument("--max-trials", type=int, default=None, metavar="N", help="stop after N trials")
    p.set_defaults(handler=run)


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # a preempted worker puts its trial back in the queue on the way out


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bench.grid import GridError
    from bench.study import StudyConfig, StudyNotReady, resolve_storage
    from bench.tracking import resolve_tracking_uri
    from bench.workers import WorkerOptions, follow, work

    grid = load_grid_or_exit(args)
    try:
        StudyConfig.from_grid(grid)
    except GridError as err:
        print(f"bench: invalid grid: {err}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _sigterm)
    tracking = resolve_tracking_uri(args.tracking_uri)
    storage = resolve_storage(args.storage, tracking_uri=tracking)
    from bench import distributed

    dist = distributed.init_from_env(args.device)
    options = WorkerOptions(device=dist.device if dist else args.device, plots=bool(args.plots),
                            progress=not args.no_progress, worker_index=args.worker_index, threads=args.threads,
                            wait_seconds=args.wait, max_trials=args.max_trials,
                            prefix=os.environ.get("MARGINBENCH_WORKER_PREFIX", ""),
                            checkpoint_dir=Path(args.checkpoint_dir).resolve() if args.checkpoint_dir else None)
    try:
        if dist is not None and not dist.is_main:
            follow(dist, options)
            return 0
        try:
            outcomes = work(grid.name, storage, tracking, options, echo=lambda s: print(s, flush=True), dist=dist)
        except StudyNotReady as err:
            print(f"bench worker: {err}", file=sys.stderr)
            return 2
    finally:
        distributed.shutdown()
    return 0 if all(o.status != "failed" for o in outcomes) else 1
