"""Landmark files in the format of the SphereFace repositories.

One face per line: an image path, then the five landmarks as ten numbers ``x1 y1 x2 y2 ... x5 y5``
(left eye, right eye, nose, left and right mouth corners), separated by tabs or spaces::

    Aaron_Eckhart/Aaron_Eckhart_0001.jpg	107	112	146	110	126	134	110	155	142	153

The CASIA-WebFace list of sphereface_pytorch (``casia_landmark.txt``) has a class index between the path
and the numbers (eleven numbers); that variant is read too, the index ignored. Blank lines and lines
starting with ``#`` are skipped. With tabs as separators the path is the first field; with spaces, the
path is everything before the trailing numbers (so it may contain spaces).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["read_landmarks", "LandmarkFileError"]


class LandmarkFileError(ValueError):
    """A malformed landmark file; the message names the file and the line."""


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_landmarks(path: str | Path, *, one_based: bool = False) -> dict[str, np.ndarray]:
    """Reads a landmark file (see the module docstring for the format).

    Args:
        path: the text file.
        one_based: the numbers are MATLAB (1-based) pixel coordinates, as the original SphereFace MATLAB
            detection wrote them; 1 is subtracted. Default False: 0-based, as the Python ports use them.

    Returns:
        ``{image path as written (with ``/`` separators): float64 (5, 2) array of (x, y) in pixels}``.

    Raises:
        FileNotFoundError: no such file.
        LandmarkFileError: a line without a path and ten numbers, a non-number, or a path given twice with
            different landmarks; the message names the line.
    """
    path = Path(path)
    out: dict[str, np.ndarray] = {}
    where: dict[str, int] = {}
    with path.open(encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if "\t" in line:
                parts = [p.strip() for p in line.split("\t") if p.strip()]
                name, numbers = parts[0], parts[1:]
            else:  # spaces: the numbers are the trailing fields, the path (spaces and all) is the rest
                tokens = line.split()
                k = 0
                while k < len(tokens) - 1 and _is_number(tokens[-1 - k]):
                    k += 1
                name, *numbers = line.rsplit(None, k) if k else [line]
                name = name.strip()
            if len(numbers) == 11:  # sphereface_pytorch's casia_landmark.txt: class index first
                if not numbers[0].lstrip("-").isdigit():
                    raise LandmarkFileError(f"{path}:{lineno}: expected a path and ten numbers (or a path, a class "
                                            f"index and ten numbers), but got {len(numbers)} fields after the path "
                                            f"and {numbers[0]!r} is not a class index: {line!r}")
                numbers = numbers[1:]
            if len(numbers) != 10:
                raise LandmarkFileError(f"{path}:{lineno}: expected a path and ten numbers x1 y1 ... x5 y5, but got "
                                        f"{len(numbers)} fields after the path: {line!r}")
            try:
                values = np.array([float(v) for v in numbers], dtype=np.float64).reshape(5, 2)
            except ValueError:
                raise LandmarkFileError(f"{path}:{lineno}: landmarks must be numbers, but got {numbers}") from None
            if not np.all(np.isfinite(values)):
                raise LandmarkFileError(f"{path}:{lineno}: landmarks must be finite, but got {numbers}")
            if one_based:
                values -= 1.0
            key = name.replace("\\", "/")
            if key in out and not np.array_equal(out[key], values):
                raise LandmarkFileError(f"{path}:{lineno}: {key!r} already has different landmarks on line "
                                        f"{where[key]}")
            out[key], where[key] = values, lineno
    return out
