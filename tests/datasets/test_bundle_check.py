"""A registered dataset whose bundle breaks the `DataBundle` contract is refused when the trial loads it, with
the registered name, the numbers and the fix; before, it crashed in a training step with torch's words
("index 4 is out of bounds for dimension 1 with size 4") or trained on garbage without a word (NaN pixels
recorded as a diverged model, an empty test split as test_acc 0.0, images of another size as a valid run)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from bench.spec import TrialSpec
from bench.trial import TrialOptions, run_trial
from registry import DATASETS
from registry.datasets import DataBundle, PairSet, TensorSplit, check_bundle


def blobs(n: int, *, chans: int = 1, size: int = 8, classes: int = 4) -> TensorSplit:
    images = torch.randn(n, chans, size, size, generator=torch.Generator().manual_seed(n))
    return TensorSplit(images, torch.arange(n) % classes)


def with_nan(split: TensorSplit, index: int) -> TensorSplit:
    images = split.images.clone()
    images[index, 0, 2, 5] = float("nan")
    return TensorSplit(images, split.labels)


def relabel(split: TensorSplit, labels: torch.Tensor) -> TensorSplit:
    return TensorSplit(split.images, labels)


def pair_set(images) -> PairSet:
    """20 pairs over images 2..41 of ``images`` (image 2 the first one used), two folds."""
    return PairSet(images, left=torch.arange(2, 42, 2), right=torch.arange(3, 42, 2), same=torch.arange(20) % 2 == 0,
                   folds=torch.arange(20) % 2, name="mine")


class _PairImages(Dataset):
    """Pair images from a Dataset, as image files are: item i is ``images[i]``, or ``(images[i], 0)``."""

    def __init__(self, images: torch.Tensor, *, labelled: bool = False) -> None:
        self.images, self.labelled = images, labelled

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return (self.images[i], 0) if self.labelled else self.images[i]


def nan_at(images: torch.Tensor, index: int) -> torch.Tensor:
    images = images.clone()
    images[index, 0, 3, 1] = float("nan")
    return images


# (bundle, what the message must say): numbers counted by hand from the construction
BROKEN = {
    # arange(80) % 5: the 16 labels equal to 4 are past classes 0..3
    "label-past-classes": (lambda: DataBundle("x", 4, 1, (8, 8), blobs(80, classes=5), blobs(40)),
                           ["16 of 80 train labels lie outside 0..3", "span 0..4", "number the classes from 0"]),
    # arange(80) % 4 - 1: the 20 labels equal to -1
    "negative-label": (lambda: DataBundle("x", 4, 1, (8, 8), relabel(blobs(80), torch.arange(80) % 4 - 1), blobs(40)),
                       ["20 of 80 train labels lie outside 0..3", "span -1..2"]),
    # 30 classes (no per-class accuracy): test labels 30..39 only lowered test_acc
    "test-label-past-classes": (lambda: DataBundle("x", 30, 1, (8, 8), blobs(80, classes=30), blobs(40, classes=40)),
                                ["10 of 40 test labels lie outside 0..29", "num_classes=30"]),
    "float-labels": (lambda: DataBundle("x", 4, 1, (8, 8), relabel(blobs(80), (torch.arange(80) % 4).float()),
                                        blobs(40)),
                     ["train labels are torch.float32", "labels.long()"]),
    "int32-labels": (lambda: DataBundle("x", 4, 1, (8, 8), relabel(blobs(80), (torch.arange(80) % 4).int()),
                                        blobs(40)),
                     ["train labels are torch.int32", "int64"]),
    "channels": (lambda: DataBundle("x", 4, 1, (8, 8), blobs(80, chans=3), blobs(40, chans=3)),
                 ["train images are (80, 3, 8, 8)", "in_chans=1, image_size=(8, 8)", "(N, 1, 8, 8)",
                  "test images are (40, 3, 8, 8)"]),
    "size": (lambda: DataBundle("x", 4, 1, (8, 8), blobs(80, size=16), blobs(40, size=16)),
             ["train images are (80, 1, 16, 16)", "declare the images' channels and size"]),
    "uint8-images": (lambda: DataBundle("x", 4, 1, (8, 8), TensorSplit(torch.zeros(80, 1, 8, 8, dtype=torch.uint8),
                                                                      torch.arange(80) % 4), blobs(40)),
                     ["train images are torch.uint8", "127.5"]),
    "nan-train": (lambda: DataBundle("x", 4, 1, (8, 8), with_nan(blobs(80), 37), blobs(40)),
                  ["train image 37", "NaN or inf"]),
    "nan-test": (lambda: DataBundle("x", 4, 1, (8, 8), blobs(80), with_nan(blobs(40), 5)), ["test image 5"]),
    "empty-test": (lambda: DataBundle("x", 4, 1, (8, 8), blobs(80), blobs(0)),
                   ["the test split is empty (0 images)", "test=None"]),
    "empty-train": (lambda: DataBundle("x", 4, 1, (8, 8), blobs(0), blobs(40)), ["the train split is empty"]),
    # pair images the first evaluation, at the end of the first epoch, crashed on (a channel count the first
    # convolution refuses, int64 pixels) or recorded as a diverged trial (NaN); another size was evaluated as is
    "pairs-channels": (lambda: DataBundle("x", 4, 1, (8, 8), blobs(80), None, pair_set(torch.randn(44, 3, 8, 8))),
                       ["pairs 'mine': the pair images are (44, 3, 8, 8) (M, C, H, W)", "in_chans=1, image_size=(8, 8)",
                        "i.e. (M, 1, 8, 8): give the pair images the training images' channels and size"]),
    "pairs-size": (lambda: DataBundle("x", 4, 1, (8, 8), blobs(80), None, pair_set(torch.randn(44, 1, 16, 12))),
                   ["the pair images are (44, 1, 16, 12) (M, C, H, W)", "i.e. (M, 1, 8, 8)"]),
    "pairs-int64": (lambda: DataBundle("x", 4, 1, (8, 8), blobs(80), None,
                                       pair_set(torch.zeros(44, 1, 8, 8, dtype=torch.int64))),
                    ["the pair images are torch.int64", "or uint8 pixels"]),
    "pairs-nan": (lambda: DataBundle("x", 4, 1, (8, 8), blobs(80), None, pair_set(nan_at(torch.randn(44, 1, 8, 8), 9))),
                  ["pairs 'mine': pair image 9 (and maybe others) holds NaN or inf pixels", "diverged"]),
    "pairs-dataset-channels": (lambda: DataBundle("x", 4, 1, (8, 8), blobs(80), None,
                                                  pair_set(_PairImages(torch.randn(44, 3, 8, 8)))),
                               ["pair image 2 (pairs.images[2]) is (3, 8, 8) (C, H, W)", "i.e. (1, 8, 8)"]),
    "pairs-dataset-nan": (lambda: DataBundle("x", 4, 1, (8, 8), blobs(80), None,
                                             pair_set(_PairImages(nan_at(torch.randn(44, 1, 8, 8), 2), labelled=True))),
                          ["pair image 2 (pairs.images[2]) holds NaN or inf pixels"]),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_bundle_is_refused_before_training_with_its_name_numbers_and_fix(case):
    make, phrases = BROKEN[case]
    name = f"user-{case}"

    def user_set() -> DataBundle:
        """A user's dataset that breaks the contract."""
        return make()

    DATASETS.register(name)(user_set)
    epochs = []
    try:
        spec = TrialSpec(dataset=name, backbone="lenet++", loss="softmax", embedding_dim=4, epochs=1, batch_size=16)
        with pytest.raises(ValueError) as info:
            run_trial(spec, TrialOptions(progress=False, device="cpu", on_epoch=lambda e, m: epochs.append(e)))
    finally:
        DATASETS.unregister(name)
    message = str(info.value)
    assert f"dataset {name!r}" in message and "user_set" in message  # the registered name and the factory
    for phrase in phrases:
        assert phrase in message
    assert epochs == []


def test_the_tiny_blobs_and_digits_pass(tiny_dataset):
    check_bundle(DATASETS.create(tiny_dataset), tiny_dataset)
    check_bundle(DATASETS.create("digits"), "digits")


def test_finite_pixels_whose_sum_overflows_pass():
    # the pixel check first sums the split; 3e38 + 3e38 is inf in float32, yet every pixel is finite
    split = TensorSplit(torch.full((4, 1, 8, 8), 3e38), torch.arange(4))
    check_bundle(DataBundle("x", 4, 1, (8, 8), split), "huge")


class _Empty(Dataset):
    def __len__(self) -> int:
        return 0

    def __getitem__(self, i: int):
        raise IndexError(i)


def test_an_empty_dataset_split_is_refused():
    with pytest.raises(ValueError, match=r"dataset 'folder'.*the test split is empty \(len 0\)"):
        check_bundle(DataBundle("x", 4, 1, (8, 8), blobs(80), _Empty()), "folder")


def test_pairs_that_index_past_their_images_are_refused():
    # 6 pair images: indices 0..5; a right index of 6 is one past them
    pairs = PairSet(torch.zeros(6, 1, 8, 8), left=torch.tensor([0, 1, 2]), right=torch.tensor([3, 4, 6]),
                    same=torch.tensor([True, False, True]), folds=torch.zeros(3, dtype=torch.long), name="mine")
    with pytest.raises(ValueError, match=r"pairs 'mine': right indices span 3\.\.6, outside the 6 pair images 0\.\.5"):
        check_bundle(DataBundle("x", 4, 1, (8, 8), blobs(80), None, pairs), "with-pairs")
    short = PairSet(pairs.images, pairs.left, pairs.left, pairs.same[:2], pairs.folds, name="mine")
    with pytest.raises(ValueError, match=r"lengths \{'left': 3, 'right': 3, 'same': 2, 'folds': 3\}"):
        check_bundle(DataBundle("x", 4, 1, (8, 8), blobs(80), None, short), "with-pairs")


@pytest.mark.parametrize("images", [torch.randn(44, 1, 8, 8), torch.zeros(44, 1, 8, 8, dtype=torch.uint8),
                                    _PairImages(torch.randn(44, 1, 8, 8), labelled=True),
                                    _PairImages(torch.zeros(44, 1, 8, 8, dtype=torch.uint8))])
def test_pair_images_of_the_declared_shape_pass(images):
    # float or uint8 pixels, a tensor or a Dataset (bare images or (image, label) items), as pair_scores takes them
    check_bundle(DataBundle("x", 4, 1, (8, 8), blobs(80), None, pair_set(images)), "with-pairs")
