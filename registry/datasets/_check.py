"""`check_bundle`: does a dataset factory's `DataBundle` keep its contract? Run once, when a trial loads it.

Without it a registered dataset that breaks the contract fails deep in a training step with torch's words (a
label past the head's classes: "index 4 is out of bounds for dimension 1 with size 4", on a GPU a device-side
assert; a channel count the first convolution refuses), or trains on garbage without a word: NaN pixels are
recorded as a diverged model, an empty test split as ``test_acc`` 0.0, test labels past the classes as a low
accuracy, images of another size than declared as a valid run (the grid's backbone check reads the declared one).

Cost: O(N) over the labels; over the pixels of in-memory splits one sum (20 ms for 48000 MNIST images on two
CPU cores), and only when that is not finite an ``isfinite`` pass, in pieces so that it allocates little.
Dataset splits (read from disk by workers) are checked for emptiness only: reading their items here would
decode files in the parent process before the loader's workers start. Verification pairs are checked too (their
images crashed the first evaluation, at the end of the first epoch, or made it a "diverged" trial): a tensor of
pair images whole, like a split; a Dataset of them by the first image a pair uses (one decode, of the images the
trial decodes at its first evaluation anyway).
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from registry.datasets._types import DataBundle, PairSet, TensorSplit

__all__ = ["check_bundle"]

#: Elements per `torch.isfinite` pass: bounds the boolean temporary of a large in-memory split (64 MiB).
_FINITE_CHUNK = 1 << 26


def check_bundle(bundle: DataBundle, name: str, *, source: str = "") -> None:
    """Raises ``ValueError`` when ``bundle`` breaks the `DataBundle` contract.

    Checked: ``num_classes``, ``in_chans`` and ``image_size`` positive; each `TensorSplit` non-empty, its
    images float ``(N, in_chans, *image_size)`` and finite, its labels int64 in ``0..num_classes-1``; a
    Dataset split non-empty; the pairs' index tensors of one length and within the pair images, the pair images
    float (finite) or uint8 ``(M, in_chans, *image_size)`` (of a Dataset, the first image a pair uses).

    Args:
        bundle: what the factory returned.
        name: the registered name the trial asked for (the error names it, not ``bundle.name``).
        source: where the factory lives (``"my_plugin.make_set"``), named in the error.

    Raises:
        ValueError: every problem found, each with its numbers and the fix.
    """
    problems = _header_problems(bundle)
    if not problems:  # the splits are measured against the header
        problems += _split_problems(bundle.train, "train", bundle, optional=False)
        problems += _split_problems(bundle.test, "test", bundle, optional=True)
        if bundle.pairs is not None:
            problems += _pair_problems(bundle.pairs, bundle)
    if problems:
        where = f" (returned by {source})" if source else ""
        raise ValueError(f"dataset {name!r}{where} is inconsistent, fix its factory: " + "; ".join(problems))


def _header_problems(bundle: DataBundle) -> list[str]:
    size = bundle.image_size
    problems = []
    if not isinstance(bundle.num_classes, int) or bundle.num_classes < 1:
        problems.append(f"num_classes is {bundle.num_classes!r}: give the number of classes in train (at least 1)")
    if not isinstance(bundle.in_chans, int) or bundle.in_chans < 1:
        problems.append(f"in_chans is {bundle.in_chans!r}: give the images' channel count (1 grey, 3 RGB)")
    if (not isinstance(size, tuple | list) or len(size) != 2
            or not all(isinstance(s, int) and s > 0 for s in size)):
        problems.append(f"image_size is {size!r}: give the images' (height, width) in pixels")
    return problems


def _split_problems(split: TensorSplit | Dataset | None, what: str, bundle: DataBundle, *,
                    optional: bool) -> list[str]:
    if split is None:
        return [] if optional else [f"the {what} split is None: return a TensorSplit or a Dataset"]
    empty_fix = "return test=None for a dataset without one" if optional else "give it images"
    if not isinstance(split, TensorSplit):
        n = len(split) if hasattr(split, "__len__") else None  # type: ignore[arg-type]
        return [f"the {what} split is empty (len 0): {empty_fix}"] if n == 0 else []
    images, labels = split.images, split.labels
    if len(labels) == 0:
        return [f"the {what} split is empty (0 images): {empty_fix}"]
    problems = []
    want = (bundle.in_chans, *bundle.image_size)
    if tuple(images.shape[1:]) != want:
        problems.append(
            f"{what} images are {tuple(images.shape)} (N, C, H, W) but the bundle declares in_chans="
            f"{bundle.in_chans}, image_size={tuple(bundle.image_size)}, i.e. (N, {', '.join(map(str, want))}): "
            f"declare the images' channels and size, or convert the images")
    if not images.is_floating_point():
        problems.append(f"{what} images are {images.dtype}: a TensorSplit holds float images as the model sees "
                        f"them; convert them (uint8 pixels: (x.float() - 127.5) / 127.5)")
    else:
        bad = _first_nonfinite(images)
        if bad is not None:
            problems.append(f"{what} image {bad} (and maybe others) holds NaN or inf pixels: replace or drop them")
    if labels.dtype != torch.int64:
        problems.append(f"{what} labels are {labels.dtype}: make them int64 class indices (labels.long())")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        return problems  # their range means nothing
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= bundle.num_classes:
        outside = int(((labels < 0) | (labels >= bundle.num_classes)).sum())
        problems.append(f"{outside} of {len(labels)} {what} labels lie outside 0..{bundle.num_classes - 1} "
                        f"(num_classes={bundle.num_classes}; they span {low}..{high}): number the classes from 0 "
                        f"and set num_classes to their count")
    return problems


def _first_nonfinite(images: torch.Tensor) -> int | None:
    """Index of the first image holding a NaN or inf, or None; in pieces of about `_FINITE_CHUNK` elements."""
    # a NaN or inf pixel makes the sum NaN or inf: a finite sum clears the split in one pass with no temporary
    # (25x faster than isfinite(...).all() on the CPU); a non-finite one (or an overflow) is located below
    if bool(torch.isfinite(images.sum())):
        return None
    per_image = max(1, images[0].numel())
    step = max(1, _FINITE_CHUNK // per_image)
    for start in range(0, len(images), step):
        finite = torch.isfinite(images[start:start + step]).flatten(1).all(1)
        if not bool(finite.all()):
            return start + int((~finite).nonzero()[0, 0])
    return None


def _pair_problems(pairs: PairSet, bundle: DataBundle) -> list[str]:
    lengths = {k: len(getattr(pairs, k)) for k in ("left", "right", "same", "folds")}
    if len(set(lengths.values())) > 1:
        return [f"pairs {pairs.name!r}: left, right, same and folds have lengths {lengths}: give one entry per pair "
                f"in each"]
    if not lengths["left"]:
        return [f"pairs {pairs.name!r} hold no pair: give some, or return pairs=None"]
    n = len(pairs.images)  # type: ignore[arg-type]
    problems = []
    for side in ("left", "right"):
        index = getattr(pairs, side)
        low, high = int(index.min()), int(index.max())
        if low < 0 or high >= n:
            problems.append(f"pairs {pairs.name!r}: {side} indices span {low}..{high}, outside the {n} pair images "
                            f"0..{n - 1}: index into pairs.images")
    if problems:
        return problems
    return _pair_image_problems(pairs, bundle)


def _pair_image_problems(pairs: PairSet, bundle: DataBundle) -> list[str]:
    """The pair images against the bundle's header: all of a tensor, the first one used of a Dataset."""
    if isinstance(pairs.images, torch.Tensor):
        images, what, are, lead = pairs.images, f"pairs {pairs.name!r}: the pair images", "are", "M, "
    else:
        first = int(torch.cat([pairs.left, pairs.right]).min())
        what, are, lead = f"pairs {pairs.name!r}: pair image {first} (pairs.images[{first}])", "is", ""
        try:
            item = pairs.images[first]
        except Exception as err:  # noqa: BLE001 - reported with the bundle's other problems
            return [f"{what} cannot be read ({type(err).__name__}: {err}): replace the file or drop its pairs"]
        if isinstance(item, (tuple, list)) and item:  # (image, label) datasets, as pair_scores takes them
            item = item[0]
        if not isinstance(item, torch.Tensor):
            return [f"{what} is a {type(item).__name__}: return a (C, H, W) tensor, float32 or uint8 pixels"]
        images = item
    want = (bundle.in_chans, *bundle.image_size)
    problems = []
    if images.ndim != (4 if lead else 3) or tuple(images.shape[-3:]) != want:
        problems.append(f"{what} {are} {tuple(images.shape)} ({lead}C, H, W) but the bundle declares in_chans="
                        f"{bundle.in_chans}, image_size={tuple(bundle.image_size)}, i.e. ({lead}"
                        f"{', '.join(map(str, want))}): give the pair images the training images' channels and size "
                        f"(the model embeds both)")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        problems.append(f"{what} {are} {images.dtype}: give float images as the model sees them, or uint8 pixels "
                        f"(scaled by (pixel - 127.5) / 127.5)")
    elif images.is_floating_point():
        bad = _first_nonfinite(images if lead else images[None])
        if bad is not None:
            which = f"pairs {pairs.name!r}: pair image {bad} (and maybe others)" if lead else what
            problems.append(f"{which} holds NaN or inf pixels: replace or drop them (else the trial is recorded as "
                            f"diverged at its first evaluation)")
    return problems
