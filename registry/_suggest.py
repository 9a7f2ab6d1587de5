"""The "Did you mean ...?" hint of every unknown-name message (registry names, grid keys, search types, ...).

Built in one place so that the messages cannot drift apart. Standard library only: bench uses it too, and
registry must not import bench.

Example:
    >>> f"unknown sampler 'tpee'.{did_you_mean('tpee', ['tpe', 'random'])} Available: tpe, random"
    "unknown sampler 'tpee'. Did you mean 'tpe'? Available: tpe, random"
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["did_you_mean"]


def did_you_mean(word: str, choices: Iterable[str], *, n: int = 1, cutoff: float = 0.6, aside: bool = False,
                 prefix: str = "") -> str:
    """The hint for an unknown ``word``: the ``choices`` close to it, or ``""`` when none is.

    Args:
        word: the name as the user wrote it (after any normalisation the caller matches with).
        choices: the valid names.
        n: at most this many suggestions, closest first, joined by ``" or "``.
        cutoff: the similarity (`difflib.SequenceMatcher.ratio`) a choice needs to be suggested.
        aside: ``" (did you mean 'epochs'?)"``, to follow a name mid-sentence, instead of the sentence
            ``" Did you mean 'epochs'?"``, to follow one that ends with a full stop.
        prefix: put before each suggestion but not matched, e.g. a family's ``"timm/"``.

    Returns:
        The hint with its leading space, ready to append; ``""`` when no choice is close.
    """
    close = difflib.get_close_matches(word, list(choices), n=n, cutoff=cutoff)
    if not close:
        return ""
    names = " or ".join(repr(prefix + c) for c in close)
    return f" (did you mean {names}?)" if aside else f" Did you mean {names}?"
