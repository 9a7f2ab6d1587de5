"""One trial on several processes with DistributedDataParallel, started by ``torchrun``.

Two ways in:

- ``torchrun --nproc_per_node 4 -m bench worker --grid FILE --storage URL ...``: a worker whose trials each
  use all four processes (GPUs). Rank 0 pops trials from the study, logs to MLflow and tells Optuna; it
  sends each trial's spec to the other ranks once the trial's MLflow run is open (a run that fails to open fails
  the trial on rank 0 alone), and they train alongside it and log nothing.
- ``torchrun --nproc_per_node 2 -m bench.distributed --grid FILE --cell 0 --seed 0``: one grid trial, outside
  any study (``--checkpoint PATH`` keeps its final weights; ``--tracking`` logs it as a child run of the
  grid's study; without it the trial's pictures are not kept). With ``--tracking`` the other ranks start once
  rank 0's run is open; a run that cannot open, or a tracking store that fails as rank 0 records the outcome, ends
  every rank with one line (rank 0 exits 1). SIGTERM (torchrun passes a scheduler's on to every rank) is taken as
  Ctrl-C, as in ``bench run``: rank 0 closes the trial's run as interrupted, and each rank exits 130 with one line.

What changes in a trial (see `bench.trial.run_trial`): backbone and margin head are wrapped together in
one DDP module, so the head's class weights are replicated and their gradients averaged like the
backbone's. Every rank draws the same permutation of the training set; each global batch of
``batch_size`` images is split by stride (rank r takes rows ``r, r + world, ...``), and each rank's loss is
scaled by ``n_local * world / n_global`` so the averaged gradient is the gradient of the global batch's
mean loss, also when the last batch does not divide evenly. A final batch smaller than the world size is
dropped. Epoch metrics, the non-finite-loss check and a pruner's decision are agreed across ranks.
Evaluation (test split, verification pairs, pictures) runs on rank 0 alone (the weights are the same on every rank);
only rank 0 writes checkpoints and logs, and the other ranks' results hold the training metrics only.

A failure on one rank (rank 0's checkpoint write, pictures or pruner, a rank that cannot build the trial)
is agreed at the same points, after the trial is built and at the end of each epoch (`agree`): every rank
raises (the others `RankFailed` with the failed rank's error) and a worker goes on to its next trial. A
failure inside an epoch's training steps cannot be agreed without a host sync per step: it leaves the other
ranks waiting in a collective this rank never joins, so the rank notes it (`out_of_step_on_error`) and its
worker stops (`check_in_step`); its process exits and torchrun ends the others. The error goes to torchrun's
store first, so that the others fail the trial with it (`RankFailed`) rather than take torchrun's SIGTERM for an
interruption and queue the trial again.
On CUDA, BatchNorm layers become SyncBatchNorm; off CUDA, where SyncBatchNorm does not run, a backbone with
BatchNorm is refused. CenterLoss (its centres move outside the optimizer) is not supported under DDP.

Backend: NCCL on CUDA, gloo on the CPU (``MARGINBENCH_DIST_BACKEND`` overrides).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import logging
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from bench.grid import Grid
    from bench.spec import TrialSpec
    from bench.trial import TrialOptions

__all__ = ["DistContext", "init_from_env", "is_launched", "broadcast_object", "any_true", "agree", "RankFailed",
           "RankInterrupted", "out_of_step_on_error", "in_step", "check_in_step", "shard_batch", "wrap", "main"]

log = logging.getLogger(__name__)

#: How long ranks wait for each other (rank 0 may poll the study for a long time between trials).
TIMEOUT = datetime.timedelta(hours=float(os.environ.get("MARGINBENCH_DIST_TIMEOUT_HOURS", "24")))


@dataclass(frozen=True)
class DistContext:
    """This process's place in a torchrun job.

    Attributes:
        rank, world_size, local_rank: from torchrun's environment.
        backend: ``nccl`` or ``gloo``.
        device: the device this rank trains on (``cuda:<local_rank>`` or ``cpu``).
    """

    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_launched() -> bool:
    """True inside a torchrun job of more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str | None = None) -> DistContext | None:
    """Joins the torchrun job (once); None when not launched by torchrun with several processes.

    Args:
        device: ``cpu`` forces the CPU and gloo; otherwise CUDA (``cuda:<LOCAL_RANK>``) when present.
    """
    import torch.distributed as dist

    if not is_launched():
        return None
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    use_cuda = torch.cuda.is_available() and (device is None or not str(device).startswith("cpu"))
    backend = os.environ.get("MARGINBENCH_DIST_BACKEND") or ("nccl" if use_cuda else "gloo")
    dev = f"cuda:{local_rank}" if use_cuda else "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=TIMEOUT)
    return DistContext(rank, world, local_rank, backend, dev)


def shutdown(*, ended_together: bool = False) -> None:
    """Leaves the process group (nothing when not in one).

    Args:
        ended_together: every rank reaches this call at the same point (the job ends normally): they meet in a barrier
            first. A gloo worker thread may still be releasing the last collective's tensors, which Python has
            already dropped, and that needs the GIL; if the interpreter is finalizing by then, the thread exits
            inside a destructor and the rank aborts ("terminate called without an active exception"), failing a
            torchrun job whose trial had finished. destroy_process_group does not stop those threads once DDP
            has held the group (it keeps a reference), so they must be done before the exit: the barrier
            releases the GIL while it waits, and gloo's barrier waits for the collectives queued before it.
            False after an error, when another rank may never arrive (the barrier is also skipped once a
            training step failed, `in_step`).
    """
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    if ended_together and in_step():
        dist.barrier()
    dist.destroy_process_group()


def broadcast_object(obj: Any, ctx: DistContext, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (picklable objects); ``obj`` is ignored on the other ranks.

    SIGINT and SIGTERM are deferred to the end (`bench.tracking._interrupts_deferred`): the object goes in two
    collectives (its size, then its bytes), and an interrupt raised between them (a rank waiting for rank 0's word
    gets the job's SIGTERM there) left that rank gone mid-message, and rank 0 failed in the second one with gloo's
    "Connection closed by peer" as it sent its stop. A rank blocked in a collective runs no Python signal handler
    until it returns anyway, so this makes nothing wait longer."""
    import torch.distributed as dist

    from bench.tracking import _interrupts_deferred

    box = [obj if ctx.rank == src else None]
    with _interrupts_deferred():
        dist.broadcast_object_list(box, src=src)
    return box[0]


def any_true(flag: bool | torch.Tensor, ctx: DistContext, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any."""
    import torch.distributed as dist

    t = torch.as_tensor(flag, dtype=torch.int32, device=device).reshape(1).clone()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


class RankFailed(RuntimeError):
    """Raised on the ranks of a trial that did not fail when another one did (see `agree`)."""


def agree(error: BaseException | None, stop: bool, ctx: DistContext, device: torch.device | str) -> bool:
    """A point where every rank meets: whether any rank stops (rank 0's pruner), and whether any rank failed.

    A failure on one rank only (rank 0's checkpoint write or pictures, its pruner's storage) used to leave the
    other ranks waiting forever in the next collective (a ``bench worker`` hung). Here each rank learns of it:
    the failed rank goes on to raise its own ``error``; the others raise `RankFailed` with its text.

    Args:
        error: this rank's error since the last agreement, None when it went well.
        stop: this rank would stop the trial here.

    Returns:
        True when any rank stops.

    Raises:
        RankFailed: on a rank without an error when another rank had one (the lowest such rank is named).
    """
    import torch.distributed as dist

    t = torch.tensor([ctx.rank if error is not None else ctx.world_size, 0 if stop else 1], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    failed, go_on = t.tolist()
    if failed < ctx.world_size:  # the failed rank's error, whole, before an interrupt (`broadcast_object`)
        message = broadcast_object(f"{type(error).__name__}: {error}" if error is not None else None, ctx, src=failed)
        if error is None:
            raise RankFailed(f"rank {failed} failed: {message}")
    return not go_on


_out_of_step: str | None = None


@contextlib.contextmanager
def out_of_step_on_error(ctx: DistContext | None) -> Iterator[None]:
    """Around a trial's training steps, where ranks meet only in DDP's own collectives: an error there leaves
    the other ranks waiting in a collective this rank never joins, and the process group cannot serve another
    trial. The error is noted (`check_in_step` then stops the worker) and propagates. Nothing with ``ctx`` None
    (one process).

    The other ranks learn of it when their process is ended (torchrun's SIGTERM, taken as an interruption) or
    their collective fails ("Connection closed by peer"): their trial would be queued again, to fail the same way
    on every restart, or fail with that message, the error itself only in this rank's log. So an exception here
    is also left in torchrun's store (`_share_failure`, before this rank's exit ends the others), and a rank whose
    steps end with another rank's failure there raises `RankFailed` with it instead, ignoring torchrun's SIGTERM
    from then on (the job is ending for that failure; it is recorded like one in one process). A KeyboardInterrupt
    is not told: the whole job stopping goes back in the queue."""
    global _out_of_step
    try:
        yield
    except BaseException as err:  # KeyboardInterrupt too: the others are left in the collective all the same
        if ctx is None or _out_of_step is not None:
            raise
        with _sigterm_held() as ignore:  # torchrun's SIGTERM, here before the failure is known, waits for it
            _out_of_step = f"rank {ctx.rank} failed in a training step ({type(err).__name__}: {err})"
            other = _share_failure(ctx, _out_of_step if isinstance(err, Exception) else None)
            if other is not None:
                _out_of_step = other
                ignore()
        if other is not None:
            raise RankFailed(other) from err
        raise


def _share_failure(ctx: DistContext, failure: str | None) -> str | None:
    """Leaves this rank's ``failure`` (None: nothing) in the job's key-value store (torchrun's, at
    ``MASTER_ADDR:MASTER_PORT``: it outlives any rank and works when the process group does not), and returns
    what another rank left there (the lowest such rank), or None."""
    import torch.distributed as dist

    def key(rank: int) -> str:
        return f"marginbench/step_failure/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{rank}"

    try:
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                              timeout=datetime.timedelta(seconds=10))
        if failure is not None:
            store.set(key(ctx.rank), failure)
        for rank in range(ctx.world_size):
            if rank != ctx.rank and store.check([key(rank)]):
                return store.get(key(rank)).decode()
    except Exception:  # then each rank records what it sees, as before
        log.warning("rank %d could not use torchrun's store to share a failure", ctx.rank, exc_info=True)
    return None


@contextlib.contextmanager
def _sigterm_held() -> Iterator[Callable[[], None]]:
    """Holds SIGTERM back; yields a function that drops it for good (the signal ignored from then on). Else a
    SIGTERM that came meanwhile is raised again on the way out. Nothing outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    held: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: held.append(signum))
    ignored = False

    def ignore() -> None:
        nonlocal ignored
        ignored = True

    try:
        yield ignore
    finally:
        restore = previous if previous is not None else signal.SIG_DFL  # None: a handler not set from Python
        signal.signal(signal.SIGTERM, signal.SIG_IGN if ignored else restore)
        if held and not ignored:
            signal.raise_signal(signal.SIGTERM)


def in_step() -> bool:
    """False once a failure inside a training step left this process's ranks out of step."""
    return _out_of_step is None


def check_in_step() -> None:
    """Stops a torchrun worker whose ranks were left out of step by a failure (see `out_of_step_on_error`).

    Raises:
        SystemExit: its process exits and torchrun ends the other ranks, which would otherwise wait in a
            collective forever.
    """
    if _out_of_step is not None:
        raise SystemExit(f"bench: {_out_of_step}; the other ranks were left in the middle of the trial, so this "
                         f"torchrun job stops (torchrun ends the other ranks)")


def all_sum(tensors: Sequence[torch.Tensor], ctx: DistContext) -> None:
    """Sums each tensor over ranks, in place."""
    import torch.distributed as dist

    for t in tensors:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)


def first_bad_step(first_bad: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """The earliest non-finite step over ranks (-1 when none), in place."""
    import torch.distributed as dist

    big = torch.iinfo(first_bad.dtype).max
    t = torch.where(first_bad < 0, torch.full_like(first_bad, big), first_bad)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    first_bad.copy_(torch.where(t == big, torch.full_like(t, -1), t))
    return first_bad


def shard_batch(images: torch.Tensor, labels: torch.Tensor,
                ctx: DistContext) -> tuple[torch.Tensor, torch.Tensor, float]:
    """This rank's rows of a global batch and the loss scale ``n_local * world / n_global``."""
    n_global = len(labels)
    images, labels = images[ctx.rank::ctx.world_size], labels[ctx.rank::ctx.world_size]
    return images, labels, len(labels) * ctx.world_size / max(n_global, 1)


def wrap(module: nn.Module, ctx: DistContext) -> nn.Module:
    """``module`` (backbone and head together) in DDP; BatchNorm synchronized on CUDA.

    Raises:
        ValueError: BatchNorm layers off CUDA, where SyncBatchNorm does not run: each rank would normalize by
            its own shard's statistics, which is not the one-process trial on the global batch.
    """
    from torch.nn.parallel import DistributedDataParallel

    device = torch.device(ctx.device)
    if device.type == "cuda":
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return DistributedDataParallel(module, device_ids=[device.index], output_device=device.index)
    norms = sorted({type(m).__name__ for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)})
    if norms:
        raise ValueError(f"the backbone has BatchNorm layers ({', '.join(norms)}), which DistributedDataParallel "
                         f"cannot synchronize on {device.type} (SyncBatchNorm needs CUDA): each rank would normalize "
                         f"by its own shard, not the global batch; run the trial on GPUs or in one process")
    return DistributedDataParallel(module)


# ------------------------------------------------------------------------------------------- one trial
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.distributed", description="Run one grid trial under "
                                "torchrun with DistributedDataParallel (rank 0 logs).")
    p.add_argument("--grid", required=True, metavar="FILE")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--cell", type=int, default=0, help="cell index in grid order (default 0)")
    p.add_argument("--seed", type=int, default=None, help="seed (default: the grid's first)")
    p.add_argument("--device", default=None, help="cpu forces gloo on the CPU")
    p.add_argument("--checkpoint", type=Path, default=None, help="save (and resume from) this checkpoint")
    p.add_argument("--tracking", action="store_true", help="log the trial as an MLflow child run of the study")
    p.add_argument("--tracking-uri", default=None)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m bench.distributed`` (one trial, no study)."""
    from bench.commands._common import exit_status, load_grid_and_config_or_exit
    from bench.commands.worker import on_sigterm
    from bench.runner import RecordingFailed
    from bench.trial import TrialOptions

    args = _parser().parse_args(argv)
    try:  # as bench run checks it: --set as typed, the grid's problems and its study keys' in one listing
        grid, _ = load_grid_and_config_or_exit(args, prog="bench.distributed")
    except SystemExit as err:
        return exit_status(err)
    if not 0 <= args.cell < len(grid.cells):
        print(f"bench.distributed: --cell must be in 0..{len(grid.cells) - 1}, but got {args.cell}", file=sys.stderr)
        return 2
    # torchrun passes its SIGTERM (a scheduler's) to every rank: taken as Ctrl-C, as bench run and bench worker do,
    # so rank 0 closes its trial's run as interrupted instead of dying with the run left RUNNING
    signal.signal(signal.SIGTERM, on_sigterm)
    ctx = init_from_env(args.device)
    device = ctx.device if ctx is not None else args.device
    if device and str(device).startswith("cpu"):
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // (ctx.world_size if ctx else 1)))
    spec = grid.cells[args.cell].spec.replace(seed=grid.seeds[0] if args.seed is None else args.seed)
    options = TrialOptions(device=device, checkpoint_path=args.checkpoint, progress=False, distributed=ctx)
    trial = f"{spec.label} seed={spec.seed}"
    ended_together = False  # every rank reached the end of the trial (shutdown's barrier)
    try:
        try:
            status, error = _one_trial(spec, grid, args, options, ctx)
        except (RecordingFailed, _RunNotOpened, RankFailed) as err:
            ended_together = True
            where = f"rank {ctx.rank}: " if ctx is not None and not ctx.is_main else ""
            why = f"failed: {err}" if isinstance(err, RecordingFailed) else str(err)  # the others say it
            print(f"bench.distributed: {where}{trial}: {why}", file=sys.stderr)
            # another rank's failure: that rank exits 1, and torchrun names it (the first to exit 1) as the cause
            return 0 if isinstance(err, RankFailed) else 1
        except _InterruptTold:  # the other ranks were told, and meet this rank in the barrier
            ended_together = True
            print(f"bench.distributed: {trial}: interrupted before training", file=sys.stderr)
            return 130
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM in training: rank 0 closed the run as interrupted (no barrier:
            # the other ranks may be anywhere in their steps); one line, as `bench` says "interrupted"
            where = f"rank {ctx.rank}: " if ctx is not None and not ctx.is_main else ""
            print(f"bench.distributed: {where}{trial}: interrupted", file=sys.stderr)
            return 130
        except Exception:
            # raised where every rank stops (an agreed error), or on one rank outside the collectives (before or
            # after training): the others reach the barrier too. A failure inside a training step skips it (in_step)
            ended_together = True
            raise
        ended_together = True
        if ctx is None or ctx.is_main:
            print(f"{trial}: {status}{f' {error}' if error else ''}")
    finally:
        shutdown(ended_together=ended_together)
    return 0 if status != "failed" else 1


def _one_trial(spec: TrialSpec, grid: Grid, args: argparse.Namespace, options: TrialOptions,
               ctx: DistContext | None) -> tuple[str, str | None]:
    """Runs `main`'s trial on this rank; rank 0 logs it to MLflow with ``--tracking``.

    With ``--tracking`` the other ranks start training once rank 0 says its MLflow run is open: started before,
    a run that failed to open left them waiting in a collective rank 0 never joined, until its exit broke the
    connection (gloo's "Connection closed by peer" traceback, rank 0's error only in rank 0's log).

    Returns:
        ``(status, error)``: the trial's status on this rank, and its error when rank 0 recorded it as failed.

    Raises:
        RecordingFailed: (rank 0, ``--tracking``) the tracking store failed as the trial's outcome was recorded.
        _RunNotOpened: (rank 0, ``--tracking``) the trial's MLflow run could not be opened; nothing trained.
        RankFailed: on the other ranks, when rank 0 could not open the run or the trial failed on another rank.
        RankInterrupted: on the other ranks, when rank 0 was interrupted before its run was open.
        _InterruptTold: (rank 0) interrupted before its run was open; the other ranks were told.
        Exception: what the trial raises on this rank (`bench.trial.run_trial`).
    """
    from bench.trial import run_trial

    if args.tracking and (ctx is None or ctx.is_main):
        return _tracked_trial(spec, grid, args, options, ctx)
    if args.tracking:
        failure = broadcast_object(None, ctx)  # rank 0's `_tracked_trial`: None once its run is open
        if failure == _INTERRUPTED:
            raise RankInterrupted("rank 0 was interrupted (Ctrl-C or SIGTERM) before training; not trained")
        if failure is not None:
            raise RankFailed(f"rank 0 failed: {failure}")
    # its pictures (the ROC curve) are logged by nobody: in a temporary folder, removed
    with tempfile.TemporaryDirectory(prefix="marginbench-", ignore_cleanup_errors=True) as folder:
        return run_trial(spec, replace(options, artifact_dir=Path(folder))).status, None


class _RunNotOpened(RuntimeError):
    """Rank 0 could not open the trial's MLflow run (`_tracked_trial`)."""


class RankInterrupted(RankFailed):
    """Raised on the other ranks of ``python -m bench.distributed --tracking`` when rank 0 was interrupted before
    its trial's MLflow run was open (`_tracked_trial`)."""


class _InterruptTold(KeyboardInterrupt):
    """Rank 0 was interrupted before its trial's MLflow run was open, and told the other ranks (`_tracked_trial`)."""


#: What rank 0 broadcasts instead of None (run open) or a failure's text when it was interrupted before training.
_INTERRUPTED = ("interrupted",)


def _tracked_trial(spec: TrialSpec, grid: Grid, args: argparse.Namespace, options: TrialOptions,
                   ctx: DistContext | None) -> tuple[str, str | None]:
    """Rank 0 of `_one_trial` with ``--tracking``: the trial in an MLflow child run of the grid's study; the other
    ranks are told (`broadcast_object`) None once the run is open, or why it could not be.

    Raises:
        RecordingFailed: the tracking store failed as the trial's outcome was recorded.
        _RunNotOpened: the store failed as the study's or the trial's run was opened.
        _InterruptTold: interrupted (Ctrl-C, SIGTERM) before the run was open: the other ranks, waiting to hear
            from it, were told (else they waited in the broadcast until rank 0's exit broke the connection, and
            died there with gloo's traceback).
    """
    from bench.runner import RecordingFailed, execute_trial
    from bench.study import hide_password
    from bench.tracking import StudyTracker, resolve_tracking_uri

    started = False

    def start(run: Any) -> None:
        nonlocal started
        started = True
        if ctx is not None:
            broadcast_object(None, ctx)

    try:
        tracker = StudyTracker(grid.name, args.tracking_uri, description=grid.description, grid_path=str(grid.path))
        outcome = execute_trial(spec, tracker, options, extra_tags={"world_size": str(ctx.world_size if ctx else 1)},
                                on_start=start)
    except RecordingFailed:
        raise
    except KeyboardInterrupt:
        if started or ctx is None:
            raise
        broadcast_object(_INTERRUPTED, ctx)
        raise _InterruptTold from None
    except Exception as err:
        if started:  # not the store's error as the run opened (execute_trial raises no other)
            raise
        failure = (f"not trained: the MLflow tracking store {hide_password(resolve_tracking_uri(args.tracking_uri))} "
                   f"failed as its run was opened ({type(err).__name__}: {' '.join(str(err).split())})")
        if ctx is not None:
            broadcast_object(failure, ctx)
        raise _RunNotOpened(failure) from err
    return outcome.status, outcome.error


if __name__ == "__main__":
    raise SystemExit(main())
