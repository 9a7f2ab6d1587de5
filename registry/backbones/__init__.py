"""Backbones; importing this package registers them in `BACKBONES`.

Every backbone maps ``(B, in_chans, H, W) -> (B, embedding_dim)``. The face nets whose last layer sees the
whole final feature map (``sphereface``/``sphere20a``, ``iresnet50``, ``mobilefacenet``) take an
``input_size`` that must equal the dataset's image size; the others pool and take any size (``lenet++``
at least 8x8, ``mini-resnet18`` at least 4x4, ``timm/...`` as the model allows). Grid validation checks both,
and the timm models of one fixed input size (ViT, Swin: `timm_family.fixed_input_size`), against the dataset's
image size (`MIN_SIDE`, `registry.datasets.image_size_of`), before any training.
"""

from __future__ import annotations

from registry.backbones import iresnet, lenet, mini_resnet, mobilefacenet, sphereface, timm_family  # noqa: F401
from registry.backbones._sizes import SUPPORTED_SIZES

__all__ = ["SUPPORTED_SIZES"]
