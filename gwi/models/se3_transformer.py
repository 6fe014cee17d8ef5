"""SE(3)-Transformer: equivariant graph attention on the encoder's latent grid (Fuchs et al. 2020), built with e3nn.

:class:`~gwi.models.graph.GridGraphModel` turns the recording into an ``(h, w)`` grid of cells, each
a node at the 3-D point ``(depth, x, 0)`` whose input features are the cell's ``C`` channels as
``Cx0e`` scalars, joined to the nodes closer than ``radius`` cells. This module supplies the graph
stack: :class:`SE3Attention` layers that follow the structure of e3nn's equivariant Transformer
example: for an edge j → i with relative position ``r_ij``,

* queries ``q_i = Linear(f_i)`` (``o3.Linear``);
* keys and values ``k_ij, v_ij = TP(f_j, Y(r_ij); w(|r_ij|))``: ``o3.FullyConnectedTensorProduct``
  of the sender's features with the spherical harmonics ``Y`` of the edge direction, its weights made
  per edge by a radial MLP (``FullyConnectedNet``) of the distance embedded by
  ``soft_one_hot_linspace``;
* logits ``q_i · k_ij`` (a tensor product to ``0e``), a softmax over each node's incoming edges
  (weighted by a smooth cutoff so that an edge crossing ``max_radius`` enters continuously), and a
  sum of the weighted values;
* a gated non-linearity (``e3nn.nn.Gate``: SiLU on scalars, sigmoid gates on l > 0 irreps) and a
  self-interaction skip (``o3.Linear``).

Hidden features are irreps such as ``16x0e+8x1o`` (``irreps_hidden``); the last layer outputs only
``0e`` scalars (it can still read the vectors through ``1o ⊗ 1o → 0e`` paths), which go back onto the
grid in row-major order for the decoder.

What is equivariant. The attention stack (:class:`SE3AttentionStack`) alone is equivariant to
E(3) — rotations, reflections (e3nn tracks parity: ``1o`` vectors flip, ``0e`` scalars do not) and
translations of the node positions: transforming the positions and the input irreps transforms the
output irreps by the same group element, so the output scalars are invariant. The grid lies in the
plane z = 0, so the symmetries that keep it a 2-D problem (rotations and reflections in the plane,
translations within it) are a subgroup of that. ``tests/test_models_graph.py`` checks the stack with
``e3nn.util.test.assert_equivariant``.

What is not. The seismic → velocity model as a whole: the encoder grid and the readout fix a frame
(see :mod:`gwi.models.graph`).

Why it still helps. The attention weights and the kernels depend only on the relative geometry of
two cells, never on where they are: the same interaction rule applies under the left and the right
end of the line (geology has no preferred horizontal position), the spherical-harmonic kernels treat
interfaces at any dip alike, and attention lets each cell pick which neighbours to listen to — a
learned, edge-aware smoothing that can stop at a fault or a layer boundary instead of blurring across
it, a locality prior with a physical reading.

``dropout`` acts on the ``0e`` scalars after every gate (dropping whole vectors' components would be
equivariant only in expectation; scalars are invariant), so ``model.train()`` at inference gives
Monte-Carlo dropout samples. Precision: the stack switches autocast off and runs in float32 (the
dtype of its parameters; :func:`~gwi.models.graph.own_precision` says why); the convolutional encoder
and decoder still run in bf16 under autocast. The model therefore works inside ``torch.autocast(...,
dtype=torch.bfloat16)`` (and fp16), and the card recommends ``bf16``: on an H100 a default step at batch
16 took the same time as in fp32 (the per-edge tensor products dominate) but less memory.
"""

from __future__ import annotations

from functools import partial

import torch
from e3nn import o3
from e3nn.math import soft_one_hot_linspace, soft_unit_step
from e3nn.nn import FullyConnectedNet, Gate
from torch import nn
from torch.nn import functional as F
from torch_geometric.utils import scatter, softmax

from .graph import GridGraphModel, own_precision
from .registry import register_model


def _gate_for(irreps_out: o3.Irreps) -> Gate:
    """A Gate whose output is ``irreps_out`` (sorted): scalars pass through an activation, l > 0 irreps
    are scaled by sigmoid gates — one extra 0e scalar each, computed by the layer before the gate."""
    scalars = o3.Irreps([(m, ir) for m, ir in irreps_out if ir.l == 0])
    gated = o3.Irreps([(m, ir) for m, ir in irreps_out if ir.l > 0])
    # an odd scalar needs an odd activation to keep its parity
    acts = [F.silu if ir.p == 1 else torch.tanh for _, ir in scalars]
    gates = o3.Irreps(f"{gated.num_irreps}x0e") if gated.num_irreps else o3.Irreps("")
    return Gate(scalars, acts, gates, [torch.sigmoid] * len(gates), gated)


class SE3Attention(nn.Module):
    """One equivariant attention layer: (f (N, irreps_in), pos (N, 3), edges) → (N, irreps_out)."""

    def __init__(self, irreps_in, irreps_out, irreps_qk=None, lmax: int = 2, n_basis: int = 8,
                 radial_hidden: int = 32, max_radius: float = 2.0, dropout: float = 0.0):
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        irreps_out = o3.Irreps(irreps_out).sort().irreps.simplify()
        irreps_qk = o3.Irreps(irreps_qk).sort().irreps.simplify() if irreps_qk is not None else irreps_out
        self.irreps_sh = o3.Irreps.spherical_harmonics(lmax)
        self.n_basis, self.max_radius = n_basis, max_radius

        self.gate = _gate_for(irreps_out)
        self.irreps_out = self.gate.irreps_out
        self.n_scalars = self.gate.irreps_scalars.dim  # the gate puts its scalars first

        self.h_q = o3.Linear(self.irreps_in, irreps_qk)
        self.tp_k = o3.FullyConnectedTensorProduct(self.irreps_in, self.irreps_sh, irreps_qk, shared_weights=False)
        self.fc_k = FullyConnectedNet([n_basis, radial_hidden, self.tp_k.weight_numel], act=F.silu)
        self.tp_v = o3.FullyConnectedTensorProduct(self.irreps_in, self.irreps_sh, self.gate.irreps_in,
                                                   shared_weights=False)
        self.fc_v = FullyConnectedNet([n_basis, radial_hidden, self.tp_v.weight_numel], act=F.silu)
        self.dot = o3.FullyConnectedTensorProduct(irreps_qk, irreps_qk, "0e")
        self.skip = o3.Linear(self.irreps_in, self.irreps_out)
        self.dropout = nn.Dropout(dropout)

    def forward(self, f: torch.Tensor, pos: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        src, dst = edge_index  # messages j=src → i=dst
        n = f.shape[0]
        vec = pos[src] - pos[dst]  # (E, 3)
        dist = vec.norm(dim=1)  # (E,)
        # ×√n_basis as in e3nn's example: keeps the radial MLP's input at unit second moment
        emb = soft_one_hot_linspace(dist, 0.0, self.max_radius, self.n_basis, basis="smooth_finite",
                                    cutoff=True).mul(self.n_basis ** 0.5)  # (E, n_basis)
        sh = o3.spherical_harmonics(self.irreps_sh, vec, normalize=True, normalization="component")  # (E, sh)

        q = self.h_q(f)  # (N, qk)
        k = self.tp_k(f[src], sh, self.fc_k(emb))  # (E, qk)
        v = self.tp_v(f[src], sh, self.fc_v(emb))  # (E, gate_in)
        logits = self.dot(q[dst], k).squeeze(-1)  # (E,)
        # cutoff inside the softmax (= cutoff · exp(logit) / Σ): an edge's weight goes smoothly to 0 at
        # max_radius instead of jumping when it leaves the graph
        cutoff = soft_unit_step(10 * (1 - dist / self.max_radius))  # (E,)
        alpha = softmax(logits + torch.log(cutoff.clamp_min(1e-12)), dst, num_nodes=n)  # (E,)
        out = scatter(alpha.unsqueeze(-1) * v, dst, dim=0, dim_size=n, reduce="sum")  # (N, gate_in)

        out = self.gate(out) + self.skip(f)  # (N, irreps_out)
        if self.dropout.p > 0:  # the Dropout's own mode decides, so MC dropout can switch it on alone
            s = self.n_scalars
            out = torch.cat([self.dropout(out[:, :s]), out[:, s:]], dim=1)
        return out


class SE3AttentionStack(nn.Module):
    """Attention layers through ``irreps`` = [in, hidden..., out]; fp32 whatever the caller's autocast."""

    def __init__(self, irreps: list, irreps_qk=None, lmax: int = 2, n_basis: int = 8, radial_hidden: int = 32,
                 max_radius: float = 2.0, dropout: float = 0.0):
        super().__init__()
        self.layers = nn.ModuleList()
        ir_in = o3.Irreps(irreps[0])
        for ir_out in irreps[1:]:
            layer = SE3Attention(ir_in, ir_out, irreps_qk, lmax, n_basis, radial_hidden, max_radius, dropout)
            self.layers.append(layer)
            ir_in = layer.irreps_out
        self.irreps_in, self.irreps_out = o3.Irreps(irreps[0]), ir_in

    def forward(self, f: torch.Tensor, pos: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        with own_precision(self, f, pos) as (f, pos):
            for layer in self.layers:
                f = layer(f, pos, edge_index)
        return f


class SE3TransformerFWI(GridGraphModel):
    def __init__(self, channels: int = 32, irreps_hidden: str = "32x0e+16x1o+8x2e", irreps_qk: str | None = None,
                 layers: int = 4, lmax: int = 2, n_basis: int = 8, radial_hidden: int = 32, out_scalars: int = 32,
                 grid=(14, 14), encoder_width: int = 32, time_stages: int = 4, decoder_width: int = 64,
                 decoder_stages: int = 2, radius: float = 1.5, max_radius: float = 2.0, dropout: float = 0.0):
        if max_radius <= radius:
            raise ValueError(f"max_radius ({max_radius}) must exceed the graph radius ({radius}): edges at the "
                             "cutoff would get zero weight")
        irreps = [f"{channels}x0e"] + [irreps_hidden] * (layers - 1) + [f"{out_scalars}x0e"]
        # node features in: channels x 0e; out: out_scalars x 0e per node
        super().__init__(partial(SE3AttentionStack, irreps, irreps_qk, lmax, n_basis, radial_hidden, max_radius,
                                 dropout), "blocks",
                         channels=channels, stack_out=out_scalars, grid=grid, encoder_width=encoder_width,
                         time_stages=time_stages, decoder_width=decoder_width, decoder_stages=decoder_stages,
                         radius=radius, dims=3)


@register_model(
    "se3_transformer",
    summary="SE(3)-Transformer (e3nn equivariant graph attention with gated irreps) over the encoder's latent grid",
    reference="Fuchs, Worrall, Fischer & Welling, SE(3)-Transformers (NeurIPS 2020); e3nn (Geiger & Smidt 2022)",
    equivariance=("attention stack: E(3)-equivariant in node positions (rotations, reflections, translations; "
                  "the grid is embedded at z=0), irreps features transform accordingly and the 0e scalars read "
                  "out are invariant; the encoder grid and the grid readout fix a frame, so the "
                  "seismic->velocity map as a whole is not equivariant"),
    presets={
        "default": {"channels": 32, "irreps_hidden": "32x0e+16x1o+8x2e", "layers": 4, "lmax": 2, "n_basis": 8,
                    "radial_hidden": 32, "out_scalars": 32, "grid": [14, 14], "encoder_width": 32,
                    "time_stages": 4, "decoder_width": 64, "decoder_stages": 2, "radius": 1.5,
                    "max_radius": 2.0, "dropout": 0.1},
        "tiny": {"channels": 8, "irreps_hidden": "8x0e+4x1o", "layers": 2, "lmax": 1, "n_basis": 4,
                 "radial_hidden": 8, "out_scalars": 8, "grid": [7, 7], "encoder_width": 4, "time_stages": 4,
                 "decoder_width": 8, "decoder_stages": 2, "radius": 1.5, "max_radius": 2.0, "dropout": 0.1},
    },
    # the conv encoder/decoder take bf16; the e3nn stack switches autocast off and runs in fp32 itself
    precision="bf16",
    requires=("e3nn", "torch_geometric"),
    mc_dropout=True,
)
def se3_transformer(channels: int = 32, irreps_hidden: str = "32x0e+16x1o+8x2e", irreps_qk: str | None = None,
                    layers: int = 4, lmax: int = 2, n_basis: int = 8, radial_hidden: int = 32, out_scalars: int = 32,
                    grid=(14, 14), encoder_width: int = 32, time_stages: int = 4, decoder_width: int = 64,
                    decoder_stages: int = 2, radius: float = 1.5, max_radius: float = 2.0,
                    dropout: float = 0.0) -> SE3TransformerFWI:
    return SE3TransformerFWI(channels, irreps_hidden, irreps_qk, layers, lmax, n_basis, radial_hidden, out_scalars,
                             tuple(grid), encoder_width, time_stages, decoder_width, decoder_stages, radius,
                             max_radius, dropout)
