"""Verification pairs: the LFW ``pairs.txt`` format over an image root, and insightface's ``.bin`` files.

``pairs.txt`` (LFW View 2, http://vis-www.cs.umass.edu/lfw/README.txt): a header ``folds n`` (``10 300``),
then per fold ``n`` matched lines ``name i j`` followed by ``n`` mismatched lines ``name1 i name2 j``;
image ``i`` of ``name`` is ``root/name/name_{i:04d}.jpg``. A one-number header (``500``, View 1) is one
fold.

An insightface ``.bin`` (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``) is a pickle of
``(bins, issame_list)``: ``2 * P`` encoded JPEG/PNG images (pair k is images ``2k`` and ``2k + 1``) and ``P``
booleans; its ten folds are consecutive blocks of pairs. Pickles can run code when loaded, so the reader
admits only the types that layout needs and refuses anything else before it is called.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from registry.datasets._images import EncodedImages, ImageFiles, ImageHeader, image_header
from registry.datasets._types import PairSet

__all__ = ["PairLine", "PairsFileError", "UnsafePickleError", "read_pairs_txt", "write_pairs_txt",
           "resolve_pair_images", "pairs_from_txt", "read_verification_bin", "write_verification_bin",
           "pairs_from_bin", "check_bin_images", "pair_image_headers", "make_pairs", "fold_blocks"]


class PairsFileError(ValueError):
    """A pairs file that cannot be used; the message names the file, the line and the fix."""


class UnsafePickleError(PairsFileError):
    """A ``.bin`` pickle that asks for a type a verification file never holds (it could run code)."""


@dataclass(frozen=True)
class PairLine:
    """One pair of a ``pairs.txt``: ``name1``'s image ``n1`` against ``name2``'s image ``n2`` (1-based)."""

    lineno: int
    name1: str
    n1: int
    name2: str
    n2: int
    same: bool
    fold: int


# pairs.txt ------------------------------------------------------------------------------------------
def read_pairs_txt(path: str | Path) -> list[PairLine]:
    """Parses a ``pairs.txt`` in the LFW layout.

    Raises:
        FileNotFoundError: the file is missing.
        PairsFileError: a bad header, a malformed line (with its number), or fewer/more pairs than the
            header promises.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"pairs file {path} does not exist; set pairs: to the LFW-format pairs.txt")
    lines = path.read_text(encoding="utf-8-sig", errors="replace").splitlines()  # -sig: a BOM from Notepad
    numbered = [(i + 1, line.split()) for i, line in enumerate(lines) if line.strip()]
    if not numbered:
        raise PairsFileError(f"{path} is empty; a pairs.txt starts with the header 'folds pairs_per_fold' ('10 300')")
    head_no, head = numbered[0]
    try:
        counts = [int(v) for v in head]
    except ValueError:
        counts = []
    if len(counts) not in (1, 2) or min(counts) < 1:
        raise PairsFileError(f"{path} line {head_no}: expected the header 'folds pairs_per_fold' (LFW View 2: "
                             f"'10 300') or 'pairs_per_fold', but got {' '.join(head)!r}")
    folds, per_fold = (1, counts[0]) if len(counts) == 1 else counts
    body = numbered[1:]
    if len(body) != 2 * folds * per_fold:
        raise PairsFileError(f"{path}: the header '{' '.join(head)}' promises {folds} fold(s) of {per_fold} matched "
                             f"and {per_fold} mismatched pairs ({2 * folds * per_fold} lines), but {len(body)} "
                             f"pair lines follow; fix the header or the file")
    pairs = []
    for k, (lineno, fields) in enumerate(body):
        try:
            if len(fields) == 3:
                pairs.append(PairLine(lineno, fields[0], int(fields[1]), fields[0], int(fields[2]), True,
                                      k // (2 * per_fold)))
            elif len(fields) == 4:
                pairs.append(PairLine(lineno, fields[0], int(fields[1]), fields[2], int(fields[3]), False,
                                      k // (2 * per_fold)))
            else:
                raise ValueError
        except ValueError:
            raise PairsFileError(f"{path} line {lineno}: expected 'name n1 n2' (same person) or 'name1 n1 name2 n2' "
                                 f"(different people), but got {' '.join(fields)!r}") from None
    return pairs


def write_pairs_txt(path: str | Path, pairs: Sequence[tuple[str, int, str, int]], *, folds: int,
                    per_fold: int) -> None:
    """Writes ``(name1, n1, name2, n2)`` pairs in the LFW layout; matched pairs have ``name1 == name2``.

    ``pairs`` must already be ordered fold by fold, each fold's ``per_fold`` matched pairs first.
    """
    if len(pairs) != 2 * folds * per_fold:
        raise ValueError(f"expected {2 * folds * per_fold} pairs for {folds} folds of {per_fold}, got {len(pairs)}")
    lines = [f"{folds}\t{per_fold}"]
    for name1, n1, name2, n2 in pairs:
        lines.append(f"{name1}\t{n1}\t{n2}" if name1 == name2 else f"{name1}\t{n1}\t{name2}\t{n2}")
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def _image_path(root: Path, name: str, number: int, ext: str) -> Path:
    return root / name / f"{name}_{number:04d}.{ext.lstrip('.')}"


def _header_or_why(path: Path) -> ImageHeader | str:
    """``path``'s `image_header`, or why PIL cannot identify it as an image from its header (an HTML page saved as
    .jpg, say). Only the header is read: a file truncated further on is still found, naming it, at the first
    evaluation."""
    from PIL import UnidentifiedImageError

    try:
        return image_header(path)
    except (UnidentifiedImageError, OSError) as err:
        return f"not an image: {type(err).__name__}"


def resolve_pair_images(pairs: Sequence[PairLine], root: str | Path, ext: str = "jpg", *,
                        source: str | Path = "pairs.txt") -> tuple[list[Path], np.ndarray, np.ndarray]:
    """The distinct image paths the pairs name, and each pair's two indices into that list.

    Raises:
        FileNotFoundError: naming the pairs-file line of each missing or empty image, or one whose header
            is not an image's (the first three, and how many in all) and the fix.
    """
    paths, left, right, _ = pair_image_headers(pairs, root, ext, source=source)
    return paths, left, right


def pair_image_headers(pairs: Sequence[PairLine], root: str | Path, ext: str = "jpg", *,
                       source: str | Path = "pairs.txt",
                       ) -> tuple[list[Path], np.ndarray, np.ndarray, list[ImageHeader]]:
    """As `resolve_pair_images`, with each image's ``((height, width), mode)`` header (read there anyway) last.

    Raises:
        FileNotFoundError: as `resolve_pair_images`.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"pairs image root {root} does not exist; set pairs_root to the folder holding "
                                f"<name>/<name>_0001.{ext.lstrip('.')}")
    index: dict[Path, int] = {}
    headers: list[ImageHeader] = []
    missing: list[tuple[int, Path, str]] = []
    left, right = [], []
    for pair in pairs:
        ids = []
        for name, number in ((pair.name1, pair.n1), (pair.name2, pair.n2)):
            path = _image_path(root, name, number, ext)
            if path not in index:
                if not path.is_file():
                    missing.append((pair.lineno, path, "missing"))
                elif path.stat().st_size == 0:
                    missing.append((pair.lineno, path, "empty file"))
                elif isinstance(header := _header_or_why(path), str):
                    missing.append((pair.lineno, path, header))
                else:
                    headers.append(header)
                index[path] = len(index)
            ids.append(index[path])
        left.append(ids[0])
        right.append(ids[1])
    if missing:
        shown = "; ".join(f"line {n}: {p} ({why})" for n, p, why in missing[:3])
        more = f"; and {len(missing) - 3} more" if len(missing) > 3 else ""
        first = missing[0][1]
        others = sorted(p.name for p in first.parent.glob(first.stem + ".*")) if first.parent.is_dir() else []
        hint = (f"{first.parent} holds {', '.join(others)}: set image_ext" if others and missing[0][2] == "missing"
                else "replace the file(s), or drop their pairs" if missing[0][2].startswith("not an image")
                else "fix pairs_root, or the pairs file")
        raise FileNotFoundError(f"{source}: {len(missing)} image(s) named by the pairs cannot be used: {shown}{more}; "
                                f"{hint}")
    return list(index), np.asarray(left, dtype=np.int64), np.asarray(right, dtype=np.int64), headers


_METRIC_KEY = re.compile(r"[\w.\- /]+")  # what MLflow takes in a metric key; the name prefixes the pairs' metrics


def check_pairs_name(name: str) -> None:
    """Raises ValueError when ``name`` cannot prefix MLflow metric keys (``<name>_acc``): every epoch's write
    of the trial would fail."""
    if not isinstance(name, str) or not _METRIC_KEY.fullmatch(name):
        raise ValueError(f"pairs_name must be letters, digits, '_', '-', '.', ' ' or '/' (it prefixes the metrics, "
                         f"<pairs_name>_acc, which MLflow names so), but got {name!r}")


def _pairs_name(name: str | None, default: str) -> str:
    """``name`` as given (checked), else ``default`` (a folder or file name) with what MLflow refuses as ``_``."""
    if name is not None:
        check_pairs_name(name)
        return name
    return re.sub(r"[^\w.\- /]", "_", default) or "pairs"


def pairs_from_txt(path: str | Path, root: str | Path, image_size: tuple[int, int], in_chans: int, *,
                   ext: str = "jpg", name: str | None = None) -> PairSet:
    """A `PairSet` over the images a ``pairs.txt`` names (decoded lazily by an `ImageFiles` Dataset)."""
    lines = read_pairs_txt(path)
    paths, left, right = resolve_pair_images(lines, root, ext, source=path)
    return PairSet(images=ImageFiles(paths, image_size, in_chans), left=torch.from_numpy(left),
                   right=torch.from_numpy(right), same=torch.tensor([p.same for p in lines], dtype=torch.bool),
                   folds=torch.tensor([p.fold for p in lines], dtype=torch.long),
                   name=_pairs_name(name, Path(root).expanduser().name))


# insightface .bin -----------------------------------------------------------------------------------
def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    # Python 3 writes bytes at pickle protocol < 3 as _codecs.encode(str, "latin1").
    if encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "iso88591"):
        raise UnsafePickleError(f"_codecs.encode with encoding {encoding!r}; a verification file only uses latin1")
    return text.encode("latin1")


def _numpy_global(module: str, name: str) -> Any:
    """The few numpy callables an array or a scalar pickles through; each only builds plain data."""
    if (module, name) in (("numpy", "ndarray"), ("numpy", "dtype")):
        return getattr(np, name)
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in ("_reconstruct", "scalar"):
        return getattr(multiarray, name)
    if module in ("numpy.core.numeric", "numpy._core.numeric") and name == "_frombuffer":  # protocol 5
        return numeric._frombuffer
    return None


class _SafeUnpickler(pickle.Unpickler):
    """Admits builtin containers, bytes, str, bool, int, float (no global needed for those), latin1
    ``_codecs.encode`` and numpy arrays/dtypes/scalars; every other global is refused before it is called."""

    source = ""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        found = _numpy_global(module, name)
        if found is not None:
            return found
        raise UnsafePickleError(
            f"{self.source}: refused to load '{module}.{name}'. An insightface verification .bin holds only "
            f"(list of image bytes, list of bools); this reader admits only those types (and numpy arrays) so "
            f"that a crafted pickle cannot run code. Nothing was executed; the file is not a verification .bin "
            f"or has been tampered with, so get it again from a source you trust")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.source}: persistent ids are not part of a verification .bin; refused")


#: pickletools' words when an opcode's argument runs past the end: the bytes it declares and those left.
_SHORT_ARG = re.compile(r"expected (\d+) bytes in a \w+, but only (\d+) remain")


def _truncated_size(path: Path) -> int | None:
    """When ``path`` is a pickle cut short, the least size (bytes) the complete file has, else None (a pickle that
    reaches its STOP, or no pickle at all: the first opcode is unknown). Reads the opcodes only, calls nothing.

    The bound is what the opcodes read so far declare: the length of the string or frame cut off, else one byte
    more than the file (a pickle that ends between two opcodes, before STOP). Only pickletools' end-of-data errors
    count: a byte that is no opcode, or text that does not decode, is damage, not truncation."""
    import pickletools

    size = path.stat().st_size
    need = size + 1
    with open(path, "rb") as f:
        try:
            for op, arg, pos in pickletools.genops(f):
                if op.name == "FRAME":  # protocol 4+: the frame's length follows its 9 header bytes
                    need = max(need, pos + 9 + int(arg))
        except ValueError as err:  # UnicodeDecodeError, an unknown opcode...: damaged, not cut short
            short = _SHORT_ARG.search(str(err))
            if short is not None:
                return max(need, size - int(short.group(2)) + int(short.group(1)))
            cut = str(err).startswith(("not enough data in stream", "pickle exhausted before seeing STOP"))
            return need if cut else None
    return None  # complete: the error was another


def read_verification_bin(path: str | Path) -> tuple[list[bytes], np.ndarray]:
    """Loads an insightface ``.bin`` with the restricted unpickler.

    Returns:
        ``(blobs, issame)``: ``2 * P`` encoded images and a bool ``(P,)`` array.

    Raises:
        FileNotFoundError: the file is missing.
        UnsafePickleError: the pickle names a type outside the format (nothing was called).
        PairsFileError: not a pickle, or not the ``(bins, issame_list)`` layout.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"verification file {path} does not exist; set bin: to an insightface .bin "
                                f"(lfw.bin, cfp_fp.bin, agedb_30.bin)")
    with open(path, "rb") as f:
        unpickler = _SafeUnpickler(f, encoding="bytes")  # Python 2 str -> bytes, as insightface loads them
        unpickler.source = str(path)
        try:
            data = unpickler.load()
        except UnsafePickleError:
            raise
        except Exception as err:  # noqa: BLE001 - truncated or not a pickle at all
            size = path.stat().st_size
            if size == 0:
                raise PairsFileError(f"{path}: the file is empty (0 bytes): download it again, or point bin: at "
                                     f"a complete copy") from err
            expected = _truncated_size(path)
            if expected is not None:
                raise PairsFileError(f"{path}: the file is truncated ({size} byte{'s' if size != 1 else ''} read, at "
                                     f"least {expected} expected by the pickle inside): download it again, or point "
                                     f"bin: at a complete copy") from err
            raise PairsFileError(f"{path}: not a readable pickle ({type(err).__name__}: {err}); an insightface "
                                 f".bin is a pickle of (bins, issame_list)") from err
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise PairsFileError(f"{path}: expected a pickle of (bins, issame_list), but got {type(data).__name__}")
    bins, issame = data
    blobs = []
    for i, b in enumerate(bins):
        if isinstance(b, np.ndarray) and b.dtype == np.uint8:
            b = b.tobytes()
        if not isinstance(b, (bytes, bytearray)):
            raise PairsFileError(f"{path}: image {i} is a {type(b).__name__}, not encoded image bytes")
        blobs.append(bytes(b))
    try:
        same = np.asarray(issame)
    except Exception as err:  # noqa: BLE001
        raise PairsFileError(f"{path}: issame_list is not a list of booleans ({err})") from err
    if same.ndim != 1 or same.dtype.kind not in "bui":
        raise PairsFileError(f"{path}: issame_list must be a flat list of booleans, but got dtype {same.dtype} "
                             f"shape {same.shape}")
    if len(blobs) != 2 * len(same):
        raise PairsFileError(f"{path}: {len(blobs)} images for {len(same)} pairs; a .bin holds two images per pair")
    return blobs, same.astype(bool)


def write_verification_bin(path: str | Path, blobs: Sequence[bytes], issame: Sequence[bool]) -> None:
    """Writes ``(bins, issame_list)`` the way insightface's packing scripts do (tests and tools)."""
    with open(path, "wb") as f:
        pickle.dump((list(blobs), [bool(s) for s in issame]), f, protocol=pickle.HIGHEST_PROTOCOL)


def fold_blocks(n_pairs: int, folds: int = 10) -> np.ndarray:
    """Fold of each pair when the folds are consecutive blocks (sklearn ``KFold(folds)`` without shuffling)."""
    out = np.empty(n_pairs, dtype=np.int64)
    for k, block in enumerate(np.array_split(np.arange(n_pairs), folds)):
        out[block] = k
    return out


def pairs_from_bin(path: str | Path, image_size: tuple[int, int], in_chans: int, *, name: str | None = None,
                   folds: int = 10) -> PairSet:
    """A `PairSet` over an insightface ``.bin`` (images decoded lazily from the bytes held in memory)."""
    blobs, same = read_verification_bin(path)
    n = len(same)
    return PairSet(images=EncodedImages(blobs, image_size, in_chans, source=str(path)),
                   left=torch.arange(0, 2 * n, 2), right=torch.arange(1, 2 * n, 2), same=torch.from_numpy(same),
                   folds=torch.from_numpy(fold_blocks(n, folds)), name=_pairs_name(name, Path(path).stem))


def check_bin_images(path: str | Path) -> list[ImageHeader]:
    """Validation: the file loads safely and every image's header is a JPEG's or PNG's (no pixel is decoded: a
    blob damaged further on is still found, naming it, at the first evaluation).

    Returns:
        Each image's ``((height, width), PIL mode)``, in the file's order.

    Raises:
        PairsFileError: as `read_verification_bin`, or naming the images that are no image (the first three, and
            how many in all).
    """
    blobs, _ = read_verification_bin(path)
    headers, bad = [], []
    for i, blob in enumerate(blobs):
        try:
            headers.append(image_header(blob))
        except Exception as err:  # noqa: BLE001 - whatever PIL says, the blob is no image
            bad.append(f"image {i} ({type(err).__name__}: {err})")
    if bad:
        more = f"; and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise PairsFileError(f"{path}: {len(bad)} of {len(blobs)} images are not a JPEG/PNG: {'; '.join(bad[:3])}"
                             f"{more}; get the file again, or point bin: at a complete copy")
    return headers


# generated pairs -------------------------------------------------------------------------------------
def make_pairs(labels: np.ndarray, *, folds: int, per_fold: int,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Random LFW-style pairs over a labelled image set: per fold ``per_fold`` matched pairs (two different
    images of one identity) then ``per_fold`` mismatched pairs (images of two identities).

    Returns:
        ``(left, right, same, fold)`` arrays of length ``2 * folds * per_fold``.

    Raises:
        ValueError: no identity has two images, or fewer than two identities.
    """
    labels = np.asarray(labels)
    by_id = {int(c): np.flatnonzero(labels == c) for c in np.unique(labels)}
    multi = [c for c, idx in by_id.items() if len(idx) >= 2]
    ids = list(by_id)
    if not multi or len(ids) < 2:
        raise ValueError(f"pairs need an identity with two images and two identities; got {len(ids)} identities, "
                         f"{len(multi)} with two or more images")
    left, right, same, fold = [], [], [], []
    for k in range(folds):
        for _ in range(per_fold):
            c = multi[rng.integers(len(multi))]
            a, b = rng.choice(by_id[c], size=2, replace=False)
            left.append(a), right.append(b), same.append(True), fold.append(k)
        for _ in range(per_fold):
            c1, c2 = rng.choice(ids, size=2, replace=False)
            left.append(rng.choice(by_id[int(c1)])), right.append(rng.choice(by_id[int(c2)]))
            same.append(False), fold.append(k)
    return (np.asarray(left, dtype=np.int64), np.asarray(right, dtype=np.int64), np.asarray(same, dtype=bool),
            np.asarray(fold, dtype=np.int64))
