"""`bench.data.Batches` over a Dataset: one DataLoader iterator for the whole trial, each ``iter()`` one
epoch, in the order a fresh generator's successive ``randperm`` calls give (the reference here), also when an
epoch is left early or the trial resumes from a checkpointed order state while the sampler has run ahead."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from bench.data import Batches, EpochBatchSampler


class _Indices(Dataset):
    """Item i is ``(a 1x1x1 image holding i, label i)``: the labels of a batch are its indices."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.full((1, 1, 1), float(i)), i


def _reference_epochs(n: int, batch_size: int, seed: int, epochs: int, *, drop_last: bool = False) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(epochs):
        order = torch.randperm(n, generator=g).tolist()
        stop = n - n % batch_size if drop_last else n
        out.append(order[:stop])
    return out


def _epoch(batches: Batches) -> list[int]:
    return [i for _, labels in batches for i in labels.tolist()]


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("drop_last", [False, True])
def test_each_iter_is_one_epoch_in_the_generators_order(num_workers, drop_last):
    batches = Batches(_Indices(23), 5, torch.device("cpu"), shuffle=True, drop_last=drop_last,
                      generator=torch.Generator().manual_seed(7), num_workers=num_workers)
    got = [_epoch(batches) for _ in range(4)]
    assert got == _reference_epochs(23, 5, 7, 4, drop_last=drop_last)
    assert len(batches) == (4 if drop_last else 5)


def test_images_travel_with_their_labels():
    batches = Batches(_Indices(10), 4, torch.device("cpu"), shuffle=True, generator=torch.Generator().manual_seed(0),
                      num_workers=2)
    for images, labels in batches:
        assert images.flatten().tolist() == labels.float().tolist()


def test_an_epoch_left_early_does_not_shift_the_next_one():
    batches = Batches(_Indices(20), 4, torch.device("cpu"), shuffle=True, generator=torch.Generator().manual_seed(3),
                      num_workers=2)
    for _ in batches:
        break  # e.g. a diverged loss ends the epoch after one step
    second = _epoch(batches)
    assert second == _reference_epochs(20, 4, 3, 2)[1]


def test_order_state_resumes_the_next_epoch_although_the_sampler_ran_ahead():
    # With 2 workers x prefetch 2 and 3 batches an epoch, the sampler has drawn the next epoch's permutation
    # (and more) before this epoch ends: the generator's current state is not the one to checkpoint.
    g = torch.Generator().manual_seed(11)
    batches = Batches(_Indices(12), 4, torch.device("cpu"), shuffle=True, generator=g, num_workers=2)
    _epoch(batches)
    _epoch(batches)
    state = batches.order_state()
    assert not torch.equal(state, g.get_state())  # it did run ahead
    resumed_g = torch.Generator().manual_seed(11)
    resumed_g.set_state(state)
    resumed = Batches(_Indices(12), 4, torch.device("cpu"), shuffle=True, generator=resumed_g, num_workers=2)
    assert [_epoch(resumed) for _ in range(2)] == _reference_epochs(12, 4, 11, 4)[2:]


def test_sampler_cuts_each_epoch_into_batches():
    sampler = iter(EpochBatchSampler(10, 4, torch.Generator().manual_seed(0)))
    assert [len(next(sampler)) for _ in range(6)] == [4, 4, 2, 4, 4, 2]
    dropping = iter(EpochBatchSampler(10, 4, torch.Generator().manual_seed(0), drop_last=True))
    assert [len(next(dropping)) for _ in range(4)] == [4, 4, 4, 4]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("num_workers", [0, 1])
def test_drop_last_with_fewer_samples_than_a_batch_gives_empty_epochs(num_workers):
    # As a TensorSplit does; the sampler used to draw permutations forever looking for a batch (a hang with workers)
    batches = Batches(_Indices(3), 5, torch.device("cpu"), shuffle=True, drop_last=True,
                      generator=torch.Generator().manual_seed(0), num_workers=num_workers)
    assert len(batches) == 0 and [_epoch(batches) for _ in range(2)] == [[], []]



def _flipping_faces(tmp_path, n: int = 12):
    """``n`` 4x6 grayscale PNGs, each a left-to-right ramp (so a flip shows), in a FaceImages that flips."""
    import numpy as np
    from PIL import Image

    from registry.datasets.imagefolder import FaceImages

    samples = []
    for i in range(n):
        path = tmp_path / f"id{i % 3}" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray((np.arange(6)[None, :] * 40 + i).repeat(4, 0).astype(np.uint8)).save(path)
        samples.append((str(path), i % 3))
    return FaceImages(samples, (4, 6), 1, flip=True, uint8=True)


def _labels_and_flips(batches: Batches) -> tuple[list[int], list[bool]]:
    """One epoch: the labels in order, and per image whether it came flipped (its ramp falls left to right)."""
    pairs = [(int(label), bool(img[0, 0, 0] > img[0, 0, -1])) for images, labels in batches
             for img, label in zip(images, labels, strict=True)]
    return [label for label, _ in pairs], [flip for _, flip in pairs]


def test_random_flips_depend_on_the_seed_only_not_on_loader_workers_or_a_resume(tmp_path):
    faces = _flipping_faces(tmp_path)

    def batches(workers: int, generator=None) -> Batches:
        return Batches(faces, 5, torch.device("cpu"), shuffle=True, num_workers=workers,
                       generator=generator or torch.Generator().manual_seed(4))

    alone = batches(0)
    epochs = [_labels_and_flips(alone) for _ in range(3)]
    flips = [f for _, fs in epochs for f in fs]
    assert 0 < sum(flips) < len(flips)  # coins, not always or never
    two = batches(2)
    assert [_labels_and_flips(two) for _ in range(3)] == epochs
    # each image's flip is the sampler's coin for its position: a reference from the same generator
    g = torch.Generator().manual_seed(4)
    for labels_order, epoch_flips in epochs:
        order = torch.randperm(12, generator=g).tolist()
        coins = torch.randint(0, 2, (12,), generator=g).bool().tolist()
        assert [i % 3 for i in order] == labels_order and coins == epoch_flips
    # resumed after the first epoch, with the checkpointed order state
    once = batches(2)
    _epoch(once)
    g = torch.Generator().manual_seed(4)
    g.set_state(once.order_state())
    resumed = batches(2, g)
    assert [_labels_and_flips(resumed) for _ in range(2)] == epochs[1:]
