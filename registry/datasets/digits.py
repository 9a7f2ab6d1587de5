"""scikit-learn's bundled 8x8 digits, upsampled to 28x28: the embedded default that needs no file."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from registry import DATASETS
from registry.datasets._types import EVALUATIONS, IMAGE_SIZES, DataBundle, Evaluation, TensorSplit


def _check_params(params: dict) -> None:
    """The grid's values, checked before training (building the split takes a second; these are cheap)."""
    test_fraction = params.get("test_fraction", 0.25)
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be a number in (0, 1), but got {test_fraction!r}")
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
