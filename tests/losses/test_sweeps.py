"""The loss grids in sweeps/: they validate, name the table's rows, and each `combined` row is the named loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from registry import LOSSES
from tests.conftest import write_tiny_mnist

ROOT = Path(__file__).resolve().parents[2]
MNIST = ROOT.parent / "shared" / "data" / "mnist-10k"
TABLE = ["softmax", "L-softmax_v1", "L-softmax_v2", "A-softmax_v1", "A-softmax_v2", "norm-softmax", "CosFace_v1",
         "CosFace_v2", "ArcFace_v1", "ArcFace_v2", "ArcFace_v3"]

#: The table's rows as the dedicated heads (lambda = 0 for L-/A-Softmax: `combined` does not anneal).
EQUIVALENT = {
    "softmax": ("softmax", {"bias": False}),
    "L-softmax_v1": ("lsoftmax", {"m": 2, "base": 0.0, "lambda_min": 0.0}),
    "L-softmax_v2": ("lsoftmax", {"m": 3, "base": 0.0, "lambda_min": 0.0}),
    "A-softmax_v1": ("sphereface", {"m": 2, "base": 0.0, "lambda_min": 0.0}),
    "A-softmax_v2": ("sphereface", {"m": 3, "base": 0.0, "lambda_min": 0.0}),
    "norm-softmax": ("norm-softmax", {"s": 1.0}),
    "CosFace_v1": ("cosface", {"s": 4.0, "m": 0.1}),
    "CosFace_v2": ("cosface", {"s": 4.0, "m": 0.2}),
    "ArcFace_v1": ("arcface", {"s": 4.0, "m": 0.1}),
    "ArcFace_v2": ("arcface", {"s": 4.0, "m": 0.2}),
    "ArcFace_v3": ("arcface", {"s": 4.0, "m": 0.3}),
}


@pytest.fixture
def grids(monkeypatch, tmp_path):
    """Loads grids from sweeps/ in a working directory where their MNIST root, ``../shared/data/mnist-10k``,
    resolves: the repository root beside the real subset, or else a folder beside small generated IDX files."""
    from bench.grid import load_grid

    if MNIST.is_dir():
        monkeypatch.chdir(ROOT)
    else:
        write_tiny_mnist(tmp_path / "shared" / "data" / "mnist-10k")
        (tmp_path / "work").mkdir()
        monkeypatch.chdir(tmp_path / "work")
    return lambda name: load_grid(ROOT / "sweeps" / name)


def test_losses_grid_has_the_table_rows_and_training_settings(grids):
    grid = grids("losses.yaml")
    labels = [cell.labels["loss"] for cell in grid.cells]
    assert labels == TABLE
    for cell in grid.cells:
        spec = cell.spec
        assert (spec.dataset, spec.backbone, spec.embedding_dim) == ("mnist", "lenet++", 2)
        assert (spec.epochs, spec.batch_size, spec.grad_clip) == (20, 128, 5.0)
        if cell.labels["loss"].startswith("CosFace"):
            assert (spec.optimizer, dict(spec.optimizer_params)) == ("sgd", {"lr": 0.01, "momentum": 0.9})
        else:
            assert (spec.optimizer, dict(spec.optimizer_params)) == ("adam", {"lr": 0.001})


def test_sphereface_grid_crosses_three_losses_with_2d_and_3d(grids):
    grid = grids("sphereface-mnist.yaml")
    cells = {(c.spec.loss, c.spec.embedding_dim) for c in grid.cells}
    assert cells == {(loss, d) for loss in ("softmax", "modified-softmax", "sphereface") for d in (2, 3)}
    assert all(dict(c.spec.loss_params) == {"m": 4} for c in grid.cells if c.spec.loss == "sphereface")


@pytest.mark.parametrize("name", ["losses.yaml", "sphereface-mnist.yaml"])
def test_report_tables_parse(grids, name):
    from reports.spec import parse_tables

    grid = grids(name)
    assert parse_tables(grid.raw.get("report"), axes=grid.axes)


@pytest.mark.parametrize("label", TABLE)
def test_each_combined_row_is_the_named_loss(grids, label):
    # Same weights, same embeddings: the row's `combined` head gives the dedicated head's logits and loss.
    cell = next(c for c in grids("losses.yaml").cells if c.labels["loss"] == label)
    torch.manual_seed(0)
    row = LOSSES.create(cell.spec.loss, embedding_dim=2, num_classes=10, **cell.spec.loss_params).double().eval()
    name, params = EQUIVALENT[label]
    ref = LOSSES.create(name, embedding_dim=2, num_classes=10, **params).double().eval()
    with torch.no_grad():
        ref.weight.copy_(row.weight)
    emb = torch.randn(256, 2, dtype=torch.float64) * 3
    labels = torch.randint(0, 10, (256,))
    torch.testing.assert_close(row.logits(emb, labels), ref.logits(emb, labels), atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(row.logits(emb), ref.logits(emb), atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(row(emb, labels), ref(emb, labels), atol=1e-9, rtol=1e-9)
