"""The mini ResNet-18 of the "Visualization of Face Loss" repository: three residual stages, 32-64-128."""

from __future__ import annotations

import torch
from torch import nn

from registry import BACKBONES
from registry.backbones._sizes import MIN_SIDE


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity shortcut, ReLU after the sum."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + x)


class MiniResNet18(nn.Module):
    """conv3x3(32)+block, pool, conv3x3(64)+block, pool, conv3x3(128)+block, global average pool, linear.

    Shapes: ``(B, in_chans, H, W) -> (B, embedding_dim)``; any input of at least 4x4.
    """

    def __init__(self, embedding_dim: int = 2, in_chans: int = 1) -> None:
        super().__init__()
        stages: list[nn.Module] = []
        cin = in_chans
        for i, cout in enumerate((32, 64, 128)):
            stages += [nn.Conv2d(cin, cout, 3, padding=1), BasicBlock(cout)]
            if i < 2:
                stages.append(nn.MaxPool2d(2, 2))
            cin = cout
        self.features = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(128, embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


@BACKBONES.register("mini-resnet18")
def mini_resnet18(embedding_dim: int, in_chans: int) -> MiniResNet18:
    """Three-stage residual net (32-64-128) of the Visualization of Face Loss repository."""
    return MiniResNet18(embedding_dim, in_chans)


MIN_SIDE["mini-resnet18"] = 4  # two 2x2 max-pools: a side of 3 pools to 1, then to 0
