"""DistributedDataParallel: two gloo processes on the CPU train the same weights as one process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from optuna.trial import TrialState

from bench.grid import load_grid
from bench.trial import TrialOptions, build_models, load_dataset, run_trial
from tests.sweeps.conftest import bench_env, mlflow_children, optuna_trials

ENTRY = str(Path(__file__).with_name("_ddp_entry.py"))

# 80 training images in global batches of 15: the ranks get 8 and 7 images per step and the last batch
# (5 images) splits 3/2, so the per-rank loss scaling is exercised on every step. SGD, because Adam turns
# float summation-order noise in near-zero gradients into lr-sized steps (sign(g) for |g| ~ 1e-9).
GRID = """\
name: ddp
base:
  dataset: tiny-blobs
  backbone: {name: lenet++, feature_prelu: false}
  loss: {name: cosface, s: 10.0, m: 0.1}
  embedding_dim: 16
  epochs: 6
  batch_size: 15
  eval_batch_size: 64
  optimizer: {name: sgd, lr: 0.05, momentum: 0.9}
seeds: [3]
"""


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           ENTRY, *args], cwd=cwd, env=bench_env(), capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_process_gloo_trial_matches_one_process_on_the_same_global_batch(tmp_path, write_grid, tiny_dataset):
    path = write_grid(GRID)
    torchrun("distributed", "--grid", str(path), "--device", "cpu", "--checkpoint", str(tmp_path / "ddp.pt"),
             cwd=tmp_path)
    spec = load_grid(path).trials()[0]
    single = run_trial(spec, TrialOptions(device="cpu", progress=False, checkpoint_path=tmp_path / "single.pt"))
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=False)
    one = torch.load(tmp_path / "single.pt", weights_only=False)
    assert ddp["epoch"] == one["epoch"] == spec.epochs - 1
    for part in ("backbone", "head"):  # the margin head's class weights are replicated and averaged too
        assert ddp[part].keys() == one[part].keys()
        for name, value in one[part].items():
            torch.testing.assert_close(ddp[part][name], value, atol=1e-5, rtol=0, msg=f"{part}.{name}")
    # ...and the weights did move far beyond that tolerance, so the comparison means something
    torch.manual_seed(spec.seed)
    backbone, head, _ = build_models(spec, load_dataset(spec))
    moved = max((one["backbone"][k] - v).abs().max().item() for k, v in backbone.state_dict().items())
    assert moved > 1e-2
    # the epoch metrics are agreed over the ranks: what one process sees
    assert ddp["history"][-1]["train_loss"] == pytest.approx(single.history[-1]["train_loss"], abs=1e-5)
    assert ddp["history"][-1]["test_acc"] == single.history[-1]["test_acc"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_torchrun_worker_trains_each_trial_on_both_ranks_and_rank_zero_logs(in_tmp, write_grid, tiny_dataset):
    from bench.workers import run_study

    grid = load_grid(write_grid(GRID.replace("name: ddp", "name: ddp-study").replace("epochs: 6", "epochs: 1")
                                .replace("seeds: [3]", "seeds: [0, 1]")))
    prepared = run_study(grid, workers=0, echo=lambda s: None)  # enqueue only
    torchrun("bench", "worker", "--grid", str(grid.path), "--device", "cpu", "--no-progress", cwd=in_tmp)
    trials = optuna_trials("ddp-study", prepared.storage)
    assert len(trials) == 2 and all(t.state == TrialState.COMPLETE for t in trials)
    runs = mlflow_children("ddp-study", prepared.tracking_uri)
    assert len(runs) == 2  # one run per trial: only rank 0 logs
    assert all(r.data.tags["world_size"] == "2" and r.info.status == "FINISHED" for r in runs)


def test_batchnorm_backbone_is_refused_under_ddp_off_cuda():
    # gloo on the CPU has no SyncBatchNorm: each rank would normalize by its own shard's statistics, so a
    # 2-process trial would not train the one-process weights (it used to run on silently). Refused before
    # DDP is built, so no process group is needed here.
    from torch import nn

    from bench.distributed import DistContext, wrap

    ctx = DistContext(rank=0, world_size=2, local_rank=0, backend="gloo", device="cpu")
    with pytest.raises(ValueError, match=r"BatchNorm layers \(BatchNorm2d\).*SyncBatchNorm needs CUDA.*one process"):
        wrap(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)), ctx)
