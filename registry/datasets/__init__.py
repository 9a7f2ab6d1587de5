"""Datasets; importing this package registers them in `DATASETS`."""

from __future__ import annotations

from registry.datasets import digits, mnist  # noqa: F401
from registry.datasets._types import DataBundle, PairSet, SkippedSample, TensorSplit

__all__ = ["DataBundle", "PairSet", "SkippedSample", "TensorSplit"]
