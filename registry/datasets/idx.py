"""Reader for the IDX format of MNIST and Fashion-MNIST (http://yann.lecun.com/exdb/mnist/).

A file is a big-endian header (two zero bytes, a type code, the number of dimensions, one uint32 per
dimension) followed by the data; ``.gz`` files are read through gzip.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

__all__ = ["read_idx", "idx_shape", "write_idx", "IDXError"]

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
           0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}

#: The fix for a damaged file: `download_idx` skips a file that exists, damaged or not.
_REFETCH = ("delete it and download it again (download: true fetches only the files that are missing, so it keeps "
            "a damaged one)")

#: The fix for a file that is not IDX at all, after `_REFETCH`: the files read are found by name, so the real ones
#: may be in another folder.
_ELSEWHERE = "or, if the real IDX files are in another folder, point the dataset's root at that folder"


class IDXError(ValueError):
    """A file that is not a valid IDX file; the message names the file, what is wrong and the fix."""


def _looks_like_html(head: bytes) -> bool:
    """An HTML or XML page (after a UTF-8 byte-order mark and white space), such as a download's error page."""
    return head.removeprefix(b"\xef\xbb\xbf").lstrip()[:1] == b"<"


def _not_gzip(path: Path, head: bytes) -> str:
    """The message for a ``.gz`` file whose first bytes are not gzip's: what it is (an HTML page a failed download
    saved, an empty file, an uncompressed IDX file) and the fix. Without it gzip's "Not a gzipped file (b'<!')"
    was all that was said, as "damaged or truncated"."""
    magic = head[:4].hex() or "missing"
    what = f"{path}: not a gzip-compressed IDX file (magic bytes {magic})"
    if len(head) >= 4 and head[:2] == b"\x00\x00":  # an IDX header: the file was saved without compressing it
        return (f"{what}: it is an uncompressed IDX file whose name ends in .gz; rename it to {path.stem}, so that "
                f"it is read as it is")
    if not head:
        kind = "the file is empty (an interrupted download or copy)"
    elif _looks_like_html(head):
        kind = ("it is an HTML page, not gzip-compressed, such as the error or login page of a failed download saved "
                "under this name")
    else:
        kind = "a .gz file starts with gzip's magic bytes 1f8b; this one is damaged or another kind of file"
    return f"{what}: {kind}; {_REFETCH}, {_ELSEWHERE}"


def _check_gzip(path: Path) -> None:
    """Raises `IDXError` (`_not_gzip`) when a ``.gz`` file does not start with gzip's magic bytes.

    Raises:
        OSError: the file cannot be read.
    """
    with open(path, "rb") as f:
        head = f.read(64)
    if head[:2] != b"\x1f\x8b":
        raise IDXError(_not_gzip(path, head))


def _not_idx(path: Path, head: bytes) -> str:
    """The message for a file whose first bytes are not an IDX header's (two zero bytes): what it looks like (a
    gzip without ``.gz``, an HTML or text page a failed download saved, an empty file) and the fix."""
    magic = head[:4].hex() or "missing"
    if head[:2] == b"\x1f\x8b" and path.suffix == ".gz":  # gzip's magic inside the gzip
        return (f"{path}: not an IDX file (magic bytes {magic}): it is gzip-compressed twice; gunzip it once "
                f"(gunzip {path.name} leaves {path.stem}, compressed once) and rename the result to {path.name}, "
                f"or {_REFETCH}")
    if head[:2] == b"\x1f\x8b":  # read as raw IDX because the name lacks .gz
        return (f"{path}: not an IDX file as named (magic bytes {magic}): it is gzip-compressed but its name does "
                f"not end in .gz; rename it to {path.name}.gz, so that it is read through gzip")
    if not head:
        kind = "the file is empty (an interrupted download or copy)"
    elif len(head) < 4:
        kind = f"the file ends within the 4 bytes that start an IDX header ({len(head)} bytes): it is truncated"
    elif _looks_like_html(head):
        kind = "it looks like an HTML or XML page, such as the error page of a failed download saved under this name"
    else:
        kind = "an MNIST-format IDX file starts with two zero bytes; this one is damaged or another kind of file"
    return f"{path}: not an IDX file (magic bytes {magic}): {kind}; {_REFETCH}, {_ELSEWHERE}"


def _parse_header(path: Path, head: bytes) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(shape, dtype, header bytes)`` from the first bytes of an IDX file (magic, type code, dimensions)."""
    if len(head) < 4 or head[0] != 0 or head[1] != 0:
        raise IDXError(_not_idx(path, head))
    code, ndim = head[2], head[3]
    if code not in _DTYPES:
        raise IDXError(f"{path}: unknown IDX type code 0x{code:02x} (valid: {', '.join(f'0x{c:02x}' for c in _DTYPES)}"
                       f"; MNIST's files use 0x08, unsigned bytes): the file is damaged or not an MNIST-format IDX "
                       f"file; {_REFETCH}, {_ELSEWHERE}")
    header = 4 + 4 * ndim
    if len(head) < header:
        raise IDXError(f"{path}: truncated header ({len(head)} bytes, {header} needed)")
    return struct.unpack(f">{ndim}I", head[4:header]), np.dtype(_DTYPES[code]), header


def read_idx(path: str | Path) -> np.ndarray:
    """Reads an IDX file (raw or ``.gz``).

    Returns:
        The array with the file's shape, e.g. uint8 ``(N, 28, 28)`` for images, ``(N,)`` for labels.

    Raises:
        IDXError: bad magic number (a ``.gz`` that is not gzip: an HTML page, an empty file...), unknown type code,
            or fewer data bytes than the header promises.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        if path.suffix == ".gz":
            _check_gzip(path)
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:  # a truncated .gz raises EOFError
        raise IDXError(f"{path}: cannot read ({err}); the file is damaged or truncated: {_REFETCH}") from err
    shape, dtype, header = _parse_header(path, raw)
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise IDXError(f"{path}: truncated or padded: header says shape {shape} ({expected} data bytes), "
                       f"the file has {len(raw) - header}; {_REFETCH}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def idx_shape(path: str | Path) -> tuple[int, ...]:
    """The shape an IDX file holds, checked without decoding its data (grid validation, before training).

    The header is read, and the file's size compared with the one it promises (for ``.gz``, the size gzip
    records at its end); when they differ the whole file is read, so the error is `read_idx`'s own.

    Raises:
        IDXError: as `read_idx`.
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            _check_gzip(path)
            with gzip.open(path, "rb") as f:
                head = f.read(4 + 4 * 255)
            with open(path, "rb") as f:
                f.seek(-4, 2)
                size = struct.unpack("<I", f.read(4))[0]  # ISIZE: uncompressed length mod 2**32
        else:
            with open(path, "rb") as f:
                head = f.read(4 + 4 * 255)
            size = path.stat().st_size
    except (OSError, EOFError) as err:
        raise IDXError(f"{path}: cannot read ({err}); the file is damaged or truncated: {_REFETCH}") from err
    shape, dtype, header = _parse_header(path, head)
    total = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size != (total if path.suffix != ".gz" else total % 2**32):
        return tuple(read_idx(path).shape)  # raises with the exact problem (or the .gz is multi-member and fine)
    return shape


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Writes ``array`` as IDX (gzip when the name ends in ``.gz``); used by tests and tools."""
    path = Path(path)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _DTYPES.items()}
    dtype = np.dtype(array.dtype)
    if dtype not in codes:
        raise IDXError(f"cannot write dtype {dtype} as IDX; use one of {sorted(str(d) for d in codes)}")
    big = array.astype(dtype.newbyteorder(">"))
    payload = bytes([0, 0, codes[dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + big.tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(payload)
