"""Factories for everything a trial is built from: losses (margin heads), backbones and datasets.

    >>> from registry import LOSSES, BACKBONES, DATASETS
    >>> LOSSES.names("*face")
"""

from __future__ import annotations

from registry._registry import Entry, Family, Registry, RegistryError

#: Margin heads: ``LOSSES.create(name, embedding_dim=..., num_classes=..., **params)``.
LOSSES = Registry("loss", fixed=("embedding_dim", "num_classes"))
#: Feature extractors: ``BACKBONES.create(name, embedding_dim=..., in_chans=..., **params)``.
BACKBONES = Registry("backbone", fixed=("embedding_dim", "in_chans"))
#: Data: ``DATASETS.create(name, **params)`` returns a `registry.datasets.DataBundle`.
DATASETS = Registry("dataset")

# Importing the subpackages registers their entries.
from registry import backbones, datasets, losses  # noqa: E402,F401

__all__ = ["LOSSES", "BACKBONES", "DATASETS", "Registry", "RegistryError", "Entry", "Family"]
