"""Margin heads, one small module per family; importing this package registers them in `LOSSES`."""

from __future__ import annotations

from registry.losses import cosface, softmax  # noqa: F401
from registry.losses._base import MarginHead

__all__ = ["MarginHead"]
