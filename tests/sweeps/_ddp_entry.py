"""torchrun entry for the DDP tests: registers the tests' tiny-blobs dataset, then runs ``bench.distributed``
(``_ddp_entry.py distributed ARGS``) or the ``bench`` CLI (``_ddp_entry.py bench worker ARGS``)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def register_tiny_blobs() -> None:
    """The same ``tiny-blobs`` as the ``tiny_dataset`` fixture in tests/conftest.py."""
    import numpy as np
    import torch

    from registry import DATASETS
    from registry.datasets import DataBundle, TensorSplit

    def make(n: int, seed: int) -> TensorSplit:
        rng = np.random.default_rng(seed)
        labels = np.arange(n) % 4
        images = rng.normal(0.0, 0.3, size=(n, 1, 8, 8)).astype(np.float32)
        for i, c in enumerate(labels):
            r, q = divmod(int(c), 2)
            images[i, 0, r * 4:(r + 1) * 4, q * 4:(q + 1) * 4] += 2.0
        return TensorSplit(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)))

    if "tiny-blobs" not in DATASETS:
        @DATASETS.register("tiny-blobs")
        def tiny_blobs(train_size: int = 80, test_size: int = 40) -> DataBundle:
            """Four-class generated blobs for tests."""
            return DataBundle("tiny-blobs", 4, 1, (8, 8), make(train_size, 0), make(test_size, 1))


def inject_fault(fault: str) -> None:
    """``$MARGINBENCH_TEST_FAULT``: ``rank0-checkpoint`` (rank 0's first checkpoint write fails) or ``rank1-step``
    (rank 1's fifth training step fails): a failure on one rank only. ``rank1-step-rank0-busy``: rank 1's fifth step
    fails while rank 0 is busy in its own fifth step (a sleep, where torchrun's SIGTERM reaches it before a
    collective could fail). ``pause``: every rank writes ``paused-<rank>`` in the working directory at its fifth
    step and sleeps there (for a test that interrupts the job). ``rank0-start-trial``: rank 0's first MLflow trial
    run cannot be opened (the tracking store fails there). ``rank1-pairs``: rank 1 raises if it evaluates the
    verification pairs (only rank 0 should); ``rank1-test-split``: if it evaluates the closed-set test split.
    ``rank0-record``: rank 0 trains the trial, then the tracking store fails as its result is recorded and again as
    that failure is recorded (`bench.runner.RecordingFailed`); ``rank0-tracker``: rank 0 cannot open the study's
    MLflow run (`bench.tracking.StudyTracker` fails). ``rank0-interrupt-open``: rank 0 gets a SIGINT (Ctrl-C) as it
    opens its first trial's MLflow run, before it tells the other ranks the run is open. ``rank0-pause-open``: rank 0
    writes ``paused-0`` and sleeps as it is about to open its first trial's run, rank 1 writes ``paused-1`` as it
    waits for rank 0's word (for a test that stops the whole job there)."""
    import os
    import time

    rank = int(os.environ["RANK"])
    if fault in ("rank1-step-rank0-busy", "pause") and (rank == 0 or fault == "pause"):
        import bench.distributed

        shard, steps = bench.distributed.shard_batch, []

        def pausing_shard(*args):
            steps.append(1)
            if len(steps) == 5:
                if fault == "pause":
                    Path(f"paused-{rank}").touch()
                time.sleep(120)
            return shard(*args)

        bench.distributed.shard_batch = pausing_shard
    if fault == "rank1-step-rank0-busy":
        fault = "rank1-step"
    if fault == "rank1-pairs" and rank == 1:
        import bench.trial

        def no_pairs(*args, **kwargs):
            raise AssertionError("rank 1 evaluated the verification pairs (injected check)")

        bench.trial._verification = no_pairs
    elif fault == "rank1-test-split" and rank == 1:
        import bench.trial

        def no_test_split(*args, **kwargs):
            raise AssertionError("rank 1 evaluated the test split (injected check)")

        bench.trial.evaluate_split = no_test_split
    elif fault == "rank0-start-trial" and rank == 0:
        from mlflow.exceptions import MlflowException

        from bench.tracking import StudyTracker

        start, starts = StudyTracker.start_trial, []

        def failing_start(self, *args, **kwargs):
            starts.append(1)
            if len(starts) == 1:
                raise MlflowException("the tracking store is locked (injected)")
            return start(self, *args, **kwargs)

        StudyTracker.start_trial = failing_start
    elif fault == "rank0-interrupt-open" and rank == 0:
        import signal

        from bench.tracking import StudyTracker

        start, starts = StudyTracker.start_trial, []

        def interrupted_start(self, *args, **kwargs):
            starts.append(1)
            if len(starts) > 1:
                return start(self, *args, **kwargs)
            create = self.client.create_run

            def create_then_interrupt(*args, **kwargs):
                created = create(*args, **kwargs)
                os.kill(os.getpid(), signal.SIGINT)  # deferred across the run's creation, raised once it is noted
                return created

            self.client.create_run = create_then_interrupt
            try:
                return start(self, *args, **kwargs)
            finally:
                del self.client.create_run

        StudyTracker.start_trial = interrupted_start
    elif fault == "rank0-pause-open" and rank == 0:
        from bench.tracking import StudyTracker

        start = StudyTracker.start_trial

        def paused_start(self, *args, **kwargs):
            Path("paused-0").touch()
            time.sleep(120)
            return start(self, *args, **kwargs)

        StudyTracker.start_trial = paused_start
    elif fault == "rank0-pause-open" and rank == 1:
        import bench.distributed

        broadcast = bench.distributed.broadcast_object

        def waiting_broadcast(*args, **kwargs):
            Path("paused-1").touch()
            return broadcast(*args, **kwargs)

        bench.distributed.broadcast_object = waiting_broadcast
    elif fault == "rank0-record" and rank == 0:
        from mlflow.exceptions import MlflowException

        import bench.runner
        from bench.tracking import StudyTracker

        def failing_finish(*args, **kwargs):
            raise MlflowException("the tracking store is locked (injected, recording the result)")

        def failing_record(self, *args, **kwargs):
            raise MlflowException("the tracking store is locked (injected, recording the failure)")

        bench.runner._finish_run = failing_finish
        StudyTracker.record_failure = failing_record
    elif fault == "rank0-tracker" and rank == 0:
        from mlflow.exceptions import MlflowException

        from bench.tracking import StudyTracker

        def failing_init(self, *args, **kwargs):
            raise MlflowException("the tracking server answered 503 (injected)")

        StudyTracker.__init__ = failing_init
    elif fault == "rank0-checkpoint" and rank == 0:
        import bench.trial

        save, calls = bench.trial._save_checkpoint, []

        def failing_save(path, state):
            calls.append(path)
            if len(calls) == 1:
                raise OSError("No space left on device (injected)")
            save(path, state)

        bench.trial._save_checkpoint = failing_save
    elif fault == "rank1-step" and rank == 1:
        import bench.distributed

        shard, steps = bench.distributed.shard_batch, []

        def failing_shard(*args):
            steps.append(1)
            if len(steps) == 5:
                raise RuntimeError("data error on rank 1 (injected)")
            return shard(*args)

        bench.distributed.shard_batch = failing_shard


if __name__ == "__main__":
    import os

    register_tiny_blobs()
    if os.environ.get("MARGINBENCH_TEST_FAULT"):
        inject_fault(os.environ["MARGINBENCH_TEST_FAULT"])
    if sys.argv[1] == "distributed":
        from bench.distributed import main
    else:
        from bench.cli import main
    raise SystemExit(main(sys.argv[2:]))
