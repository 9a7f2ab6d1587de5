"""The residual nets of SphereFace (Liu et al. 2017, https://arxiv.org/abs/1704.08063, Table 2).

Four stages; each opens with a stride-2 3x3 conv and PReLU (64, 128, 256, 512 channels) followed by
residual units of two 3x3 conv + PReLU layers with an identity shortcut, no batch norm. The final
``512 x h x w`` map is flattened into a linear layer that gives the embedding (``fc5``, 512-d in the
paper). At 112x96 inputs the map is 7x6 and SphereFace-20 has 22.67 M parameters, 11.0 M of them in fc5.

Initialisation follows the released Caffe prototxt: Caffe's "xavier" filler for the stride convs and fc5
(uniform in +-sqrt(3 / fan_in), which is not PyTorch's ``xavier_uniform_``), Gaussian (std 0.01) for the
convs inside residual units, zero biases. The convs inside residual units have no bias: the prototxt gives
them a zero-filled bias with ``lr_mult: 0, decay_mult: 0`` (``is_bias=False`` in the authors'
``make_spherenet.py``), a bias that never leaves zero, so only the four stride convs and fc5 learn one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from registry import BACKBONES
from registry.backbones._sizes import FACE_MIN_SIDE, MIN_SIDE, check_input_size, downsampled, parse_input_size

__all__ = ["SphereNet", "UNITS", "sphereface"]

#: Residual units per stage for each depth (paper Table 2); depth = 4 stride convs + 2 per unit.
UNITS: dict[int, tuple[int, int, int, int]] = {
    4: (0, 0, 0, 0),
    10: (0, 1, 2, 0),
    20: (1, 2, 4, 1),
    36: (2, 4, 8, 2),
    64: (3, 8, 16, 3),
}
CHANNELS = (64, 128, 256, 512)


def _caffe_xavier_(weight: torch.Tensor) -> None:
    """Caffe's ``xavier`` filler (default ``variance_norm: FAN_IN``): uniform in +-sqrt(3 / fan_in).

    PyTorch's ``xavier_uniform_`` averages fan_in and fan_out instead, which makes the first stride conv's
    weights 3.3x smaller (fan_in 27, fan_out 576) and fc5's 1.4x larger than the prototxt's.
    """
    nn.init.kaiming_uniform_(weight, nonlinearity="linear")  # gain 1: bound = sqrt(3 / fan_in)


class _Unit(nn.Module):
    """conv3x3 + PReLU, conv3x3 + PReLU, plus the input; the convs without bias (frozen at zero in Caffe)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.act1 = nn.PReLU(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.act2 = nn.PReLU(channels)
        for conv in (self.conv1, self.conv2):
            nn.init.normal_(conv.weight, std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act2(self.conv2(self.act1(self.conv1(x))))


class SphereNet(nn.Module):
    """SphereFace-``depth``: ``(B, in_chans, H, W) -> (B, embedding_dim)`` for ``(H, W) == input_size``.

    Args:
        depth: 4, 10, 20, 36 or 64 (paper Table 2).
        embedding_dim: size of the fc5 feature (512 in the paper).
        in_chans: input channels.
        input_size: ``(H, W)`` the network is built for; it sizes fc5 (``512 * ceil(H/16) * ceil(W/16)``
            inputs). Any size of at least 16x16 works; a batch of another size raises ValueError.

    Raises:
        ValueError: unknown depth, or an input size below 16 pixels.
    """

    def __init__(self, depth: int = 20, embedding_dim: int = 512, in_chans: int = 3,
                 input_size: int | Sequence[int] = (112, 96)) -> None:
        super().__init__()
        if depth not in UNITS:
            raise ValueError(f"sphereface depth must be one of {', '.join(map(str, UNITS))}, but got {depth=}")
        self.depth = depth
        self.input_size = parse_input_size(input_size, name="sphereface", minimum=FACE_MIN_SIDE)
        layers: list[nn.Module] = []
        cin = in_chans
        for cout, units in zip(CHANNELS, UNITS[depth], strict=True):
            conv = nn.Conv2d(cin, cout, 3, stride=2, padding=1)
            _caffe_xavier_(conv.weight)
            nn.init.zeros_(conv.bias)
            layers += [conv, nn.PReLU(cout)] + [_Unit(cout) for _ in range(units)]
            cin = cout
        self.features = nn.Sequential(*layers)
        h, w = (downsampled(s, 4) for s in self.input_size)
        self.fc5 = nn.Linear(CHANNELS[-1] * h * w, embedding_dim)
        _caffe_xavier_(self.fc5.weight)
        nn.init.zeros_(self.fc5.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.input_size, name=f"sphereface-{self.depth}")
        return self.fc5(torch.flatten(self.features(x), 1))


def _validate(params: dict) -> None:
    depth = params.get("depth", 20)
    if depth not in UNITS:
        raise ValueError(f"depth must be one of {', '.join(map(str, UNITS))}, but got {depth=}")
    parse_input_size(params.get("input_size", (112, 96)), name="sphereface", minimum=FACE_MIN_SIDE)


@BACKBONES.register("sphereface", aliases={"sphere20a": {"depth": 20}}, validate=_validate)
def sphereface(embedding_dim: int, in_chans: int, depth: int = 20,
               input_size: int | Sequence[int] = (112, 96)) -> SphereNet:
    """SphereFace residual net (depth 4/10/20/36/64, PReLU, no BN), fc over the final map; 112x96 by default.

    ``sphere20a`` is depth 20 (22.67 M parameters at 112x96 with a 512-d embedding). ``input_size`` sizes
    the fc layer: set it to the dataset's image size (e.g. ``[28, 28]``, ``[112, 112]``).
    """
    return SphereNet(depth, embedding_dim, in_chans, input_size)


MIN_SIDE.update(sphereface=FACE_MIN_SIDE, sphere20a=FACE_MIN_SIDE)
