"""Parts several models share: conv blocks, the seismic encoder to a latent grid, the grid decoder.

The graph and diffusion models need a geometry. :class:`SeismicEncoder` compresses the recording
along time (where depth information lives: later arrivals come from deeper) with (k, 1) kernels, as
InversionNet does, and pools it to an ``(h, w)`` latent grid whose cells stand for patches of the
subsurface. Those cells become nodes with 2-D coordinates for EGNN and the SE(3)-Transformer (the
grid graph lives in :mod:`gwi.models.graph`), or a field on the 70×70 grid for heat-kernel diffusion.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ConvBNAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel=3, stride=1, padding=None, act: bool = True, norm: bool = True):
        if padding is None:
            padding = tuple(k // 2 for k in kernel) if isinstance(kernel, tuple) else kernel // 2
        layers = [nn.Conv2d(cin, cout, kernel, stride, padding, bias=not norm)]
        if norm:
            layers.append(nn.BatchNorm2d(cout))
        if act:
            layers.append(nn.LeakyReLU(0.2, inplace=True))
        super().__init__(*layers)


class SeismicEncoder(nn.Module):
    """(B, 5, T, 70) → (B, C, h, w): time compression with (k,1) kernels, then pooling to a grid."""

    def __init__(self, out_channels: int = 64, grid: tuple[int, int] = (14, 14), width: int = 32,
                 time_stages: int = 4):
        super().__init__()
        layers = [ConvBNAct(5, width, (7, 1), (2, 1), (3, 0))]
        c = width
        for i in range(time_stages):
            c2 = min(width * 2 ** (i + 1), 8 * width)
            layers += [ConvBNAct(c, c2, (3, 1), (2, 1), (1, 0)), ConvBNAct(c2, c2, (3, 1), 1, (1, 0))]
            c = c2
        layers += [ConvBNAct(c, c, 3)]
        self.body = nn.Sequential(*layers)
        self.grid = tuple(grid)
        self.proj = nn.Conv2d(c, out_channels, 1)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)  # (B, c, T/32, 70)
        h = F.adaptive_avg_pool2d(h, self.grid)  # (B, c, h, w): time axis becomes the depth axis
        return self.proj(h)


class GridDecoder(nn.Module):
    """(B, C, h, w) → (B, 1, 70, 70) in [-1, 1]: bilinear upsampling with conv refinement."""

    def __init__(self, in_channels: int, width: int = 32, stages: int = 2):
        super().__init__()
        self.stages = nn.ModuleList()
        c = in_channels
        for _ in range(stages):
            self.stages.append(nn.Sequential(ConvBNAct(c, width, 3), ConvBNAct(width, width, 3)))
            c = width
        self.head = nn.Conv2d(width, 1, 3, padding=1)
        self.n = stages

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        size = h.shape[-2:]
        for i, st in enumerate(self.stages):
            # geometric steps from the latent grid to 70×70
            frac = (i + 1) / self.n
            target = tuple(int(round(s * (70 / s) ** frac)) for s in size)
            h = st(F.interpolate(h, size=target, mode="bilinear", align_corners=False))
        return torch.tanh(self.head(h))

