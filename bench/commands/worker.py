"""``bench worker --grid FILE --storage URL --tracking-uri URL``: join a study that ``bench run`` prepared.

Run it on any machine that reaches the storage (PostgreSQL) and the MLflow server; it pops waiting trials
until none is waiting or running, then exits. It waits up to --wait seconds for the study to be prepared.
Under ``torchrun --nproc_per_node K -m bench worker ...`` each trial uses all K processes
(DistributedDataParallel; rank 0 talks to the stores). See docs/shared-mode.md.
A study prepared from another grid file that has the same name: is refused, as ``bench run`` refuses it
(`bench.study_owner`; the worker records nothing).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from bench.commands._common import add_grid_options, add_tracking_option, int_arg, load_grid_and_config_or_exit
from bench.commands.run import _positive_int, add_storage_option, add_worker_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="run trials of a study prepared by `bench run` (shared storage)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_grid_options(p)
    add_tracking_option(p)
    add_storage_option(p)
    add_worker_options(p)
    p.add_argument("--workers", type=_positive_int, default=1, metavar="N",
                   help="worker processes on this machine (this one and N-1 more; default 1)")
    p.add_argument("--gpus", default=None, metavar="IDS",
                   help="comma-separated GPU ids; worker i runs on GPU ids[i %% len(ids)]")
    p.add_argument("--worker-index", type=int_arg(0), default=0, metavar="I",
                   help="this worker's number (offsets a seeded sampler; give each machine its own range)")
    p.add_argument("--wait", type=float, default=600.0, metavar="SECONDS",
                   help="how long to wait for `bench run` to prepare the study (default 600)")
    p.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                   help="per-epoch checkpoints (default: .bench/checkpoints/<study> beside the storage file, or "
                        "here); a shared folder lets a trial resume on another machine")
    p.add_argument("--max-trials", type=_positive_int, default=None, metavar="N",
                   help="stop after N trials (default: when none is waiting or running)")
    p.set_defaults(handler=run)


def on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM (a preempted node) as Ctrl-C: the worker puts its trial back in the queue on the way out."""
    from bench.workers import Terminated

    raise Terminated


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bench.commands.run import check_device, check_fuse, parse_gpus
    from bench.grid import GridError
    from bench.study import StudyNotReady, hide_password, is_rdb, resolve_storage
    from bench.study_owner import check_owner
    from bench.tracking import check_tracking_uri, resolve_tracking_uri
    from bench.workers import WorkerOptions, follow, sigterm_forwarded, spawn_workers, stop_workers, wait_workers, work

    grid, _ = load_grid_and_config_or_exit(args)  # the grid's problems and its study keys' in one listing
    check_fuse(args.fuse)
    check_device(args.device, parse_gpus(args.gpus))
    signal.signal(signal.SIGTERM, on_sigterm)
    tracking = resolve_tracking_uri(args.tracking_uri)
    check_tracking_uri(tracking)
    storage = resolve_storage(args.storage, tracking_uri=tracking)
    new_journal = None if is_rdb(storage) or Path(storage).exists() else Path(storage)
    from bench import distributed

    gpus = parse_gpus(args.gpus)
    dist = distributed.init_from_env(args.device)
    n = max(1, args.workers)
    threads = args.threads or (max(1, (os.cpu_count() or 1) // n) if n > 1 else None)
    procs: list = []
    stopped: list[str] = []  # rank 0's stop, as another rank received it (`follow`)
    ended_together = False  # every rank left its loop at rank 0's stop (bench.distributed.shutdown)
    device = dist.device if dist else (f"cuda:{gpus[0]}" if gpus else args.device)
    options = WorkerOptions(device=device, plots=bool(args.plots),
                            progress=not args.no_progress, worker_index=args.worker_index, threads=threads,
                            wait_seconds=args.wait, max_trials=args.max_trials,
                            prefix=os.environ.get("MARGINBENCH_WORKER_PREFIX", ""), fuse=args.fuse,
                            checkpoint_dir=Path(args.checkpoint_dir).resolve() if args.checkpoint_dir else None)
    with sigterm_forwarded(procs) as told:  # a SIGTERM reaches the workers started here before our own cleanup
        try:
            if dist is None and (n > 1 or gpus):  # into our list: an interrupt while they start stops those started
                spawn_workers(grid, n, storage_url=storage, tracking_uri=tracking, sets=args.set, gpus=gpus,
                              device=args.device, plots=bool(args.plots), threads=threads,
                              index_base=args.worker_index, wait=args.wait, fuse=args.fuse, procs=procs)
            if dist is not None and not dist.is_main:
                follow(dist, options, stopped)
                ended_together = True
                return 0
            statuses: list[str] = []  # of every trial, those that failed before training too (no outcome)
            try:
                work(grid.name, storage, tracking, options, echo=lambda s: print(s, flush=True), dist=dist,
                     check=lambda store: check_owner(grid, store, shown=hide_password(storage)), statuses=statuses)
                ended_together = True
            except GridError as err:  # the study belongs to another grid file of the same name (bench.study_owner)
                ended_together = True  # work told the other ranks to stop
                print(f"bench worker: {err}", file=sys.stderr)
                return 2
            except StudyNotReady as err:
                ended_together = True
                if new_journal is not None and new_journal.is_file() and new_journal.stat().st_size == 0:
                    new_journal.unlink()  # opened to look for the study: not left behind as if one had run here
                print(f"bench worker: {err}", file=sys.stderr)
                return 2
        except KeyboardInterrupt as err:  # the workers started here stop too, giving their trials back
            # rank 0's `work` told the other ranks to stop (unless a training step left them behind: no barrier
            # then, `in_step`), so they wait in the exit barrier; without it they died there with gloo's traceback.
            # Another rank meets it there once it has that stop, whether or not a signal came meanwhile
            ended_together = dist is not None and (dist.is_main or bool(stopped))
            stop_workers(procs, cause=err, told=told)
            raise
        finally:
            codes = wait_workers(procs, told=told)
            distributed.shutdown(ended_together=ended_together)
    return 0 if "failed" not in statuses and not any(codes) else 1
