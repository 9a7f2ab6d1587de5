"""Backbones; importing this package registers them in `BACKBONES`."""

from __future__ import annotations

from registry.backbones import lenet, mini_resnet  # noqa: F401
