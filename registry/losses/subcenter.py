"""Sub-center ArcFace (Deng et al. 2020, https://www.ecva.net/papers/eccv_2020/papers_ECCV/papers/123560715.pdf)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from registry import LOSSES
from registry.losses._base import check_by_building
from registry.losses.arcface import ArcFaceHead

__all__ = ["SubCenterArcFaceHead"]


class SubCenterArcFaceHead(ArcFaceHead):
    """ArcFace over ``K`` sub-centres per class: ``cos(theta_j) = max_k cos(x, W_{j,k})``, then ArcFace's margin.

    Paper: Sub-center ArcFace, https://www.ecva.net/papers/eccv_2020/papers_ECCV/papers/123560715.pdf.

    Args:
        embedding_dim: feature size D.
        num_classes: number of classes C.
        k: sub-centres per class (the paper uses 3).
        s, m, easy_margin: as `ArcFaceHead` (m in radians).

    Shapes: ``weight`` is ``(C * K, D)``, row ``j * K + k`` the k-th sub-centre of class j (the layout of
    pytorch-metric-learning's ``SubCenterArcFaceLoss``, whose ``W`` is this transposed); ``logits`` ``(B, C)``.
    """

    def __init__(self, embedding_dim: int, num_classes: int, *, k: int = 3, s: float = 64.0, m: float = 0.5,
                 easy_margin: bool = False) -> None:
        if not (isinstance(k, int) and k >= 1):
            raise ValueError(f"k must be an integer >= 1, but got {k=}")
        super().__init__(embedding_dim, num_classes, s=s, m=m, easy_margin=easy_margin, num_weights=num_classes * k)
        self.k = k

    def cosine(self, emb: torch.Tensor) -> torch.Tensor:
        cos = F.linear(F.normalize(emb, dim=1), F.normalize(self.weight, dim=1))
        return cos.view(cos.shape[0], self.num_classes, self.k).amax(dim=2)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, k={self.k}"


@LOSSES.register("subcenter-arcface", validate=check_by_building("subcenter-arcface"))
def subcenter_arcface(embedding_dim: int, num_classes: int, k: int = 3, s: float = 64.0, m: float = 0.5,
                      easy_margin: bool = False) -> SubCenterArcFaceHead:
    """Sub-center ArcFace: max over k sub-centres per class, then s cos(theta + m) (weight is (C*k, D))."""
    return SubCenterArcFaceHead(embedding_dim, num_classes, k=k, s=s, m=m, easy_margin=easy_margin)
