"""The "Did you mean ...?" hint of every unknown-name message (registry names, grid keys, search types, ...).

Built in one place so that the messages cannot drift apart. Standard library only: bench uses it too, and
registry must not import bench.

Example:
    >>> f"unknown sampler 'tpee'.{did_you_mean('tpee', ['tpe', 'random'])} Available: tpe, random"
    "unknown sampler 'tpee'. Did you mean 'tpe'? Available: tpe, random"
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import Any

__all__ = ["did_you_mean", "natural_key"]


def natural_key(name: str) -> list[Any]:
    """Sort key that orders names case-blind with their numbers by value (``sphere4a`` before ``sphere20a``)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name.lower())]


def _close_matches(word: str, choices: Iterable[str], n: int, cutoff: float) -> list[str]:
    """`difflib.get_close_matches`, but choices equally close come in natural order (`natural_key`): difflib puts
    them in reverse alphabetical order, so with ``n=1`` the one suggested of a tie looked arbitrary."""
    matcher = difflib.SequenceMatcher()
    matcher.set_seq2(word)
    scored = []
    for choice in dict.fromkeys(choices):
        matcher.set_seq1(choice)
        # the cheap upper bounds first, as difflib does
        if matcher.real_quick_ratio() >= cutoff and matcher.quick_ratio() >= cutoff and matcher.ratio() >= cutoff:
            scored.append((-matcher.ratio(), natural_key(choice), choice))
    return [choice for *_, choice in sorted(scored)[:n]]


def did_you_mean(word: str, choices: Iterable[str], *, n: int = 1, cutoff: float = 0.6, aside: bool = False,
                 prefix: str = "") -> str:
    """The hint for an unknown ``word``: the ``choices`` close to it, or ``""`` when none is.

    Args:
        word: the name as the user wrote it (after any normalisation the caller matches with).
        choices: the valid names.
        n: at most this many suggestions, closest first (equally close ones in natural order, `natural_key`),
            joined by ``" or "``.
        cutoff: the similarity (`difflib.SequenceMatcher.ratio`) a choice needs to be suggested.
        aside: ``" (did you mean 'epochs'?)"``, to follow a name mid-sentence, instead of the sentence
            ``" Did you mean 'epochs'?"``, to follow one that ends with a full stop.
        prefix: put before each suggestion but not matched, e.g. a family's ``"timm/"``.

    Returns:
        The hint with its leading space, ready to append; ``""`` when no choice is close.
    """
    close = _close_matches(word, choices, n, cutoff)
    if not close:
        return ""
    names = " or ".join(repr(prefix + c) for c in close)
    return f" (did you mean {names}?)" if aside else f" Did you mean {names}?"
