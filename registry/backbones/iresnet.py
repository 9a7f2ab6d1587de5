"""IResNet-50, the ArcFace backbone as insightface's ``arcface_torch`` trains it (Deng et al. 2019,
https://arxiv.org/abs/1801.07698), so that face results compare with the published numbers.

A 3x3 stem (stride 1, BN, PReLU), four stages of improved basic blocks (BN, conv3x3, BN, PReLU,
conv3x3 with the stage's stride, BN, plus a 1x1-conv/BN shortcut where the shape changes) with
64-128-256-512 channels and 3-4-14-3 blocks, then the "output layer E": BN, dropout, a linear layer over
the flattened ``512 x 7 x 7`` map (at 112x112), and BatchNorm1d with its scale fixed to 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from registry import BACKBONES
from registry.backbones._sizes import FACE_MIN_SIDE, MIN_SIDE, check_input_size, downsampled, parse_input_size

__all__ = ["IResNet", "IBasicBlock", "iresnet50"]

LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3)}


class IBasicBlock(nn.Module):
    """BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN, plus the (projected) input."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin, eps=1e-5),
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout, eps=1e-5),
            nn.PReLU(cout),
            nn.Conv2d(cout, cout, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(cout, eps=1e-5),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(cout, eps=1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class IResNet(nn.Module):
    """IResNet: ``(B, in_chans, H, W) -> (B, embedding_dim)`` for ``(H, W) == input_size``.

    Args:
        layers: blocks per stage, e.g. ``(3, 4, 14, 3)`` for IResNet-50.
        embedding_dim: feature size (512 in insightface).
        in_chans: input channels.
        dropout: dropout probability before the linear layer (insightface: 0).
        input_size: ``(H, W)`` the net is built for; sizes the linear layer over the
            ``512 x ceil(H/16) x ceil(W/16)`` map (7x7 at 112x112). At least 16x16.

    Raises:
        ValueError: an input size below 16 pixels or a dropout outside [0, 1).
    """

    def __init__(self, layers: Sequence[int] = LAYERS[50], embedding_dim: int = 512, in_chans: int = 3, *,
                 dropout: float = 0.0, input_size: int | Sequence[int] = (112, 112)) -> None:
        super().__init__()
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), but got {dropout=}")
        self.input_size = parse_input_size(input_size, name="iresnet", minimum=FACE_MIN_SIDE)
        self.stem = nn.Sequential(nn.Conv2d(in_chans, 64, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(64, eps=1e-5), nn.PReLU(64))
        stages: list[nn.Module] = []
        cin = 64
        for cout, blocks in zip((64, 128, 256, 512), layers, strict=True):
            stages.append(nn.Sequential(*[IBasicBlock(cin if i == 0 else cout, cout, 2 if i == 0 else 1)
                                          for i in range(blocks)]))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(dropout)
        h, w = (downsampled(s, 4) for s in self.input_size)
        self.fc = nn.Linear(512 * h * w, embedding_dim)
        self.features = nn.BatchNorm1d(embedding_dim, eps=1e-5)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.ones_(self.features.weight)
        self.features.weight.requires_grad_(False)  # insightface fixes the final BN's scale at 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.input_size, name="iresnet")
        x = self.bn2(self.stages(self.stem(x)))
        return self.features(self.fc(self.dropout(torch.flatten(x, 1))))


def _validate(params: dict) -> None:
    parse_input_size(params.get("input_size", (112, 112)), name="iresnet50", minimum=FACE_MIN_SIDE)
    dropout = params.get("dropout", 0.0)
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), but got {dropout=}")


@BACKBONES.register("iresnet50", validate=_validate)
def iresnet50(embedding_dim: int, in_chans: int, dropout: float = 0.0,
              input_size: int | Sequence[int] = (112, 112)) -> IResNet:
    """IResNet-50 of insightface arcface_torch (BN-conv-BN-PReLU-conv-BN blocks 3-4-14-3), 112x112 by default.

    ``input_size`` sizes the final linear layer: set it to the dataset's image size (``[112, 96]``, ``[28, 28]``).
    """
    return IResNet(LAYERS[50], embedding_dim, in_chans, dropout=dropout, input_size=input_size)


MIN_SIDE["iresnet50"] = FACE_MIN_SIDE
