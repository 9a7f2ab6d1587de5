"""Decoding and encoding face images: PIL in, float32 ``(C, H, W)`` in ``[-1, 1]`` out.

The insightface convention ``(pixel - 127.5) / 127.5`` is used for every face set (image folders, pairs
files, ``.bin`` files, the synthetic faces), so a net trained on one is evaluated on the others unchanged.
Training splits streamed from disk stay uint8 until they reach the training device (`decode_image_uint8`,
then `normalize_uint8` there): a quarter of the bytes through worker shared memory, pinning and the copy.
Verification images (`ImageFiles`, `EncodedImages`) stay uint8 too, a quarter of the memory when a trial
holds them decoded for its every-epoch evaluation (`bench.verification.decoded_pairs`).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["IMAGE_EXTENSIONS", "decode_image", "decode_image_uint8", "normalize_uint8", "to_tensor", "to_uint8",
           "encode_image", "ImageFiles", "EncodedImages", "parse_image_size", "check_in_chans", "ImageHeader",
           "image_header", "is_grey"]

#: File endings treated as images when scanning a folder (case-insensitive).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


def parse_image_size(image_size: int | Sequence[int], *, name: str = "image_size") -> tuple[int, int]:
    """``112`` or ``[112, 96]`` -> ``(112, 96)`` (height, width); raises ValueError otherwise."""
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        size = (image_size, image_size)
    elif isinstance(image_size, (list, tuple)) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in image_size):  # not "12" -> (1, 2), 112.7 -> 112
        size = tuple(image_size)
    else:
        size = ()
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"{name} must be [height, width] or one int, each >= 1, but got {image_size!r}")
    return size  # type: ignore[return-value]


def check_in_chans(in_chans: int) -> None:
    if in_chans not in (1, 3):
        raise ValueError(f"in_chans must be 1 (grayscale) or 3 (RGB) for image files, but got {in_chans=}")


#: ``((height, width), mode)`` of an image file as its header states them; mode is PIL's (``"L"``, ``"RGB"``, ...).
ImageHeader = tuple[tuple[int, int], str]


def image_header(source: str | Path | bytes) -> ImageHeader:
    """An image's ``((height, width), PIL mode)`` from its header alone (no pixel is decoded).

    Raises:
        Whatever PIL raises for a file it cannot identify (``UnidentifiedImageError``, ``OSError``).
    """
    from PIL import Image

    with Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source) as im:
        return (im.size[1], im.size[0]), im.mode


def is_grey(mode: str) -> bool:
    """Whether PIL's ``mode`` holds one grey channel (``1``, ``L``, ``LA``, ``I``, ``I;16``, ``F``), not colour."""
    return mode in ("1", "L", "LA", "I", "F") or mode.startswith("I;")


def normalize_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (any shape) -> float32 in ``[-1, 1]``: ``(pixel - 127.5) / 127.5``, on their device."""
    return images.float().sub_(127.5).div_(127.5)


def _chw_uint8(array: np.ndarray) -> torch.Tensor:
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """uint8 ``(H, W)`` or ``(H, W, C)`` -> float32 ``(C, H, W)`` in ``[-1, 1]``."""
    return normalize_uint8(_chw_uint8(array))


def to_uint8(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """Inverse of `to_tensor`: ``(C, H, W)`` in ``[-1, 1]`` -> uint8 ``(H, W, C)`` (``(H, W)`` for one channel)."""
    x = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    x = np.clip(np.rint(x * 127.5 + 127.5), 0, 255).astype(np.uint8).transpose(1, 2, 0)
    return x[:, :, 0] if x.shape[2] == 1 else x


def decode_image(source: str | Path | bytes, image_size: tuple[int, int], in_chans: int) -> torch.Tensor:
    """Reads an image file (or its encoded bytes) as float32 ``(in_chans, H, W)`` in ``[-1, 1]``.

    Converted to grayscale (``in_chans=1``) or RGB (3) and resized bilinearly when its size differs.

    Raises:
        Whatever PIL raises for an unreadable file (``UnidentifiedImageError``, ``OSError`` for a truncated
        one, ...); callers decide whether that skips the sample or stops.
    """
    return normalize_uint8(decode_image_uint8(source, image_size, in_chans))


def decode_image_uint8(source: str | Path | bytes, image_size: tuple[int, int], in_chans: int) -> torch.Tensor:
    """As `decode_image`, but the pixels as uint8 ``(in_chans, H, W)`` in ``[0, 255]`` (`normalize_uint8`
    turns them into what `decode_image` returns, bit for bit)."""
    from PIL import Image

    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    with Image.open(fp) as im:
        im = im.convert("L" if in_chans == 1 else "RGB")
        height, width = image_size
        if im.size != (width, height):
            im = im.resize((width, height), Image.BILINEAR)
        array = np.array(im, dtype=np.uint8)  # a writable copy
    return _chw_uint8(array)


def encode_image(image: torch.Tensor | np.ndarray, fmt: str = "png", quality: int = 95) -> bytes:
    """A ``(C, H, W)`` image in ``[-1, 1]`` (C = 1 or 3) as JPEG or PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    fmt = fmt.lower().lstrip(".")
    pil_format = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG"}.get(fmt)
    if pil_format is None:
        raise ValueError(f"image format must be jpg or png, but got {fmt!r}")
    kwargs = {"quality": quality} if pil_format == "JPEG" else {}
    Image.fromarray(to_uint8(image)).save(buf, format=pil_format, **kwargs)
    return buf.getvalue()


class ImageFiles(Dataset):
    """Item i is image file ``paths[i]`` decoded to uint8 pixels ``(in_chans, H, W)``; for verification pairs,
    where every image must be read (an unreadable one raises ValueError naming the file)."""

    def __init__(self, paths: Sequence[str | Path], image_size: tuple[int, int], in_chans: int) -> None:
        self.paths = [str(p) for p in paths]
        self.image_size, self.in_chans = image_size, in_chans

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        try:
            return decode_image_uint8(self.paths[index], self.image_size, self.in_chans)
        except Exception as err:  # noqa: BLE001 - any decoder failure is reported with the file
            raise ValueError(f"cannot read verification image {self.paths[index]} ({type(err).__name__}: {err}); "
                             f"replace the file or drop its pairs") from err


class EncodedImages(Dataset):
    """Item i is ``blobs[i]`` (JPEG/PNG bytes, as in an insightface ``.bin``) decoded to uint8 pixels
    ``(in_chans, H, W)``."""

    def __init__(self, blobs: Sequence[bytes], image_size: tuple[int, int], in_chans: int, *, source: str = "") -> None:
        self.blobs = blobs
        self.image_size, self.in_chans, self.source = image_size, in_chans, source

    def __len__(self) -> int:
        return len(self.blobs)

    def __getitem__(self, index: int) -> torch.Tensor:
        try:
            return decode_image_uint8(self.blobs[index], self.image_size, self.in_chans)
        except Exception as err:  # noqa: BLE001
            raise ValueError(f"{self.source}: image {index} cannot be decoded ({type(err).__name__}: {err})") from err
