"""Files replaced whole: written beside their path first, then renamed over it, so that a reader, a crash or a
Ctrl-C midway never meets half a file (results, plots and the README are committed; a run's JSON is read back)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["replace_file", "replace_text"]


def replace_file(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """``write(tmp)`` to a hidden temporary file beside ``path`` (its parent made), which then replaces ``path``.

    The temporary file is removed when ``write`` fails or is interrupted; ``path`` is then left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def replace_text(path: str | Path, text: str) -> Path:
    """``text`` (UTF-8) as the whole of ``path``, by `replace_file`."""
    return replace_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
