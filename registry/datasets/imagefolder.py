"""``imagefolder``: a face set on disk as ``root/<identity>/<image>`` (CASIA-WebFace once aligned, or your own).

Images are decoded by PIL (in DataLoader workers when training on a GPU), converted to grayscale or RGB,
resized to ``image_size`` when they differ and flipped horizontally at random for training; the training
and test splits hand over uint8 pixels, scaled to ``[-1, 1]`` on the training device (`bench.data.Batches`),
which keeps the bytes through shared memory, pinning and the host-to-device copy at a quarter of float32's.
A file that cannot be read (corrupt, truncated, empty, vanished) becomes a `SkippedSample`: the collate drops
it, the trial counts it and reports every one at the end; training never stops for it.

Verification pairs come from a ``pairs.txt`` (LFW format) over an image root, from an insightface ``.bin``,
or, with ``split: identities``, are drawn from the held-out identities.

Example (YAML)::

    dataset: {name: imagefolder, root: data/casia-112x96, image_size: [112, 96],
              pairs: data/lfw/pairs.txt, pairs_root: data/lfw-112x96}
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from registry import DATASETS
from registry.datasets._images import (
    IMAGE_EXTENSIONS,
    ImageHeader,
    check_in_chans,
    decode_image,
    decode_image_uint8,
    image_header,
    parse_image_size,
)
from registry.datasets._pair_match import check_like_training
from registry.datasets._types import EVALUATIONS, IMAGE_SIZES, DataBundle, Evaluation, PairSet, SkippedSample
from registry.datasets.pairs import (
    PairsFileError,
    _pairs_name,
    check_bin_images,
    check_pairs_name,
    make_pairs,
    pair_image_headers,
    pairs_from_bin,
    pairs_from_txt,
    read_pairs_txt,
)

__all__ = ["FaceImages", "scan_image_folder", "split_samples", "imagefolder", "SPLITS"]

SPLITS = ("images", "identities", "none")


def scan_image_folder(root: str | Path) -> tuple[list[str], list[tuple[str, int]]]:
    """Lists ``root/<identity>/<image>``: identity names (sorted) and ``(path, label)`` per image file.

    Files are recognised by their ending (`IMAGE_EXTENSIONS`), whatever their content; hidden files and
    files directly under ``root`` are ignored; identities without an image file are dropped.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: no identity folder holds an image file.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder root {root} does not exist; set root to a folder laid out as "
                                f"root/<identity>/<image>.jpg")
    classes: list[str] = []
    samples: list[tuple[str, int]] = []
    for name, files in _identity_images(root):
        if not files:
            continue
        label = len(classes)
        classes.append(name)
        samples += [(str(root / name / f), label) for f in files]
    if not samples:
        raise ValueError(f"{root} has no root/<identity>/<image> files (image endings: "
                         f"{', '.join(IMAGE_EXTENSIONS)}); point root at the folder whose sub-folders are identities")
    return classes, samples


def _identity_images(root: Path) -> Iterator[tuple[str, list[str]]]:
    """``(identity, sorted image file names)`` per identity folder of ``root``, in sorted order, one folder
    listed at a time (so a caller that needs only the first images stops early)."""
    with os.scandir(root) as entries:
        identity_dirs = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    for name in identity_dirs:
        with os.scandir(root / name) as entries:
            files = sorted(e.name for e in entries
                           if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(IMAGE_EXTENSIONS))
        yield name, files


def split_samples(samples: list[tuple[str, int]], split: str, test_fraction: float,
                  seed: int) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Splits ``(path, label)`` samples into train and held-out lists.

    ``images``: each identity keeps at least one image in train and gives ``round(test_fraction * n)`` of
    its ``n`` to the test list (closed set: same identities). ``identities``: ``test_fraction`` of the
    identities (at least two) go whole to the held-out list (open set). ``none``: everything trains.
    """
    if split == "none" or test_fraction == 0:
        return list(samples), []
    rng = np.random.default_rng(seed)
    labels = np.asarray([label for _, label in samples])
    if split == "images":
        train_idx, test_idx = [], []
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            n_test = _test_images(test_fraction, len(idx))
            test_idx += idx[:n_test].tolist()
            train_idx += idx[n_test:].tolist()
        return [samples[i] for i in sorted(train_idx)], [samples[i] for i in sorted(test_idx)]
    ids = rng.permutation(np.unique(labels))
    n_held = max(2, int(round(test_fraction * len(ids))))
    if n_held >= len(ids):
        raise ValueError(f"split: identities holds out {n_held} of {len(ids)} identities, leaving none to train; "
                         f"lower test_fraction or add identities")
    held = set(ids[:n_held].tolist())
    return ([s for s in samples if s[1] not in held], [s for s in samples if s[1] in held])


def _test_images(test_fraction: float, n: int) -> int:
    """Images of an identity of ``n`` that ``split: images`` holds out for the test split."""
    return min(int(round(test_fraction * n)), n - 1)


class FaceImages(Dataset):
    """``(path, label)`` samples decoded to ``(in_chans, H, W)`` float32 in ``[-1, 1]`` (or uint8 pixels).

    Args:
        samples: image paths and labels.
        image_size: ``(H, W)``; other sizes are resized bilinearly.
        in_chans: 1 (grayscale) or 3 (RGB).
        flip: flip horizontally with probability 1/2 (training). The coin comes with the index when the
            sampler gives ``(index, coin)`` (`bench.data.EpochBatchSampler`, for a Dataset that `takes_coins`:
            the same flips with any number of loader workers and after a resume); with a bare index, from
            torch's generator.
        uint8: items hold uint8 pixels in ``[0, 255]``, left for the consumer to scale
            (`registry.datasets._images.normalize_uint8`, which `bench.data.Batches` applies on the device).

    Items are ``(image, label)``, or a `SkippedSample` when the file cannot be decoded.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], image_size: tuple[int, int], in_chans: int, *,
                 flip: bool = False, uint8: bool = False) -> None:
        self.samples = list(samples)
        self.image_size, self.in_chans, self.flip, self.uint8 = image_size, in_chans, flip, uint8

    @property
    def takes_coins(self) -> bool:
        """Whether items want a coin with their index (``dataset[(index, coin)]``): when they are flipped."""
        return self.flip

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: int | tuple[int, bool]) -> tuple[torch.Tensor, int] | SkippedSample:
        index, coin = item if isinstance(item, tuple) else (item, None)
        path, label = self.samples[index]
        try:
            if os.path.getsize(path) == 0:
                return SkippedSample(path, "empty file (0 bytes)")
            image = (decode_image_uint8 if self.uint8 else decode_image)(path, self.image_size, self.in_chans)
        except Exception as err:  # noqa: BLE001 - a bad file is reported, never fatal
            return SkippedSample(path, f"{type(err).__name__}: {err}")
        if self.flip and (coin if coin is not None else bool(torch.rand(()) < 0.5)):
            image = image.flip(-1)
        return image, label


def _first_image_size(samples: Sequence[tuple[str, int]]) -> tuple[int, int]:
    from PIL import Image

    for path, _ in samples[:100]:
        try:
            with Image.open(path) as im:
                return im.size[1], im.size[0]
        except Exception:  # noqa: BLE001 - skip unreadable files here too
            continue
    raise ValueError(f"none of the first {min(len(samples), 100)} images under the root could be read; "
                     f"set image_size: [height, width] or check the files")


def _image_size(params: dict[str, Any]) -> tuple[int, int] | None:
    """The size the trial will use: ``image_size``, else the first readable of the first 100 images in
    `scan_image_folder`'s order (found by listing identity folders only until 100 files are seen)."""
    p = _params(params)
    if p["image_size"] is not None:
        return parse_image_size(p["image_size"])
    root, first = Path(p["root"]).expanduser(), []
    try:
        for name, files in _identity_images(root):
            first += [str(root / name / f) for f in files]
            if len(first) >= 100:
                break
        return _first_image_size([(path, 0) for path in first[:100]])
    except (OSError, ValueError):
        return None  # the trial reports it


def _params(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` completed with the factory's defaults (validation receives only what the user set)."""
    bound = inspect.signature(imagefolder).bind_partial(**params)
    bound.apply_defaults()
    return dict(bound.arguments)


def _validate(params: dict[str, Any]) -> None:
    p = _params(params)
    if p["split"] not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, but got {p['split']!r}")
    if not 0 <= p["test_fraction"] < 1:
        raise ValueError(f"test_fraction must be in [0, 1), but got {p['test_fraction']!r}")
    check_in_chans(p["in_chans"])
    if p["image_size"] is not None:
        parse_image_size(p["image_size"])
    if p["pairs"] is not None and p["bin"] is not None:
        raise ValueError("set either pairs (a pairs.txt) or bin (an insightface .bin), not both")
    if p["pairs_name"] is not None:
        check_pairs_name(p["pairs_name"])
    root = Path(p["root"]).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder root {root} does not exist; set root to a folder laid out as "
                                f"root/<identity>/<image>.jpg")
    _check_identity_count(root, p["split"], p["test_fraction"])
    if p["pairs"] is not None:
        lines = read_pairs_txt(p["pairs"])
        paths, _, _, headers = pair_image_headers(lines, p["pairs_root"] or root, p["image_ext"], source=p["pairs"])
        check_like_training(headers, [str(path) for path in paths], _training_headers(root),
                            source=str(p["pairs"]), key="pairs_root", root=root, in_chans=p["in_chans"])
        folds = len({pair.fold for pair in lines})
        if folds < 2:  # the protocol chooses each fold's threshold on the others: one fold fails at the first epoch
            raise PairsFileError(f"{p['pairs']} holds {folds} fold of pairs; verification needs at least two (LFW "
                                 f"View 2's pairs.txt, header '10 300'; View 1's pairsDevTest.txt is one fold)")
    if p["bin"] is not None:
        headers = check_bin_images(p["bin"])
        check_like_training(headers, [f"image {i}" for i in range(len(headers))], _training_headers(root),
                            source=str(p["bin"]), key="bin", root=root, in_chans=p["in_chans"])


def _training_headers(root: Path, count: int = 100) -> list[ImageHeader]:
    """Headers of the first ``count`` readable images of `scan_image_folder`'s order (folders listed one at a
    time until ``count`` files are seen)."""
    headers: list[ImageHeader] = []
    for name, files in _identity_images(root):
        for file in files:
            try:
                headers.append(image_header(root / name / file))
            except Exception:  # noqa: BLE001 - an unreadable file is skipped in training too
                continue
            if len(headers) == count:
                return headers
    return headers


def _check_identity_count(root: Path, split: str, test_fraction: float) -> None:
    """Enough identity folders under ``root`` for the split, from one listing of ``root`` (cheap on a
    CASIA-sized tree, where reading every identity's folder is left to the trial)."""
    with os.scandir(root) as entries:
        n = sum(1 for e in entries if e.is_dir() and not e.name.startswith("."))
    if n < 2:
        raise ValueError(f"{root} has {n} identity folder{'s' if n != 1 else ''}; a classification head needs at "
                         f"least 2, laid out as root/<identity>/<image>.jpg")
    # folders are not identities until they hold images (a root one level too high, root/train/<identity>/...,
    # has folders of folders); listing stops at the second identity with images
    with_images = []
    for name, files in _identity_images(root):
        if files:
            with_images.append(name)
            if len(with_images) == 2:
                break
    if len(with_images) < 2:
        held = f"only {with_images[0]!r} holds" if with_images else "none holds"
        raise ValueError(f"{root} has {n} identity folders, but {held} image files ({', '.join(IMAGE_EXTENSIONS)}); "
                         f"a classification head needs at least 2 identities with images. Point root at the folder "
                         f"whose sub-folders are identities holding images (root/<identity>/<image>.jpg)")
    if split == "identities" and test_fraction > 0 and max(2, int(round(test_fraction * n))) >= n:
        raise ValueError(f"split: identities holds out {max(2, int(round(test_fraction * n)))} of {n} identities, "
                         f"leaving none to train; lower test_fraction or add identities")


@DATASETS.register("imagefolder", validate=_validate)
def imagefolder(root: str = "data/faces", split: str = "images", test_fraction: float = 0.1, split_seed: int = 0,
                image_size: int | Sequence[int] | None = None, in_chans: int = 3, flip: bool = True,
                pairs: str | None = None, pairs_root: str | None = None, image_ext: str = "jpg",
                bin: str | None = None, pairs_per_fold: int = 300, pairs_name: str | None = None) -> DataBundle:
    """Face identities from root/<identity>/<image> (CASIA-WebFace layout), decoded in workers, flip augmented.

    Args:
        root: folder whose sub-folders are identities holding their images.
        split: ``images`` (closed-set test: ``test_fraction`` of each identity's images), ``identities``
            (``test_fraction`` of the identities held out, verification pairs drawn from them unless
            ``pairs``/``bin`` is set) or ``none`` (all for training).
        test_fraction: share held out, in [0, 1).
        split_seed: seed of the split and of drawn pairs (fixed, so every trial sees the same split).
        image_size: ``[height, width]`` (or one int) images are resized to; None takes the first image's.
        in_chans: 1 (grayscale) or 3 (RGB).
        flip: random horizontal flip of training images.
        pairs: an LFW-format ``pairs.txt`` for verification; its images are ``pairs_root/name/name_NNNN.<image_ext>``.
        pairs_root: image root of ``pairs`` (default: ``root``).
        image_ext: file ending of the pairs' images.
        pairs_name: prefix of the metrics of ``pairs`` or ``bin`` (``lfw`` logs ``lfw_acc``, ``lfw_auc``, ...);
            default ``lfw`` for ``pairs``, the file's name for ``bin`` (``agedb_30.bin``: ``agedb_30_acc``).
        bin: an insightface verification ``.bin`` (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``) instead of ``pairs``.
        pairs_per_fold: matched (and as many mismatched) pairs per fold, ten folds, drawn from the held-out
            identities with ``split: identities``.

    Raises:
        FileNotFoundError: a missing root, pairs file or pairs image (with the pairs-file line).
        ValueError: a bad parameter, or a pairs/.bin file that does not parse (with the line).
    """
    _validate(dict(root=root, split=split, test_fraction=test_fraction, in_chans=in_chans, image_size=image_size,
                   pairs=None, bin=None))
    classes, samples = scan_image_folder(root)
    size = parse_image_size(image_size) if image_size is not None else _first_image_size(samples)
    train_samples, held = split_samples(samples, split, test_fraction, split_seed)
    info: dict[str, Any] = {"root": str(Path(root).expanduser()), "identities": len(classes), "images": len(samples),
                            "split": split}
    test = None
    pair_set: PairSet | None = None
    if split == "identities" and held:
        keep = sorted({label for _, label in train_samples})
        relabel = {old: new for new, old in enumerate(keep)}
        train_samples = [(path, relabel[label]) for path, label in train_samples]
        info["held_out_identities"] = len({label for _, label in held})
        if pairs is None and bin is None and pairs_per_fold > 0:
            pair_set, unreadable = _held_out_pairs(held, size, in_chans, pairs_per_fold, split_seed)
            if unreadable:
                info["unreadable_pair_images"] = unreadable
        num_classes = len(keep)
    else:
        num_classes = len(classes)
        if held:
            test = FaceImages(held, size, in_chans, flip=False, uint8=True)
    if pairs is not None:
        pair_set = pairs_from_txt(pairs, pairs_root or root, size, in_chans, ext=image_ext, name=pairs_name or "lfw")
        info["pairs"] = str(pairs)
    elif bin is not None:
        pair_set = pairs_from_bin(bin, size, in_chans, name=pairs_name)
        info["bin"] = str(bin)
    info.update(train_size=len(train_samples), test_size=len(test) if test is not None else 0,
                pairs=len(pair_set.same) if pair_set is not None else 0)
    train = FaceImages(train_samples, size, in_chans, flip=flip, uint8=True)
    return DataBundle("imagefolder", num_classes, in_chans, size, train, test, pair_set, info)


def _held_out_pairs(held: list[tuple[str, int]], size: tuple[int, int], in_chans: int, per_fold: int,
                    seed: int) -> tuple[PairSet, dict[str, str]]:
    """Ten folds of pairs drawn from the held-out identities; the images the pairs use are decoded once
    here, and an unreadable one is removed from the pool (and reported) before the pairs are drawn again."""
    unreadable: dict[str, str] = {}
    while True:
        labels = np.asarray([label for _, label in held])
        left, right, same, folds = make_pairs(labels, folds=10, per_fold=per_fold, rng=np.random.default_rng(seed))
        bad = set()
        for i in np.unique(np.concatenate([left, right])):
            item = FaceImages(held, size, in_chans)[int(i)]
            if isinstance(item, SkippedSample):
                unreadable[item.path] = item.reason
                bad.add(int(i))
        if not bad:
            images = _ImagesOnly(FaceImages(held, size, in_chans, uint8=True))
            return (PairSet(images, torch.from_numpy(left), torch.from_numpy(right), torch.from_numpy(same),
                            torch.from_numpy(folds), name="held_out"), unreadable)
        held = [s for i, s in enumerate(held) if i not in bad]


class _ImagesOnly(Dataset):
    """Item i of a `FaceImages` without its label, for `PairSet.images`; an unreadable image raises."""

    def __init__(self, images: FaceImages) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        item = self.images[index]
        if isinstance(item, SkippedSample):
            raise ValueError(f"cannot read verification image {item.path} ({item.reason}); replace the file or "
                             f"remove it from the held-out identities")
        return item[0]


def _evaluation(params: dict[str, Any], max_classes: int) -> Evaluation:
    """The test split of ``split: images`` and the pairs' name (``lfw`` for a pairs.txt, the file's for a .bin,
    ``held_out`` for pairs drawn with ``split: identities``). Identity folders are listed one at a time until a
    test image is found and, when there are at most ``max_classes`` identities, all of them (which of them give
    the test split an image): on a CASIA-sized tree, a few folder reads."""
    p = _params(params)
    pairs = None
    if p["pairs"] is not None:
        pairs = p["pairs_name"] or "lfw"
    elif p["bin"] is not None:
        pairs = _pairs_name(p["pairs_name"], Path(p["bin"]).stem)
    elif p["split"] == "identities" and p["test_fraction"] > 0 and p["pairs_per_fold"] > 0:
        pairs = "held_out"
    if p["split"] != "images" or p["test_fraction"] == 0:
        return Evaluation(test=False, pairs=pairs)
    tested: list[int] = []
    label = 0
    for _, files in _identity_images(Path(p["root"]).expanduser()):
        if not files:
            continue
        if _test_images(p["test_fraction"], len(files)) > 0:
            tested.append(label)
        label += 1
        if tested and label > max_classes:  # too many identities for per-class metrics
            return Evaluation(test=True, pairs=pairs)
    return Evaluation(test=bool(tested), test_classes=tuple(tested) if tested and label <= max_classes else None,
                      pairs=pairs)


EVALUATIONS["imagefolder"] = _evaluation
IMAGE_SIZES["imagefolder"] = _image_size
