"""pair_scores: the flip test (sum of the image's and its mirror's embeddings), then cosine, for tensors and
Datasets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from bench.verification import pair_scores
from registry.datasets import PairSet, SkippedSample


def make_pairs(images) -> PairSet:
    left = torch.tensor([0, 0, 2, 3])
    right = torch.tensor([1, 2, 3, 1])
    return PairSet(images=images, left=left, right=right, same=torch.tensor([True, False, True, False]),
                   folds=torch.tensor([0, 0, 1, 1]), name="toy")


def left_right_embed(x: torch.Tensor) -> torch.Tensor:
    """A 2-d embedding that sees left/right: mean of the left half and of the right half of the image."""
    w = x.shape[-1]
    return torch.stack([x[..., : w // 2].mean((1, 2, 3)), x[..., w // 2:].mean((1, 2, 3))], 1)


def reference(images: torch.Tensor, pairs: PairSet, flip: bool) -> np.ndarray:
    feats = left_right_embed(images).double()
    if flip:
        feats = feats + left_right_embed(images.flip(-1)).double()
    feats = feats / feats.norm(dim=1, keepdim=True)
    return (feats[pairs.left] * feats[pairs.right]).sum(1).numpy()


@pytest.fixture
def images():
    return torch.rand(5, 3, 4, 6, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("flip", [True, False])
def test_cosine_of_summed_flip_embeddings(images, flip):
    pairs = make_pairs(images)
    scores = pair_scores(left_right_embed, pairs, batch_size=2, flip=flip)
    assert scores.shape == (4,) and scores.dtype == np.float64
    np.testing.assert_allclose(scores, reference(images, pairs, flip), atol=1e-6)


def test_flip_test_makes_the_score_mirror_invariant():
    # with flip, an image and its mirror image get the same feature: cosine 1
    image = torch.zeros(1, 3, 4, 6)
    image[..., :3] = 1.0  # bright left half: embedding (1, 0); mirrored (0, 1)
    both = torch.cat([image, image.flip(-1)])
    pairs = PairSet(both, torch.tensor([0]), torch.tensor([1]), torch.tensor([True]), torch.tensor([0]))
    assert pair_scores(left_right_embed, pairs)[0] == pytest.approx(1.0, abs=1e-6)
    assert pair_scores(left_right_embed, pairs, flip=False)[0] == pytest.approx(0.0, abs=1e-6)


class ListDataset(Dataset):
    def __init__(self, images: torch.Tensor, *, with_labels: bool = False) -> None:
        self.images, self.with_labels, self.seen = images, with_labels, []

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        self.seen.append(i)
        return (self.images[i], 0) if self.with_labels else self.images[i]


@pytest.mark.parametrize("with_labels", [False, True])
def test_dataset_images_give_the_same_scores_and_only_used_images_are_read(images, with_labels):
    data = ListDataset(images, with_labels=with_labels)
    scores = pair_scores(left_right_embed, make_pairs(data), batch_size=3)
    np.testing.assert_allclose(scores, reference(images, make_pairs(images), True), atol=1e-6)
    assert sorted(data.seen) == [0, 1, 2, 3]  # image 4 is in no pair


def test_each_image_is_embedded_once_per_view(images):
    calls = []

    def embed(x):
        calls.append(len(x))
        return left_right_embed(x)

    pair_scores(embed, make_pairs(images), batch_size=256)
    assert calls == [4, 4]  # four used images, plain and mirrored


def test_batches_move_to_the_device(images):
    devices = []

    def embed(x):
        devices.append(x.device.type)
        return left_right_embed(x)

    pair_scores(embed, make_pairs(images), device="cpu")
    assert devices == ["cpu", "cpu"]


def test_unreadable_dataset_image_is_named():
    class Broken(ListDataset):
        def __getitem__(self, i):
            return SkippedSample(path=f"lfw/img{i}.jpg", reason="truncated") if i == 2 else super().__getitem__(i)

    with pytest.raises(ValueError, match="lfw/img2.jpg: truncated"):
        pair_scores(left_right_embed, make_pairs(Broken(torch.rand(5, 3, 4, 6))))


def test_out_of_range_pair_index_is_an_error(images):
    pairs = make_pairs(images[:3])
    with pytest.raises(ValueError, match=r"0\.\.2"):
        pair_scores(left_right_embed, pairs)
