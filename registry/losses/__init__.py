"""Margin heads, one small module per family; importing this package registers them in `LOSSES`.

Every head is a `MarginHead`: ``head(emb, labels)`` the scalar training loss, ``head.logits(emb, labels)`` the
margin-applied logits, ``head.logits(emb)`` the plain logits for prediction, ``head.weight`` the class
weights ``(C, D)`` (``(C * K, D)`` for sub-centre ArcFace). `CenterLoss` is the auxiliary term a trial adds
to any head with ``center_loss: {weight, alpha}``.
"""

from __future__ import annotations

from registry.losses import (  # noqa: F401
    adacos,
    adaface,
    arcface,
    center,
    combined,
    cosface,
    curricularface,
    normface,
    softmax,
    sphereface,
    subcenter,
)
from registry.losses._base import MarginHead
from registry.losses.adacos import AdaCosHead
from registry.losses.adaface import AdaFaceHead
from registry.losses.arcface import ArcFaceHead
from registry.losses.center import CenterLoss, SoftmaxCenterHead
from registry.losses.combined import CombinedMarginHead
from registry.losses.cosface import CosFaceHead
from registry.losses.curricularface import CurricularFaceHead
from registry.losses.normface import NormSoftmaxHead
from registry.losses.softmax import ModifiedSoftmaxHead, SoftmaxHead
from registry.losses.sphereface import LargeMarginSoftmaxHead, SphereFaceHead
from registry.losses.subcenter import SubCenterArcFaceHead

__all__ = [
    "MarginHead", "SoftmaxHead", "ModifiedSoftmaxHead", "NormSoftmaxHead", "LargeMarginSoftmaxHead",
    "SphereFaceHead", "CosFaceHead", "ArcFaceHead", "CombinedMarginHead", "CenterLoss", "SoftmaxCenterHead",
    "AdaCosHead", "SubCenterArcFaceHead", "CurricularFaceHead", "AdaFaceHead",
]
