"""``synthetic-faces``: deterministic generated identities at any size and channel count, with pairs over
held-out identities, and the same faces written to disk."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from registry import DATASETS, RegistryError
from registry.datasets.pairs import read_pairs_txt
from registry.datasets.synthetic_faces import SyntheticFaces, write_image_folder

SMALL = dict(identities=6, images_per_identity=4, image_size=[24, 20], in_chans=1, test_identities=3,
             pairs_per_fold=2)


def test_same_seed_same_pixels_other_seed_other_pixels():
    a = DATASETS.create("synthetic-faces", **SMALL, seed=3)
    b = DATASETS.create("synthetic-faces", **SMALL, seed=3)
    c = DATASETS.create("synthetic-faces", **SMALL, seed=4)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.pairs.images, b.pairs.images)
    assert torch.equal(a.pairs.left, b.pairs.left) and torch.equal(a.pairs.same, b.pairs.same)
    assert not torch.equal(a.train.images, c.train.images)


def test_an_identity_does_not_depend_on_how_many_are_asked_for():
    few = DATASETS.create("synthetic-faces", **{**SMALL, "identities": 3})
    many = DATASETS.create("synthetic-faces", **{**SMALL, "identities": 6})
    assert torch.equal(few.train.images[few.train.labels == 2], many.train.images[many.train.labels == 2])


def test_rendering_in_threads_gives_the_pixels_of_one_identity_at_a_time(monkeypatch):
    # 40 identities x 20 faces at 112x112 are enough for `images` to use threads (with 2 or more torch threads)
    gen = SyntheticFaces(image_size=(112, 112), in_chans=3, seed=3)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    images, labels = gen.images(range(40), 20)
    one_by_one = np.concatenate([gen.render(i, 20) for i in range(40)])
    assert np.array_equal(images, one_by_one) and labels.tolist() == [i // 20 for i in range(800)]


@pytest.mark.parametrize("size,in_chans", [((28, 28), 1), ((112, 96), 3), ((17, 40), 5)])
def test_any_size_and_channel_count(size, in_chans):
    b = DATASETS.create("synthetic-faces", identities=3, images_per_identity=3, image_size=list(size),
                        in_chans=in_chans, test_identities=2, pairs_per_fold=1, folds=2)
    assert b.train.images.shape[1:] == (in_chans, *size) and b.image_size == size and b.in_chans == in_chans
    assert b.pairs.images.shape[1:] == (in_chans, *size)
    assert b.train.images.dtype == torch.float32 and -1 <= b.train.images.min() and b.train.images.max() <= 1


def test_splits_and_pairs_follow_the_face_protocol():
    b = DATASETS.create("synthetic-faces", identities=5, images_per_identity=8, image_size=16, test_fraction=0.25,
                        test_identities=4, pairs_per_fold=3, folds=10)
    assert b.num_classes == 5 and len(b.train) == 30 and len(b.test) == 10
    assert set(b.test.labels.tolist()) == set(range(5))  # closed set: the training identities
    assert len(b.pairs.images) == 32  # four further identities, never trained on
    assert len(b.pairs.same) == 60 and b.pairs.same.sum() == 30
    assert b.pairs.folds.bincount().tolist() == [6] * 10
    same_id = (b.pairs.left // 8 == b.pairs.right // 8)
    assert torch.equal(same_id, b.pairs.same) and not (b.pairs.left == b.pairs.right).any()


def test_images_of_one_identity_share_structure():
    # Without pose, lighting and noise, an identity's images differ only by background; the face region
    # (centre) of two images of one identity is closer than that of two identities.
    gen = SyntheticFaces((32, 32), 1, seed=0, pose=0.0, lighting=0.0, noise=0.0)
    a, b = gen.render(0, 2)[:, :, 10:22, 10:22], gen.render(1, 1)[:, :, 10:22, 10:22]
    assert ((a[0] - a[1]) ** 2).mean() < ((a[0] - b[0]) ** 2).mean()


def test_variations_can_be_switched_off():
    still = SyntheticFaces((24, 24), 3, seed=0, pose=0.0, lighting=0.0, noise=0.0).render(0, 2)
    moving = SyntheticFaces((24, 24), 3, seed=0).render(0, 2)
    assert not torch.equal(torch.from_numpy(still), torch.from_numpy(moving))


def test_bad_parameters_fail_validation():
    with pytest.raises(RegistryError, match="images_per_identity must be >= 2"):
        DATASETS.check("synthetic-faces", {"images_per_identity": 1})
    with pytest.raises(RegistryError, match="image_size must be"):
        DATASETS.check("synthetic-faces", {"image_size": [0, 3]})
    with pytest.raises(RegistryError, match="pose must be >= 0"):
        DATASETS.check("synthetic-faces", {"pose": -1})


def test_one_fold_fails_validation():
    # Each fold's threshold is chosen on the other folds: one fold used to pass and crash after the first epoch.
    with pytest.raises(RegistryError, match="folds >= 2"):
        DATASETS.check("synthetic-faces", {"folds": 1})


def test_written_folder_has_lfw_layout(tmp_path):
    out = write_image_folder(tmp_path / "sf", identities=3, images_per_identity=3, image_size=16, in_chans=1,
                             test_identities=2, pairs_per_fold=2, folds=2)
    assert sorted(p.name for p in out["train"].iterdir()) == ["id_00000", "id_00001", "id_00002"]
    assert sorted(p.name for p in (out["train"] / "id_00001").iterdir()) == [
        "id_00001_0001.jpg", "id_00001_0002.jpg", "id_00001_0003.jpg"]
    assert out["pairs_txt"].read_text().splitlines()[0] == "2\t2"
    pairs = read_pairs_txt(out["pairs_txt"])
    assert len(pairs) == 8 and all(p.name1 in ("id_00003", "id_00004") for p in pairs)
    assert not list(tmp_path.glob(".sf.partial-*"))  # the temporary folder was moved into place


def test_writing_refuses_a_non_empty_folder_and_leaves_nothing(tmp_path):
    (tmp_path / "sf").mkdir()
    (tmp_path / "sf" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        write_image_folder(tmp_path / "sf", identities=2, images_per_identity=2, image_size=8)
    with pytest.raises(ValueError, match="1- or 3-channel"):
        write_image_folder(tmp_path / "other", identities=2, images_per_identity=2, image_size=8, in_chans=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sf"]
