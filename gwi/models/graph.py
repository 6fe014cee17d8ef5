"""The base of the graph models (EGNN, SE(3)-Transformer): seismic encoder → latent grid → graph stack → decoder.

:class:`~gwi.models.common.SeismicEncoder` pools the recording to an ``(h, w)`` grid of cells that
stand for patches of the subsurface (rows: depth, from travel time; columns: horizontal position,
from the receivers). :class:`GridGraphModel` makes each cell a node at its centred grid coordinates
``(depth, x)`` (padded with zeros to the stack's dimension), joins nodes closer than ``radius`` cells,
runs the graph stack that the model supplies over the batch as disjoint copies of that graph, and
writes node ``k`` back to cell ``k`` (row-major) for :class:`~gwi.models.common.GridDecoder`.

The stacks are equivariant (each model's docstring says to what); the model as a whole is not: the
encoder lays its cells out in a fixed frame and the readout writes node ``k`` to cell ``k`` wherever
the stack moved it, so the decoder sees that frame too. Depth is special in FWI (gravity, the free
surface at the top), so a fully rotation-equivariant seismic → velocity map would be wrong anyway.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .common import GridDecoder, SeismicEncoder


def grid_coordinates(h: int, w: int, spacing: float = 1.0, device=None) -> torch.Tensor:
    """(h*w, 2) coordinates (depth, x) of grid cells, row-major, centred on the origin."""
    zz, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=device),
                            torch.arange(w, dtype=torch.float32, device=device), indexing="ij")
    pos = torch.stack([zz.reshape(-1), xx.reshape(-1)], dim=1) * spacing
    return pos - pos.mean(0, keepdim=True)


def radius_edges(pos: torch.Tensor, radius: float) -> torch.Tensor:
    """(2, E) directed edges between points of ``pos`` (N, D) closer than ``radius`` (no self loops)."""
    d = torch.cdist(pos, pos)
    src, dst = torch.nonzero((d < radius) & (d > 0), as_tuple=True)
    return torch.stack([src, dst])


def batch_edges(edges: torch.Tensor, n_nodes: int, batch: int) -> torch.Tensor:
    """Repeat one graph's edges for ``batch`` disjoint copies: (2, E) → (2, B·E)."""
    offs = (torch.arange(batch, device=edges.device) * n_nodes).repeat_interleave(edges.shape[1])
    return edges.repeat(1, batch) + offs


def grid_to_nodes(g: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) latent grid → (B*h*w, C) node features, row-major cells, graph by graph."""
    c = g.shape[1]
    return g.flatten(2).transpose(1, 2).reshape(-1, c)


def nodes_to_grid(h: torch.Tensor, batch: int, grid: tuple[int, int], dtype=None) -> torch.Tensor:
    """Inverse of :func:`grid_to_nodes`: (B*h*w, C) → (B, C, h, w), cast to ``dtype`` if given."""
    gh, gw = grid
    out = h.reshape(batch, gh * gw, -1).transpose(1, 2).reshape(batch, -1, gh, gw)
    return out.to(dtype) if dtype is not None else out


@contextlib.contextmanager
def own_precision(stack: nn.Module, *tensors: torch.Tensor):
    """Switch autocast off and cast ``tensors`` to ``stack``'s parameter dtype, for a stack's body.

    Why: the graph stacks accumulate geometry — EGNN adds small coordinate updates layer after
    layer, e3nn's tensor products sum many small Clebsch-Gordan path contributions — and in bfloat16
    the low bits go, and the equivariance (and the features) get noisy. The stacks are a small part
    of a model's FLOPs, so the convolutional encoder and decoder keep most of bf16's speed-up.
    """
    dtype = next(stack.parameters()).dtype
    with torch.autocast(device_type=tensors[0].device.type, enabled=False):
        yield tuple(t.to(dtype) for t in tensors)


class GridGraphModel(nn.Module):
    """Encoder → grid graph → the model's graph stack → readout → decoder: (B, 5, T, 70) → (B, 1, 70, 70).

    ``stack`` builds the graph stack, a module ``(h (N, channels), pos (N, dims), edges (2, E))`` →
    ``(N, stack_out)`` node features (a stack that returns more overrides :meth:`run_stack`). It is a
    builder, called between the encoder and the decoder, so that a seeded model draws its initial
    weights in the same order as before this base existed; the stack is kept under ``stack_name``
    so that checkpoints keep their keys (``gnn.*`` for EGNN, ``blocks.*`` for the SE(3)-Transformer).
    """

    def __init__(self, stack: Callable[[], nn.Module], stack_name: str, *, channels: int, stack_out: int,
                 grid=(14, 14), encoder_width: int = 32, time_stages: int = 4, decoder_width: int = 64,
                 decoder_stages: int = 2, radius: float = 1.5, dims: int = 2):
        super().__init__()
        gh, gw = self.grid = tuple(grid)
        self.encoder = SeismicEncoder(channels, self.grid, encoder_width, time_stages)
        self.stack_name = stack_name
        self.add_module(stack_name, stack())
        self.decoder = GridDecoder(stack_out, decoder_width, decoder_stages)
        pos = grid_coordinates(gh, gw)  # (N, 2): (depth, x)
        # non-persistent: rebuilt from the arguments, so checkpoints hold only weights
        self.register_buffer("pos", F.pad(pos, (0, dims - 2)), persistent=False)  # (N, dims)
        self.register_buffer("edges", radius_edges(pos, radius), persistent=False)  # (2, E)

    @property
    def stack(self) -> nn.Module:
        return getattr(self, self.stack_name)

    def run_stack(self, h: torch.Tensor, pos: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        """(B*N, channels) node features → (B*N, stack_out)."""
        return self.stack(h, pos, edges)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n = x.shape[0], self.pos.shape[0]
        g = self.encoder(x)  # (B, C, h, w)
        h = self.run_stack(grid_to_nodes(g), self.pos.repeat(b, 1), batch_edges(self.edges, n, b))
        return self.decoder(nodes_to_grid(h, b, self.grid, g.dtype))  # (B, stack_out, h, w) → (B, 1, 70, 70)
