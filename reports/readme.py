"""README splicing: every block between ``<!-- bench:table NAME -->`` and ``<!-- bench:end -->`` is rebuilt
from the results files, so a README cannot drift from the results it shows.

``NAME`` is ``<grid>/<table>`` (``reports/results/<grid>/<table>.csv``) or a bare ``<table>`` when exactly one
grid has a table of that name. Everything outside the blocks is left alone, byte for byte.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from reports.markdown import render_results
from reports.results import DEFAULT_RESULTS_DIR, find_results, load_results
from reports.spec import ReportError

__all__ = ["OPEN", "CLOSE", "splice", "splice_file", "SpliceResult"]

#: The markers, each alone on its line (markers inside fenced code blocks or inline code are text, not blocks).
OPEN = re.compile(r"<!-- bench:table (?P<name>[^\s>]+) -->")
CLOSE = "<!-- bench:end -->"
#: A code fence as CommonMark reads it: up to 3 spaces, then 3 or more backticks (an info string without
#: backticks) or tildes. It is closed by a run of the same character at least as long, with nothing after it.
_FENCE = re.compile(r" {0,3}(?P<run>`{3,}(?=[^`]*$)|~{3,})(?P<info>.*)")


@dataclass
class SpliceResult:
    """The README before and after, the tables it names and those of them whose block was out of date."""

    path: Path
    old: str
    new: str
    names: list[str]
    stale: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.old != self.new

    def diff(self) -> str:
        """A unified diff from the file on disk to the generated text."""
        return "".join(difflib.unified_diff(self.old.splitlines(keepends=True), self.new.splitlines(keepends=True),
                                            fromfile=f"{self.path} (on disk)", tofile=f"{self.path} (generated)"))


def _link(csv_path: Path, base: Path) -> str:
    try:
        rel = os.path.relpath(csv_path.resolve(), base.resolve())
    except ValueError:  # another drive (Windows)
        rel = str(csv_path.resolve())
    return Path(rel).as_posix()


def splice(text: str, results_dir: Path | str = DEFAULT_RESULTS_DIR, *, base: Path | None = None,
           source: str = "README") -> tuple[str, list[str]]:
    """Rebuilds every block of ``text`` from the results under ``results_dir``.

    Args:
        text: the README's text.
        results_dir: the folder holding ``<grid>/<table>.csv``.
        base: the README's folder, for the links to the CSVs (default: the current directory).
        source: the file name, for error messages.

    Returns:
        ``(new_text, names)``.

    Raises:
        ReportError: an unclosed block, or a name without results.
    """
    new, names, _ = _splice(text, results_dir, base=base, source=source)
    return new, names


def _splice(text: str, results_dir: Path | str, *, base: Path | None, source: str) -> tuple[str, list[str], list[str]]:
    """`splice`, plus the names of the blocks whose text changed."""
    base = base or Path.cwd()
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    names: list[str] = []
    stale: list[str] = []
    fence: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        fenced = _FENCE.fullmatch(line.rstrip("\r\n"))
        if fenced and fence is None:
            fence = fenced.group("run")
        elif fenced and fence is not None:
            run = fenced.group("run")
            if run[0] == fence[0] and len(run) >= len(fence) and not fenced.group("info").strip():
                fence = None  # a closing fence: same character, at least as long, no info string
        opened = OPEN.fullmatch(stripped) if fence is None else None
        if fence is None and stripped == CLOSE:
            raise ReportError(f"{source}:{i + 1}: {CLOSE} without a <!-- bench:table NAME --> before it")
        if not opened:
            out.append(line)
            i += 1
            continue
        name = opened.group("name")
        end = next((j for j in range(i + 1, len(lines))
                    if lines[j].strip() == CLOSE or OPEN.fullmatch(lines[j].strip())), None)
        if end is None or lines[end].strip() != CLOSE:
            raise ReportError(f"{source}:{i + 1}: block {name!r} is not closed by {CLOSE}")
        csv_path = find_results(name, results_dir)
        body = render_results(load_results(csv_path), source=_link(csv_path, base))
        newline = "\r\n" if line.endswith("\r\n") else "\n"
        out.append(line if line.endswith(("\n", "\r")) else line + newline)
        block = newline + newline.join(body.split("\n")) + newline + newline  # blank lines: plain markdown
        out.append(block)
        out.append(lines[end])
        names.append(name)
        if block != "".join(lines[i + 1:end]):
            stale.append(name)
        i = end + 1
    return "".join(out), names, stale


def splice_file(path: Path | str, results_dir: Path | str | None = None) -> SpliceResult:
    """Reads a README and returns its regenerated text (nothing is written).

    ``results_dir`` defaults to ``reports/results`` beside the README.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    old = path.read_text(encoding="utf-8")
    folder = Path(results_dir) if results_dir is not None else path.parent / DEFAULT_RESULTS_DIR
    new, names, stale = _splice(old, folder, base=path.parent, source=str(path))
    return SpliceResult(path, old, new, names, stale)
