"""Shared fixtures: tests run on the CPU with tiny generated data, in a temporary working directory."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: idle threads must not spin on 2 cores

import numpy as np
import pytest
import torch

os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

#: One softmax trial on ``tiny-blobs`` (the `tiny_dataset` fixture): a grid for tests of what happens around it.
TINY_GRID = """
name: tiny
base: {dataset: tiny-blobs, backbone: lenet++, embedding_dim: 4, epochs: 1, batch_size: 16}
grid:
  loss: [softmax]
seeds: [0]
"""


@pytest.fixture(autouse=True)
def sigint_raises_keyboard_interrupt():
    """Python's own SIGINT handler for every test: a shell without job control starts a background command
    (``.ci/run &``, nohup) with SIGINT ignored, Python keeps it ignored, and the tests that send themselves a
    SIGINT to check what Ctrl-C does would see nothing happen. SIGTERM's handler is put back after each test:
    ``bench run``, ``bench worker`` and ``bench.distributed`` called in-process install theirs for good."""
    import signal

    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    sigterm = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGINT, before)
    signal.signal(signal.SIGTERM, sigterm)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Runs the test inside an empty working directory (mlflow.db and friends land there)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def write_tiny_mnist(root, train: int = 40, test: int = 20) -> None:
    """Random 28x28 digits with labels 0..9 in turn, as MNIST's four IDX files under ``root`` (created)."""
    from registry.datasets.idx import write_idx

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", train), ("t10k", test)):
        write_idx(root / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(root / f"{prefix}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))


@pytest.fixture
def tiny_dataset():
    """Registers ``tiny-blobs``: 4 classes of 8x8 one-channel images, each class a bright quadrant plus noise,
    80 train and 40 test images; removed again after the test."""
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

    @DATASETS.register("tiny-blobs")
    def tiny_blobs(train_size: int = 80, test_size: int = 40) -> DataBundle:
        """Four-class generated blobs for tests."""
        return DataBundle("tiny-blobs", 4, 1, (8, 8), make(train_size, 0), make(test_size, 1))

    yield "tiny-blobs"
    DATASETS.unregister("tiny-blobs")


@pytest.fixture
def bn_backbone():
    """Registers ``bn-linear``: the tiny blobs (8x8) flattened through a linear layer and BatchNorm1d, the
    smallest backbone whose training step fails on a batch of one sample; removed again after the test."""
    from registry import BACKBONES

    @BACKBONES.register("bn-linear")
    def bn_linear(embedding_dim: int, in_chans: int) -> torch.nn.Module:
        """Flatten, linear, BatchNorm1d (for tests)."""
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(in_chans * 64, embedding_dim),
                                   torch.nn.BatchNorm1d(embedding_dim))

    yield "bn-linear"
    BACKBONES.unregister("bn-linear")
