"""scikit-learn's bundled 8x8 digits, upsampled to 28x28: the embedded default that needs no file."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from registry import DATASETS
from registry.datasets._types import EVALUATIONS, IMAGE_SIZES, DataBundle, Evaluation, TensorSplit

#: load_digits: its images and classes (every class has 174..183 images), so the split is checked without loading.
_IMAGES, _CLASSES = 1797, 10


def _check_params(params: dict) -> None:
    """The grid's values, checked before training (building the split takes a second; these are cheap)."""
    test_fraction = params.get("test_fraction", 0.25)
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be a number in (0, 1), but got {test_fraction!r}")
    _check_split(test_fraction)
    image_size = params.get("image_size", 28)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a whole number of pixels >= 1, but got {image_size!r}")


@DATASETS.register("digits", validate=_check_params)
def digits(test_fraction: float = 0.25, split_seed: int = 0, image_size: int = 28) -> DataBundle:
    """scikit-learn load_digits (1797 images, 10 classes) resized to image_size, fixed stratified split.

    Args:
        test_fraction: share of each class held out for testing.
        split_seed: seed of the stratified split (fixed so every trial sees the same split).
        image_size: output side in pixels (bilinear resize of the 8x8 originals).
    """
    from sklearn.datasets import load_digits

    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), but got {test_fraction=}")
    _check_split(test_fraction)
    data = load_digits()
    images = torch.from_numpy(data.images.astype(np.float32) / 16.0).unsqueeze(1)  # values 0..16 -> 0..1
    images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = (images - images.mean()) / images.std()
    labels = torch.from_numpy(data.target.astype(np.int64))
    idx_train, idx_test = _split(data.target, test_fraction, split_seed)
    train = TensorSplit(images[idx_train].contiguous(), labels[idx_train])
    test = TensorSplit(images[idx_test].contiguous(), labels[idx_test])
    return DataBundle("digits", 10, 1, (image_size, image_size), train, test,
                      info={"source": "sklearn.datasets.load_digits", "train_size": len(train), "test_size": len(test)})


def _split_sizes(test_fraction: float) -> tuple[int, int]:
    """``(n_train, n_test)`` of the stratified split, as scikit-learn's ``_validate_shuffle_split`` counts them."""
    n_test = math.ceil(test_fraction * _IMAGES)
    return _IMAGES - n_test, n_test


def _fraction_bounds() -> tuple[float, float]:
    """The smallest and largest ``test_fraction`` (three significant digits) whose split leaves a train and a test
    image of every class."""
    def fits(f: float) -> bool:
        return min(_split_sizes(f)) >= _CLASSES

    def step(x: float) -> float:
        return 10.0 ** (math.floor(math.log10(x)) - 2)

    low = (_CLASSES - 1) / _IMAGES
    s = step(low)
    n = math.floor(low / s) + 1
    while not fits(round(n * s, 12)):
        n += 1
    high = (_IMAGES - _CLASSES) / _IMAGES
    t = step(high)
    m = math.floor(high / t)
    while not fits(round(m * t, 12)):
        m -= 1
    return round(n * s, 12), round(m * t, 12)


def _check_split(test_fraction: float) -> None:
    """Raises ``ValueError`` when the stratified split cannot give every class a train and a test image (scikit-learn
    refuses fewer test or train images than classes, at the trial's start)."""
    n_train, n_test = _split_sizes(test_fraction)
    if min(n_train, n_test) >= _CLASSES:
        return
    low, high = _fraction_bounds()
    if n_test < _CLASSES:
        raise ValueError(f"test_fraction {test_fraction!r} holds out ceil({test_fraction!r} x {_IMAGES}) = {n_test} "
                         f"test images, fewer than the {_CLASSES} classes, and the stratified split needs one of each: "
                         f"set test_fraction to at least {low:g}")
    raise ValueError(f"test_fraction {test_fraction!r} leaves {_IMAGES} - {n_test} = {n_train} training images, fewer "
                     f"than the {_CLASSES} classes, and the stratified split needs one of each: set test_fraction to "
                     f"at most {high:g}")


def _split(target: np.ndarray, test_fraction: float, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices of the fixed stratified split."""
    from sklearn.model_selection import train_test_split

    return train_test_split(np.arange(len(target)), test_size=test_fraction, stratify=target, random_state=split_seed)


def _evaluation(params: dict, max_classes: int) -> Evaluation:
    """A test split of the ten digits, each that the split gives a test image (a small test_fraction may not)."""
    if max_classes < 10:
        return Evaluation(test=True)
    from sklearn.datasets import load_digits

    target = load_digits().target
    _, idx_test = _split(target, params.get("test_fraction", 0.25), params.get("split_seed", 0))
    return Evaluation(test=True, test_classes=tuple(int(c) for c in np.unique(target[idx_test])))


EVALUATIONS["digits"] = _evaluation
IMAGE_SIZES["digits"] = lambda params: (params.get("image_size", 28),) * 2
