"""InversionNet: the OpenFWI baseline (Wu & Lin 2019; Deng et al., OpenFWI, NeurIPS 2022).

An encoder compresses the recording along time with (k, 1) kernels (sources are channels, receivers
the width), then 3×3 convolutions reduce it to a 1×1 code; transposed convolutions grow the code back
to 80×80, which is cropped to 70×70, and a tanh puts the map in the normalised [-1, 1] range.
At full width (32…512) it has ≈24.4 M parameters, as in OpenFWI.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .common import ConvBNAct
from .registry import register_model


class DeconvBNAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int = 2, stride: int = 2, padding: int = 0):
        super().__init__(nn.ConvTranspose2d(cin, cout, kernel, stride, padding), nn.BatchNorm2d(cout),
                         nn.LeakyReLU(0.2, inplace=True))


class InversionNet(nn.Module):
    def __init__(self, dims=(32, 64, 128, 256, 512), dropout: float = 0.0, receivers: int = 70):
        super().__init__()
        d1, d2, d3, d4, d5 = dims
        self.encoder = nn.Sequential(
            ConvBNAct(5, d1, (7, 1), (2, 1), (3, 0)),  # (B, d1, 500, 70)
            ConvBNAct(d1, d2, (3, 1), (2, 1), (1, 0)), ConvBNAct(d2, d2, (3, 1), 1, (1, 0)),  # 250
            ConvBNAct(d2, d2, (3, 1), (2, 1), (1, 0)), ConvBNAct(d2, d2, (3, 1), 1, (1, 0)),  # 125
            ConvBNAct(d2, d3, (3, 1), (2, 1), (1, 0)), ConvBNAct(d3, d3, (3, 1), 1, (1, 0)),  # 63
            ConvBNAct(d3, d3, 3, 2, 1), ConvBNAct(d3, d3, 3, 1, 1),  # (B, d3, 32, 35)
            ConvBNAct(d3, d4, 3, 2, 1), ConvBNAct(d4, d4, 3, 1, 1),  # (B, d4, 16, 18)
            ConvBNAct(d4, d4, 3, 2, 1), ConvBNAct(d4, d4, 3, 1, 1),  # (B, d4, 8, 9)
            ConvBNAct(d4, d5, (8, math.ceil(receivers / 8)), 1, 0),  # (B, d5, 1, 1)
        )
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.decoder = nn.Sequential(
            DeconvBNAct(d5, d5, 5, 1, 0), ConvBNAct(d5, d5, 3),  # (B, d5, 5, 5)
            DeconvBNAct(d5, d4, 4, 2, 1), ConvBNAct(d4, d4, 3),  # 10
            DeconvBNAct(d4, d3, 4, 2, 1), ConvBNAct(d3, d3, 3),  # 20
            DeconvBNAct(d3, d2, 4, 2, 1), ConvBNAct(d2, d2, 3),  # 40
            DeconvBNAct(d2, d1, 4, 2, 1), ConvBNAct(d1, d1, 3),  # 80
        )
        self.head = nn.Conv2d(d1, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 5, 1000, 70) -> (B, 1, 70, 70)
        h = self.dropout(self.encoder(x))
        h = self.decoder(h)
        h = F.pad(h, [-5, -5, -5, -5])  # 80 -> 70
        return torch.tanh(self.head(h))


@register_model(
    "inversionnet",
    summary="OpenFWI baseline: time-compressing CNN encoder to 1x1, transposed-conv decoder",
    reference="Wu & Lin, InversionNet (2019); Deng et al., OpenFWI (NeurIPS 2022)",
    equivariance="none",
    presets={
        "default": {"dims": [32, 64, 128, 256, 512], "dropout": 0.0},
        "tiny": {"dims": [8, 16, 16, 32, 64], "dropout": 0.1},
    },
    precision="bf16",
    mc_dropout=True,
)
def inversionnet(dims=(32, 64, 128, 256, 512), dropout: float = 0.0) -> InversionNet:
    return InversionNet(tuple(dims), dropout)
