"""MNIST (and the same-format Fashion-MNIST) from the standard IDX files under a root folder."""

from __future__ import annotations

import numbers
import os
import urllib.request
from pathlib import Path

import numpy as np
import torch

from registry import DATASETS
from registry.datasets._types import EVALUATIONS, IMAGE_SIZES, DataBundle, Evaluation, TensorSplit
from registry.datasets.idx import idx_shape, read_idx

__all__ = ["load_idx_pair", "find_idx_files", "check_idx_files", "check_limit_repeat", "download_idx", "MNIST_FILES",
           "idx_evaluation"]

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def _locate(root: Path, files: dict[str, str]) -> tuple[dict[str, Path], list[str]]:
    """``(found, missing)``: the path of each of ``files`` under ``root`` (or ``root/raw``), raw or ``.gz``, by key,
    and the file names not found."""
    found, missing = {}, []
    for key, stem in files.items():
        candidates = [d / (stem + ext) for d in (root, root / "raw") for ext in ("", ".gz")]
        hit = next((c for c in candidates if c.is_file()), None)
        if hit is None:
            missing.append(stem)
        else:
            found[key] = hit
    return found, missing


def find_idx_files(root: str | Path, files: dict[str, str] = MNIST_FILES) -> dict[str, Path]:
    """Locates each IDX file under ``root`` (or ``root/raw``), raw or ``.gz``.

    Raises:
        FileNotFoundError: naming every file looked for and where.
    """
    root = Path(root).expanduser()
    found, missing = _locate(root, files)
    if missing:
        where = "" if root.is_absolute() else f", relative to the working directory {Path.cwd()}"
        raise FileNotFoundError(
            f"IDX files missing under {root} (looked for {', '.join(s + '[.gz]' for s in missing)} in {root} "
            f"and {root / 'raw'}{where}); put the files there, point the grid's dataset.root at the folder that holds "
            f"them (or --set dataset.root=FOLDER on the command line), or set download: true on a machine that is "
            f"online")
    return found


def download_idx(root: str | Path, url: str = MNIST_URL, files: dict[str, str] = MNIST_FILES) -> None:
    """Downloads the ``.gz`` IDX files into ``root`` (only what is missing); needs network access."""
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    for stem in files.values():
        target = root / f"{stem}.gz"
        if target.exists() or (root / stem).exists():
            continue
        tmp = target.with_suffix(".gz.part")
        try:
            urllib.request.urlretrieve(url + target.name, tmp)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise FileNotFoundError(f"could not download {url + target.name} into {root} ({err}); this machine "
                                    f"looks offline: copy the IDX files into {root} by hand") from err
        os.replace(tmp, target)  # never leave a half-written file under the real name


def load_idx_pair(root: str | Path, *, download: bool = False, url: str = MNIST_URL,
                  files: dict[str, str] = MNIST_FILES, limit: int | None = None,
                  mean: float = MNIST_MEAN, std: float = MNIST_STD) -> tuple[TensorSplit, TensorSplit]:
    """Train and test splits as float tensors ``(N, 1, 28, 28)``, ``(pixel / 255 - mean) / std``.

    The defaults are MNIST's files, address and statistics; Fashion-MNIST passes its own.
    """
    try:
        paths = find_idx_files(root, files)
    except FileNotFoundError:
        if not download:
            raise
        download_idx(root, url, files)
        paths = find_idx_files(root, files)
    splits = []
    for split in ("train", "test"):
        images, labels = read_idx(paths[f"{split}_images"]), read_idx(paths[f"{split}_labels"])
        if len(images) != len(labels):
            raise ValueError(f"{paths[f'{split}_images']} has {len(images)} images but "
                             f"{paths[f'{split}_labels']} has {len(labels)} labels")
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        x = (torch.from_numpy(images.astype(np.float32) / 255.0) - mean) / std
        splits.append(TensorSplit(x.unsqueeze(1).contiguous(), torch.from_numpy(labels.astype(np.int64))))
    return splits[0], splits[1]


def check_idx_files(root: str | Path, files: dict[str, str] = MNIST_FILES, *, missing_ok: bool = False) -> None:
    """The four IDX files under ``root`` are there, readable, and pair up: (N, H, W) images, N labels.

    With ``missing_ok`` (``download: true``: `download_idx` fetches the missing files) only the files that are there
    are checked, and paired when both of a split are: the download keeps a damaged one.

    Raises:
        FileNotFoundError: a file is missing (`find_idx_files`), unless ``missing_ok``.
        ValueError: a damaged file, or images and labels that do not match, naming the files.
    """
    paths = _locate(Path(root).expanduser(), files)[0] if missing_ok else find_idx_files(root, files)
    for split in ("train", "test"):
        images, labels = paths.get(f"{split}_images"), paths.get(f"{split}_labels")
        image_shape = idx_shape(images) if images is not None else None
        label_shape = idx_shape(labels) if labels is not None else None
        if image_shape is not None and len(image_shape) != 3:
            raise ValueError(f"{images} holds an array of shape {image_shape}, not images (N, H, W); is it a "
                             f"labels file under an images name?")
        if label_shape is not None and len(label_shape) != 1:
            raise ValueError(f"{labels} holds an array of shape {label_shape}, not labels (N,); is it an "
                             f"images file under a labels name?")
        if image_shape is not None and label_shape is not None and image_shape[0] != label_shape[0]:
            raise ValueError(f"{images} has {image_shape[0]} images but {labels} has {label_shape[0]} labels")


def check_limit_repeat(limit: int | None = None, repeat: int = 1) -> None:
    """Raises ValueError unless ``limit`` is None or an int >= 1 and ``repeat`` an int >= 1 (a negative ``limit``
    would slice from the end and quietly drop images; a ``repeat`` below 1 would quietly mean 1)."""
    if limit is not None and (not isinstance(limit, numbers.Integral) or isinstance(limit, bool) or limit < 1):
        raise ValueError(f"limit must be an int >= 1 or null (every image), but got {limit=}")
    if not isinstance(repeat, numbers.Integral) or isinstance(repeat, bool) or repeat < 1:
        raise ValueError(f"repeat must be an int >= 1, but got {repeat=}")


def _validate_root(params: dict) -> None:
    check_limit_repeat(params.get("limit"), params.get("repeat", 1))
    check_idx_files(params.get("root", "data/mnist"), missing_ok=bool(params.get("download")))


@DATASETS.register("mnist", validate=_validate_root)
def mnist(root: str = "data/mnist", download: bool = False, repeat: int = 1, limit: int | None = None) -> DataBundle:
    """MNIST digits from the IDX files under root (28x28, 1 channel, 10 classes).

    Args:
        root: folder holding the four IDX files, raw or ``.gz`` (or a ``raw/`` folder below it).
        download: fetch missing files (needs network); offline, the error names the files looked for.
        repeat: repeat the training split this many times (to time 60k-image epochs from the 10k set).
        limit: keep only the first ``limit`` images of each split (quick checks).
    """
    check_limit_repeat(limit, repeat)
    train, test = load_idx_pair(root, download=download, limit=limit)
    if repeat > 1:
        train = TensorSplit(train.images.repeat(repeat, 1, 1, 1), train.labels.repeat(repeat))
    return DataBundle("mnist", 10, 1, (28, 28), train, test,
                      info={"root": str(Path(root).expanduser()), "train_size": len(train), "test_size": len(test)})


def idx_evaluation(root: str | Path, limit: int | None, max_classes: int,
                   files: dict[str, str] = MNIST_FILES) -> Evaluation:
    """The test split of the IDX files under ``root`` and the classes of its first ``limit`` labels (a small limit
    may miss some); all ten while the files are still to be downloaded (their test set holds every class)."""
    if max_classes < 10:
        return Evaluation(test=True)
    try:
        labels = read_idx(find_idx_files(root, files)["test_labels"])
    except FileNotFoundError:
        return Evaluation(test=True, test_classes=tuple(range(10)))
    return Evaluation(test=True, test_classes=tuple(int(c) for c in np.unique(labels[:limit])))


EVALUATIONS["mnist"] = lambda params, max_classes: idx_evaluation(params.get("root", "data/mnist"),
                                                                  params.get("limit"), max_classes)
IMAGE_SIZES["mnist"] = lambda params: (28, 28)
