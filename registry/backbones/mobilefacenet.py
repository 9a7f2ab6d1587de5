"""MobileFaceNet as insightface's ``arcface_torch`` builds it (``mbf``; Chen et al. 2018,
https://arxiv.org/abs/1804.07573, widened by ``scale``), the light face backbone of published results.

Conv3x3/2 stem, a grouped conv3x3, then inverted-residual bottlenecks (1x1 expand + PReLU, depthwise
3x3 + PReLU, 1x1 linear projection) in four stride-2 steps, a 1x1 conv to 512 channels, and the global
depthwise conv (GDC: a depthwise conv whose kernel covers the whole final map, 7x7 at 112x112), a linear
layer and BatchNorm1d.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from registry import BACKBONES
from registry.backbones._sizes import FACE_MIN_SIDE, MIN_SIDE, check_input_size, downsampled, parse_input_size

__all__ = ["MobileFaceNet", "mobilefacenet"]


def _conv_bn(cin: int, cout: int, kernel: int | tuple[int, int] = 1, stride: int = 1, padding: int = 0,
             groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.PReLU(cout))
    return nn.Sequential(*layers)


class _Bottleneck(nn.Module):
    """1x1 to ``width`` + PReLU, depthwise 3x3 (stride) + PReLU, linear 1x1 to ``cout``; residual when stride 1."""

    def __init__(self, cin: int, cout: int, width: int, stride: int, residual: bool) -> None:
        super().__init__()
        self.residual = residual
        self.body = nn.Sequential(_conv_bn(cin, width), _conv_bn(width, width, 3, stride, 1, groups=width),
                                  _conv_bn(width, cout, act=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.residual else out


def _check_blocks_and_scale(blocks: Sequence[int], scale: int) -> None:
    """Raises ValueError unless ``blocks`` is four integers >= 1 and ``scale`` an integer >= 1 (they count
    layers and multiply channels, so ``scale: 1.5`` or ``blocks: 4`` is named here, not in a torch TypeError)."""
    def count(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    if not (isinstance(blocks, (list, tuple)) and len(blocks) == 4 and all(map(count, blocks)) and count(scale)):
        raise ValueError(f"blocks must be four integers >= 1 and scale an integer >= 1, but got {blocks=}, {scale=}")


def _repeat(channels: int, width: int, n: int) -> nn.Sequential:
    return nn.Sequential(*[_Bottleneck(channels, channels, width, 1, True) for _ in range(n)])


class MobileFaceNet(nn.Module):
    """MobileFaceNet: ``(B, in_chans, H, W) -> (B, embedding_dim)`` for ``(H, W) == input_size``.

    Args:
        embedding_dim: feature size (512 in insightface).
        in_chans: input channels.
        blocks: bottlenecks per stage; ``(1, 4, 6, 2)`` is insightface's ``mbf``.
        scale: width multiplier (2 in ``mbf``; stage widths 64, 64, 128, 128 times scale).
        input_size: ``(H, W)`` the net is built for; sizes the GDC kernel to the
            ``ceil(H/16) x ceil(W/16)`` final map (7x7 at 112x112). At least 16x16.
    """

    def __init__(self, embedding_dim: int = 512, in_chans: int = 3, *, blocks: Sequence[int] = (1, 4, 6, 2),
                 scale: int = 2, input_size: int | Sequence[int] = (112, 112)) -> None:
        super().__init__()
        _check_blocks_and_scale(blocks, scale)
        self.input_size = parse_input_size(input_size, name="mobilefacenet", minimum=FACE_MIN_SIDE)
        c1, c2 = 64 * scale, 128 * scale
        layers: list[nn.Module] = [_conv_bn(in_chans, c1, 3, 2, 1)]
        if blocks[0] == 1:
            layers.append(_conv_bn(c1, c1, 3, 1, 1, groups=64))
        else:
            layers.append(_repeat(c1, 128, blocks[0]))
        layers += [
            _Bottleneck(c1, c1, 128, 2, False), _repeat(c1, 128, blocks[1]),
            _Bottleneck(c1, c2, 256, 2, False), _repeat(c2, 256, blocks[2]),
            _Bottleneck(c2, c2, 512, 2, False), _repeat(c2, 256, blocks[3]),
            _conv_bn(c2, 512),
        ]
        self.body = nn.Sequential(*layers)
        h, w = (downsampled(s, 4) for s in self.input_size)
        self.gdc = _conv_bn(512, 512, (h, w), groups=512, act=False)
        self.fc = nn.Linear(512, embedding_dim, bias=False)
        self.features = nn.BatchNorm1d(embedding_dim)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.input_size, name="mobilefacenet")
        return self.features(self.fc(torch.flatten(self.gdc(self.body(x)), 1)))


def _validate(params: dict) -> None:
    parse_input_size(params.get("input_size", (112, 112)), name="mobilefacenet", minimum=FACE_MIN_SIDE)
    _check_blocks_and_scale(params.get("blocks", (1, 4, 6, 2)), params.get("scale", 2))


@BACKBONES.register("mobilefacenet", validate=_validate)
def mobilefacenet(embedding_dim: int, in_chans: int, blocks: Sequence[int] = (1, 4, 6, 2), scale: int = 2,
                  input_size: int | Sequence[int] = (112, 112)) -> MobileFaceNet:
    """MobileFaceNet of insightface arcface_torch (mbf: bottlenecks 1-4-6-2, width x2, GDC), 112x112 by default.

    ``input_size`` sizes the global depthwise conv: set it to the dataset's image size.
    """
    return MobileFaceNet(embedding_dim, in_chans, blocks=blocks, scale=scale, input_size=input_size)


MIN_SIDE["mobilefacenet"] = FACE_MIN_SIDE
