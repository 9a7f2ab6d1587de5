"""LeNet++ of the CenterLoss paper (Wen et al. 2016, Table 1), the 2-D feature net of the MNIST seeds."""

from __future__ import annotations

import torch
from torch import nn

from registry import BACKBONES
from registry.backbones._sizes import MIN_SIDE


def _conv_pair(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 5, padding=2), nn.PReLU(), nn.Conv2d(cout, cout, 5, padding=2), nn.PReLU(),
            nn.MaxPool2d(2, 2)]


class LeNetPP(nn.Module):
    """Three stages of two 5x5 convs (32, 64, 128 channels) with PReLU and 2x2 max-pool, then a linear layer.

    A 28x28 input leaves 128x3x3 after the third pool; larger inputs are average-pooled to 3x3 so the same
    linear layer serves 112x96 and 112x112 faces. Inputs must be at least 8x8.

    Args:
        embedding_dim: output feature size (2 or 3 for the pictures).
        in_chans: input channels.
        feature_prelu: PReLU after the linear layer, as the CenterLoss prototxt (ip1 + prelu).

    Shapes: ``(B, in_chans, H, W) -> (B, embedding_dim)``.
    """

    min_input_size = 8

    def __init__(self, embedding_dim: int = 2, in_chans: int = 1, *, feature_prelu: bool = True) -> None:
        super().__init__()
        self.convs = nn.Sequential(*_conv_pair(in_chans, 32), *_conv_pair(32, 64), *_conv_pair(64, 128))
        self.pool = nn.AdaptiveAvgPool2d((3, 3))
        self.fc = nn.Linear(128 * 3 * 3, embedding_dim)
        self.act = nn.PReLU() if feature_prelu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < self.min_input_size:
            raise ValueError(f"lenet++ needs inputs of at least {self.min_input_size}x{self.min_input_size}, "
                             f"but got {tuple(x.shape[-2:])}")
        x = self.pool(self.convs(x))
        return self.act(self.fc(torch.flatten(x, 1)))


@BACKBONES.register("lenet++")
def lenet_pp(embedding_dim: int, in_chans: int, feature_prelu: bool = True) -> LeNetPP:
    """LeNet++ (CenterLoss paper Table 1): 5x5 convs 32-32, 64-64, 128-128 with PReLU and pooling, linear."""
    return LeNetPP(embedding_dim, in_chans, feature_prelu=feature_prelu)


MIN_SIDE["lenet++"] = LeNetPP.min_input_size
