"""Input-size bookkeeping shared by the face backbones whose last layer is sized by the feature map.

SphereFace, IResNet and MobileFaceNet end in a layer that sees the whole final feature map (a linear layer
over ``C x h x w``, or a depthwise conv with an ``h x w`` kernel), so the input size is part of the
architecture: it is a constructor argument, and a batch of another size is refused with the fix.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch

__all__ = ["parse_input_size", "downsampled", "check_input_size", "SUPPORTED_SIZES", "MIN_SIDE", "FACE_MIN_SIDE"]

#: The input sizes every backbone is tested at (H, W).
SUPPORTED_SIZES = ((28, 28), (112, 96), (112, 112))
#: Smallest ``input_size`` side of the face nets (four stride-2 stages).
FACE_MIN_SIDE = 16
#: Smallest image side each registered backbone takes, checked against the dataset's image size when the grid
#: is validated (a smaller image fails in the first training step). ``timm/...`` models are not listed: they
#: pool globally and take what the model allows.
MIN_SIDE: dict[str, int] = {}


def parse_input_size(input_size: int | Sequence[int], *, name: str, minimum: int) -> tuple[int, int]:
    """``112`` or ``[112, 96]`` -> ``(112, 96)``; raises ValueError below ``minimum`` pixels a side."""
    if isinstance(input_size, numbers.Integral) and not isinstance(input_size, bool):
        size: tuple = (input_size, input_size)
    else:
        try:
            size = tuple(input_size)  # type: ignore[arg-type]
        except TypeError:
            size = ()
    whole = all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in size)
    if len(size) != 2 or not whole or min(size) < minimum:
        raise ValueError(f"{name}: input_size must be [height, width] (or one int), each an integer of at least "
                         f"{minimum} pixels, but got {input_size=}")
    return int(size[0]), int(size[1])


def downsampled(size: int, times: int) -> int:
    """Side after ``times`` stride-2 3x3 convolutions with padding 1 (``ceil(size / 2)`` each time)."""
    for _ in range(times):
        size = (size + 1) // 2
    return size


def check_input_size(x: torch.Tensor, expected: tuple[int, int], *, name: str) -> None:
    """Raises ValueError when the batch's (H, W) is not the size the network was built for."""
    got = tuple(x.shape[-2:])
    if got != expected:
        raise ValueError(f"{name} was built for {expected[0]}x{expected[1]} inputs (its last layer is sized by "
                         f"the final feature map), but got {got[0]}x{got[1]}; set the backbone's "
                         f"input_size: [{got[0]}, {got[1]}] to match the dataset's image_size")
