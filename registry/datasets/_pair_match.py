"""`check_like_training`: are the verification pair images of the training images' size and colour?

Every image is resized to ``image_size`` and converted to ``in_chans``, so pair images that are not did not
crash: the model was evaluated on another crop of the face (unaligned 250x250 LFW photos squeezed to 112x96) or
on grey faces it never trained on, and logged a meaningless accuracy. Only headers are compared (no pixel is
decoded), those `registry.datasets.pairs` reads anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from registry.datasets._images import ImageHeader, is_grey
from registry.datasets.pairs import PairsFileError

__all__ = ["check_like_training"]


def check_like_training(headers: Sequence[ImageHeader], names: Sequence[str], training: Sequence[ImageHeader], *,
                        source: str, key: str, root: Path, in_chans: int) -> None:
    """Raises ``PairsFileError`` when the pair images are not of the training images' size, or (``in_chans=3``)
    greyscale where they are colour or the other way round.

    Checked only where the training images agree: a training set of several sizes (or of grey and colour images)
    is compared with nothing.

    Args:
        headers: each pair image's ``((height, width), mode)``.
        names: each pair image's name in messages (its path, or ``image 7`` of a .bin).
        training: the first training images' headers (``imagefolder``'s first 100).
        source: the pairs file or .bin, named first in the message.
        key: the parameter that points at the pair images (``pairs_root``, ``bin``).
        root: the training images' folder.
        in_chans: channels the images are converted to; with 1 greyscale and colour meet as grey.
    """
    sizes = {size for size, _ in training}
    seen = f"the training images under {root} (the first {len(training)} read)"
    if len(sizes) == 1:
        (size,) = sizes
        off = [(name, got) for name, (got, _) in zip(names, headers, strict=True) if got != size]
        if off:
            shown = "; ".join(f"{name} is {h}x{w}" for name, (h, w) in off[:3])
            more = f"; and {len(off) - 3} more" if len(off) > 3 else ""
            raise PairsFileError(
                f"{source}: {len(off)} of {len(headers)} pair images are not {size[0]}x{size[1]} (height x width) "
                f"like {seen}: {shown}{more}. They would be resized, so the model would be evaluated on another crop "
                f"of the face than it trained on; align them with the training images' template (bench align "
                f"--template ..., docs/faces.md), or set {key} to the aligned copy")
    greys = {is_grey(mode) for _, mode in training}
    if in_chans == 3 and len(greys) == 1:
        grey = greys.pop()
        off = [(name, mode) for name, (_, mode) in zip(names, headers, strict=True) if is_grey(mode) != grey]
        if off:
            shown = "; ".join(f"{name} is {mode}" for name, mode in off[:3])
            more = f"; and {len(off) - 3} more" if len(off) > 3 else ""
            fix = (f"convert them to greyscale (set {key} to the converted copy)" if grey else
                   f"use colour copies of them (set {key} to those)")
            raise PairsFileError(
                f"{source}: {len(off)} of {len(headers)} pair images are {'colour' if grey else 'greyscale'} but "
                f"{seen} are {'greyscale' if grey else 'colour'} and in_chans is 3: {shown}{more}. The model would "
                f"be evaluated on {'colour' if grey else 'grey'} faces it never trained on; {fix}, or train and "
                f"evaluate in greyscale with in_chans: 1")
