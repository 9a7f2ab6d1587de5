"""Face data through the harness (`bench.trial.run_trial`) on the CPU: synthetic faces with the face
backbones, and an image folder with unreadable files that still trains to the end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.spec import TrialSpec
from bench.trial import TrialOptions, run_trial
from registry import BACKBONES, DATASETS

CPU = dict(device="cpu", progress=False, num_workers=0)


def _faces(size: int, in_chans: int, **kw) -> dict:
    return dict(identities=8, images_per_identity=4, image_size=size, in_chans=in_chans, test_fraction=0.25,
                test_identities=4, pairs_per_fold=2, **kw)


@pytest.mark.parametrize("backbone,size,in_chans", [("sphere20a", 28, 1), ("timm/mobilenetv3_small_100", 32, 3)])
def test_one_epoch_on_synthetic_faces(backbone, size, in_chans):
    # Training, closed-set test accuracy and 10-fold pair verification all run for one epoch.
    params = {"input_size": [size, size]} if "input_size" in BACKBONES.parameters(backbone) else {}
    spec = TrialSpec(dataset="synthetic-faces", dataset_params=_faces(size, in_chans), backbone=backbone,
                     backbone_params=params, loss="cosface", loss_params={"s": 16.0, "m": 0.2}, embedding_dim=32,
                     optimizer="adam", optimizer_params={"lr": 2e-4}, epochs=1, batch_size=8, eval_batch_size=64)
    result = run_trial(spec, TrialOptions(**CPU))
    assert result.status == "finished" and len(result.history) == 1
    assert np.isfinite(result.metrics["train_loss"]) and 0 <= result.metrics["test_acc"] <= 1
    assert 0 <= result.metrics["synthetic_acc"] <= 1


def _best_threshold_accuracy(embeddings: torch.Tensor, pairs) -> float:
    e = torch.nn.functional.normalize(embeddings, dim=1)
    cos = (e[pairs.left] * e[pairs.right]).sum(1).numpy()
    same = pairs.same.numpy()
    return float(max(((cos >= t) == same).mean() for t in np.unique(cos)))


@pytest.mark.slow
def test_pair_accuracy_after_a_few_epochs_is_clearly_above_chance(tmp_path):
    # SphereFace-20 on 60 small synthetic identities (milder pose and lighting), four epochs: verification
    # on 30 identities it never saw, 600 pairs (chance 0.5; raw-pixel cosine about 0.6).
    data = dict(identities=60, images_per_identity=5, image_size=28, in_chans=1, test_fraction=0.0, seed=0,
                test_identities=30, pairs_per_fold=30, pose=0.3, lighting=0.3, noise=0.5)
    spec = TrialSpec(dataset="synthetic-faces", dataset_params=data, backbone="sphere20a",
                     backbone_params={"input_size": [28, 28]}, loss="cosface", loss_params={"s": 16.0, "m": 0.2},
                     embedding_dim=64, optimizer="adam", optimizer_params={"lr": 2e-4}, epochs=4, batch_size=32,
                     eval_batch_size=256)
    checkpoint = tmp_path / "trial.pt"
    result = run_trial(spec, TrialOptions(**CPU, checkpoint_path=checkpoint))
    assert result.status == "finished"
    accuracy = [h["synthetic_acc"] for h in result.history]
    assert accuracy[-1] >= 0.75, accuracy  # the harness's LFW-protocol 10-fold accuracy
    # The same, measured here from the trained backbone: best single threshold on plain cosine scores.
    net = BACKBONES.create("sphere20a", embedding_dim=64, in_chans=1, input_size=[28, 28])
    net.load_state_dict(torch.load(checkpoint, weights_only=False)["backbone"])
    pairs = DATASETS.create("synthetic-faces", **data).pairs
    with torch.no_grad():
        assert _best_threshold_accuracy(net.eval()(pairs.images), pairs) >= 0.75


@pytest.fixture
def broken_folder(tmp_path):
    """Four identities of six 16x16 JPEGs, plus one corrupt (truncated) JPEG and one empty file."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(4):
        (tmp_path / f"p{i}").mkdir()
        for j in range(6):
            pixels = np.clip(rng.normal(60 * i, 30, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / f"p{i}" / f"{j}.jpg")
    good = (tmp_path / "p0" / "0.jpg").read_bytes()
    (tmp_path / "p1" / "corrupt.jpg").write_bytes(good[: len(good) // 3])
    (tmp_path / "p3" / "empty.jpg").write_bytes(b"")
    return tmp_path


def test_imagefolder_with_a_corrupt_jpeg_and_an_empty_file_trains_to_the_end(broken_folder):
    # Both bad files are skipped in the DataLoader workers, counted, and reported with the result.
    spec = TrialSpec(dataset="imagefolder", dataset_params={"root": str(broken_folder), "split": "none"},
                     backbone="mini-resnet18", loss="softmax", embedding_dim=8, epochs=2, batch_size=5)
    result = run_trial(spec, TrialOptions(device="cpu", progress=False, num_workers=2))
    assert result.status == "finished" and len(result.history) == 2
    corrupt, empty = str(broken_folder / "p1" / "corrupt.jpg"), str(broken_folder / "p3" / "empty.jpg")
    assert sorted(result.skipped) == [corrupt, empty]
    assert "empty file" in result.skipped[empty] and "OSError" in result.skipped[corrupt]
