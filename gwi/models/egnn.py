"""EGNN: an E(n)-equivariant graph network on the encoder's latent grid (Satorras, Hoogeboom & Welling 2021).

:class:`~gwi.models.graph.GridGraphModel` turns the recording into an ``(h, w)`` grid of cells, each a
node with features ``h`` (its channels) and 2-D coordinates ``x`` (depth, x, centred), joined to the
nodes closer than ``radius`` cells, and reads the node features back onto the grid for the decoder.
This module supplies the graph stack: ``layers`` :class:`EGNNLayer` s that do, for each edge j → i::

    m_ij = φ_e(h_i, h_j, ||x_i − x_j||²)
    x_i ← x_i + C Σ_j (x_i − x_j) / (||x_i − x_j|| + 1) · tanh(φ_x(m_ij)) · r     (C = 1/|N(i)|)
    h_i ← h_i + φ_h(h_i, Σ_j m_ij)

What is equivariant. The EGNN stack (:class:`EGNNStack`) alone: for any rotation or reflection ``Q``
and translation ``t`` of the node coordinates, ``stack(h, Qx + t) = (h', Qx' + t)`` where
``(h', x') = stack(h, x)`` — node features are invariant and coordinates equivariant, because the
network only ever sees coordinates through squared distances and only moves them along difference
vectors. ``tests/test_models_graph.py`` checks this numerically.

What is not. The full seismic → velocity model: the encoder grid and the readout fix a frame (see
:mod:`gwi.models.graph`); the readout writes node ``k`` back to cell ``k`` whatever the coordinates did.

Why it still helps. Message passing on distances only is a locality and smoothness prior with no
notion of absolute position: the same rule updates every cell from its neighbours, whether it
lies under the left or the right end of the line — geology has no preferred horizontal position,
and layers, faults and their interfaces are the same physics wherever they occur. Because edges are
weighted by learned functions of distance, not by a fixed direction as in a convolution kernel, the
prior is isotropic: dipping layers and faults at any angle are treated alike. The coordinate
updates let the stack learn a deformation of the cell layout (nodes drifting toward interfaces) that
later layers see through the changed distances.

``dropout`` sits inside every node update (φ_h), so ``model.train()`` at inference gives
Monte-Carlo dropout samples. The stack runs in float32 with autocast switched off
(:func:`~gwi.models.graph.own_precision` says why); the convolutional encoder and decoder still run
in bf16 under autocast.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import scatter

from .graph import GridGraphModel, own_precision
from .registry import register_model


class EGNNLayer(MessagePassing):
    """One E(n)-equivariant layer (E_GCL in the paper's code): (h, x) → (h', x')."""

    def __init__(self, channels: int, hidden: int, update_coords: bool = True, coords_range: float = 1.0,
                 dropout: float = 0.0):
        # messages are aggregated by the overridden aggregate(); aggr here only satisfies the base class
        super().__init__(aggr="add")
        self.channels, self.hidden = channels, hidden
        self.update_coords = update_coords
        self.coords_range = coords_range
        act = nn.SiLU
        self.phi_e = nn.Sequential(nn.Linear(2 * channels + 1, hidden), act(), nn.Linear(hidden, hidden), act())
        self.phi_h = nn.Sequential(nn.Linear(channels + hidden, hidden), act(), nn.Dropout(dropout),
                                   nn.Linear(hidden, channels))
        if update_coords:
            last = nn.Linear(hidden, 1, bias=False)
            # the paper's init: coordinates barely move at the start, so early training is a plain GNN
            nn.init.xavier_uniform_(last.weight, gain=0.001)
            self.phi_x = nn.Sequential(nn.Linear(hidden, hidden), act(), last)

    def forward(self, h: torch.Tensor, pos: torch.Tensor, edge_index: torch.Tensor):
        # h: (N, C), pos: (N, D), edge_index: (2, E) with messages from edge_index[0] to edge_index[1]
        out = self.propagate(edge_index, h=h, pos=pos)  # (N, H + D)
        m_sum, dx = out[:, :self.hidden], out[:, self.hidden:]
        h = h + self.phi_h(torch.cat([h, m_sum], dim=1))
        if self.update_coords:
            pos = pos + dx
        return h, pos

    def message(self, h_i, h_j, pos_i, pos_j):
        diff = pos_i - pos_j  # (E, D)
        d2 = (diff * diff).sum(dim=1, keepdim=True)  # (E, 1)
        m = self.phi_e(torch.cat([h_i, h_j, d2], dim=1))  # (E, H)
        if not self.update_coords:
            return torch.cat([m, torch.zeros_like(diff)], dim=1)
        # normalising by (|d| + 1) and bounding φ_x with tanh keep a step below coords_range however close
        # or far two nodes are: the unnormalised update of the paper diverges once nodes collapse or
        # separate (their EN-diffusion code does the same)
        step = diff / (d2.sqrt() + 1.0) * torch.tanh(self.phi_x(m)) * self.coords_range  # (E, D)
        return torch.cat([m, step], dim=1)  # (E, H + D)

    def aggregate(self, inputs, index, ptr=None, dim_size=None):
        m, step = inputs[:, :self.hidden], inputs[:, self.hidden:]
        m_sum = scatter(m, index, dim=0, dim_size=dim_size, reduce="sum")  # (N, H)
        # mean = the paper's C = 1/|N(i)|: border nodes of the grid have fewer neighbours
        dx = scatter(step, index, dim=0, dim_size=dim_size, reduce="mean")  # (N, D)
        return torch.cat([m_sum, dx], dim=1)


class EGNNStack(nn.Module):
    """``layers`` EGNN layers on (h, x); the last one moves no coordinates unless ``update_last_coords``.

    In the FWI model only the features are read out, so a coordinate update in the last layer would
    reach nothing (its φ_x would get no gradient); earlier layers' moves still matter through the
    distances the following layers see.
    """

    def __init__(self, channels: int, hidden: int, layers: int, coords_range: float = 1.0, dropout: float = 0.0,
                 update_last_coords: bool = False):
        super().__init__()
        self.layers = nn.ModuleList(
            EGNNLayer(channels, hidden, update_coords=(i < layers - 1) or update_last_coords,
                      coords_range=coords_range, dropout=dropout)
            for i in range(layers))

    def forward(self, h: torch.Tensor, pos: torch.Tensor, edge_index: torch.Tensor):
        with own_precision(self, h, pos) as (h, pos):
            for layer in self.layers:
                h, pos = layer(h, pos, edge_index)
        return h, pos


class EGNNFWI(GridGraphModel):
    def __init__(self, channels: int = 128, hidden: int = 128, layers: int = 6, grid=(14, 14),
                 encoder_width: int = 32, time_stages: int = 4, decoder_width: int = 64, decoder_stages: int = 2,
                 radius: float = 1.5, coords_range: float = 1.0, dropout: float = 0.0):
        super().__init__(partial(EGNNStack, channels, hidden, layers, coords_range, dropout), "gnn",
                         channels=channels, stack_out=channels, grid=grid, encoder_width=encoder_width,
                         time_stages=time_stages, decoder_width=decoder_width, decoder_stages=decoder_stages,
                         radius=radius)

    def run_stack(self, h: torch.Tensor, pos: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        # only the features are read out; the moved coordinates acted through the distances inside the stack
        h, _ = self.gnn(h, pos, edges)
        return h


@register_model(
    "egnn",
    summary="E(n)-equivariant GNN (message passing on distances) over a latent grid of the seismic encoder",
    reference="Satorras, Hoogeboom & Welling, E(n) Equivariant Graph Neural Networks (ICML 2021)",
    equivariance=("EGNN stack: node features invariant, node coordinates equivariant under rotations, "
                  "reflections and translations of the coordinates (E(2)); the encoder grid and the "
                  "grid readout fix a frame, so the seismic->velocity map as a whole is not equivariant"),
    presets={
        "default": {"channels": 128, "hidden": 128, "layers": 6, "grid": [14, 14], "encoder_width": 32,
                    "time_stages": 4, "decoder_width": 64, "decoder_stages": 2, "radius": 1.5,
                    "dropout": 0.1},
        "tiny": {"channels": 16, "hidden": 16, "layers": 2, "grid": [7, 7], "encoder_width": 4,
                 "time_stages": 4, "decoder_width": 8, "decoder_stages": 2, "radius": 1.5, "dropout": 0.1},
    },
    # the conv encoder/decoder take bf16; the EGNN stack switches autocast off and runs in fp32 itself
    precision="bf16",
    requires=("torch_geometric",),
    mc_dropout=True,
)
def egnn(channels: int = 128, hidden: int = 128, layers: int = 6, grid=(14, 14), encoder_width: int = 32,
         time_stages: int = 4, decoder_width: int = 64, decoder_stages: int = 2, radius: float = 1.5,
         coords_range: float = 1.0, dropout: float = 0.0) -> EGNNFWI:
    return EGNNFWI(channels, hidden, layers, tuple(grid), encoder_width, time_stages, decoder_width,
                   decoder_stages, radius, coords_range, dropout)
