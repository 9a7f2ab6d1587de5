"""Factories for everything a trial is built from: losses (margin heads), backbones and datasets.

    >>> from registry import LOSSES, BACKBONES, DATASETS
    >>> LOSSES.names("*face")
"""

from __future__ import annotations

from registry._registry import Entry, Family, Registry, RegistryError

#: Margin heads: ``LOSSES.create(name, embedding_dim=..., num_classes=..., **params)``.
LOSSES = Registry("loss", fixed=("embedding_dim", "num_classes"), fixed_from={
    "num_classes": "num_classes follows the dataset's classes, so no grid sets it on the loss",
    "embedding_dim": "set embedding_dim, a top-level trial key, instead"})
#: Feature extractors: ``BACKBONES.create(name, embedding_dim=..., in_chans=..., **params)``.
BACKBONES = Registry("backbone", fixed=("embedding_dim", "in_chans"), fixed_from={
    "in_chans": "in_chans follows the dataset's images (1 grey, 3 RGB), so no grid sets it on the backbone; for image "
                "files set the dataset's in_chans (imagefolder: {in_chans: 1})",
    "embedding_dim": "set embedding_dim, a top-level trial key, instead"})
#: Data: ``DATASETS.create(name, **params)`` returns a `registry.datasets.DataBundle`.
DATASETS = Registry("dataset")

# Importing the subpackages registers their entries.
from registry import backbones, datasets, losses  # noqa: E402,F401

__all__ = ["LOSSES", "BACKBONES", "DATASETS", "Registry", "RegistryError", "Entry", "Family"]
