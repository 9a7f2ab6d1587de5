"""The face grids load and validate: casia-lfw against a generated on-disk face set, failing clearly without
its paths; backbones as shipped (synthetic-faces)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench.grid import GridError, load_grid

SWEEPS = Path(__file__).resolve().parents[2] / "sweeps"
CASIA_VARS = ("CASIA_ROOT", "LFW_ROOT", "LFW_PAIRS", "CASIA_MTCNN_ROOT", "LFW_MTCNN_ROOT")


@pytest.fixture(scope="module")
def face_folder(tmp_path_factory):
    from registry.datasets.synthetic_faces import write_image_folder

    root = tmp_path_factory.mktemp("faces") / "set"
    paths = write_image_folder(root, identities=3, images_per_identity=3, test_identities=3, pairs_per_fold=1)
    # the MTCNN-aligned copy lives elsewhere, as `bench align` writes it: with the same folders the MTCNN row would
    # be the A-Softmax row's trial, which the grid check refuses
    aligned = root.parent / "mtcnn"
    shutil.copytree(root, aligned)
    return paths | {"mtcnn_train": aligned / paths["train"].relative_to(root),
                    "mtcnn_pairs_root": aligned / paths["pairs_root"].relative_to(root)}


def casia_env(paths) -> dict[str, str]:
    return {"CASIA_ROOT": str(paths["train"]), "LFW_ROOT": str(paths["pairs_root"]),
            "LFW_PAIRS": str(paths["pairs_txt"]), "CASIA_MTCNN_ROOT": str(paths["mtcnn_train"]),
            "LFW_MTCNN_ROOT": str(paths["mtcnn_pairs_root"])}


def test_casia_lfw_rows_and_schedules(face_folder):
    grid = load_grid(SWEEPS / "casia-lfw.yaml", env=casia_env(face_folder))
    rows = {cell.labels["model"]: cell.spec for cell in grid.cells}
    assert list(rows) == ["SphereFace-20 A-Softmax", "SphereFace-20 CosFace", "SphereFace-20 A-Softmax (MTCNN)"]
    a, cos, mtcnn = rows.values()
    assert (a.backbone, a.embedding_dim, a.loss, dict(a.loss_params)) == ("sphere20a", 512, "sphereface", {"m": 4})
    assert dict(a.scheduler_params) == {"milestones": [10, 15, 18], "gamma": 0.1} and a.batch_size == 256
    assert (cos.loss, cos.batch_size, cos.epochs) == ("cosface", 512, 30)
    assert a.dataset_params["pairs"] == str(face_folder["pairs_txt"])
    assert mtcnn.loss == "sphereface" and mtcnn.dataset_params["split"] == "none"  # merged with base
    assert grid.report["tables"][0]["columns"][0] == "lfw_acc"


def test_casia_lfw_a_softmax_rows_anneal_lambda_as_the_sphereface_prototxt(face_folder):
    # wy1iu/sphereface's MarginInnerProduct (base 1000, gamma 0.12, power 1, lambda_min 5), by hand:
    # lambda = max(5, 1000 / (1 + 0.12 it)); clcarwin's AngleLoss (1500 / (1 + 0.1 it)) would give 1363.6 at 1.
    from registry import LOSSES

    grid = load_grid(SWEEPS / "casia-lfw.yaml", env=casia_env(face_folder))
    by_hand = {1: 1000 / 1.12, 1000: 1000 / 121, 1658: 1000 / 199.96, 1659: 5.0, 28000: 5.0}
    for cell in grid.cells:
        if cell.spec.loss != "sphereface":
            continue
        head = LOSSES.create(cell.spec.loss, embedding_dim=8, num_classes=4, **cell.spec.loss_params)
        assert {it: float(head.lambda_at(it)) for it in by_hand} == pytest.approx(by_hand, rel=1e-12)


@pytest.mark.parametrize("missing", CASIA_VARS)
def test_casia_lfw_fails_naming_the_missing_variable(face_folder, missing):
    env = casia_env(face_folder)
    env.pop(missing)
    with pytest.raises(GridError, match=rf"casia-lfw.yaml: .*environment variable {missing} is not set"):
        load_grid(SWEEPS / "casia-lfw.yaml", env=env)


def test_casia_lfw_fails_on_a_path_that_is_not_there(face_folder, tmp_path):
    env = casia_env(face_folder) | {"CASIA_ROOT": str(tmp_path / "no-casia")}
    with pytest.raises(GridError, match="no-casia"):
        load_grid(SWEEPS / "casia-lfw.yaml", env=env)


def test_backbones_is_a_loss_by_backbone_matrix():
    grid = load_grid(SWEEPS / "backbones.yaml", env={})
    assert len(grid.cells) == 18
    losses = sorted({c.labels["loss"] for c in grid.cells})
    assert losses == sorted(["softmax", "CenterLoss", "L-Softmax", "A-Softmax", "CosFace", "ArcFace"])
    assert {c.spec.backbone for c in grid.cells} == {"timm/mobilenetv3_large_100", "timm/mobilenetv3_small_100",
                                                     "timm/efficientnet_b0"}
    centre = [c.spec for c in grid.cells if c.labels["loss"] == "CenterLoss"]
    assert all(s.loss == "softmax" and dict(s.center_loss) == {"weight": 0.01, "alpha": 0.5} for s in centre)
    assert all(not c.spec.center_loss for c in grid.cells if c.labels["loss"] != "CenterLoss")
    spec = grid.cells[0].spec
    assert (spec.embedding_dim, spec.dataset_params["image_size"], spec.dataset_params["in_chans"]) == (512, 112, 3)
    table = grid.report["tables"][0]
    assert (table["rows"], table["columns"], table["metric"]) == ("loss", "backbone", "synthetic_acc")
