"""Fashion-MNIST (Xiao et al. 2017, https://arxiv.org/abs/1708.07747): ten clothing classes in MNIST's IDX
files, read by the same reader as `mnist` (same file names, same 28x28 one-channel layout)."""

from __future__ import annotations

from pathlib import Path

from registry import DATASETS
from registry.datasets._types import EVALUATIONS, IMAGE_SIZES, DataBundle
from registry.datasets.mnist import MNIST_FILES, check_idx_files, check_limit_repeat, idx_evaluation, load_idx_pair

__all__ = ["fashion_mnist", "FASHION_URL", "FASHION_MEAN", "FASHION_STD", "FASHION_CLASSES"]

FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MEAN, FASHION_STD = 0.2860, 0.3530
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")


def _validate_root(params: dict) -> None:
    check_limit_repeat(params.get("limit"))
    check_idx_files(params.get("root", "data/fashion-mnist"), missing_ok=bool(params.get("download")))


@DATASETS.register("fashion-mnist", validate=_validate_root)
def fashion_mnist(root: str = "data/fashion-mnist", download: bool = False, limit: int | None = None) -> DataBundle:
    """Fashion-MNIST clothing images from the IDX files under root (28x28, 1 channel, 10 classes).

    Args:
        root: folder holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
            ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (raw or ``.gz``, or in ``root/raw``).
        download: fetch missing files (needs network); offline, the error names the files looked for.
        limit: keep only the first ``limit`` images of each split (quick checks).
    """
    check_limit_repeat(limit)
    train, test = load_idx_pair(root, download=download, url=FASHION_URL, files=MNIST_FILES, limit=limit,
                                mean=FASHION_MEAN, std=FASHION_STD)
    return DataBundle("fashion-mnist", 10, 1, (28, 28), train, test,
                      info={"root": str(Path(root).expanduser()), "train_size": len(train), "test_size": len(test),
                            "classes": list(FASHION_CLASSES)})



EVALUATIONS["fashion-mnist"] = lambda params, max_classes: idx_evaluation(params.get("root", "data/fashion-mnist"),
                                                                          params.get("limit"), max_classes)
IMAGE_SIZES["fashion-mnist"] = lambda params: (28, 28)
