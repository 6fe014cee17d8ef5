"""The graph models (EGNN, SE(3)-Transformer): their shared base (the grid graph, the stack each one
supplies, checkpoint keys), shapes, gradients, bf16 autocast, and the equivariance of their graph
stacks — EGNN's checked by rotating/reflecting and translating coordinates by hand, the SE(3)
attention stack's with e3nn's own ``assert_equivariant``."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("torch_geometric")

from gwi.models.graph import GridGraphModel, batch_edges, radius_edges  # noqa: E402
from gwi.models.registry import count_parameters, create_model, model_card  # noqa: E402

GRAPH_MODELS = ("egnn", "se3_transformer")
# where each model keeps its stack: the state_dict prefix its checkpoints were written with
STACK_NAMES = {"egnn": "gnn", "se3_transformer": "blocks"}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _needs(name: str):
    for pkg in model_card(name).requires:
        pytest.importorskip(pkg)


def _seismic(b: int) -> torch.Tensor:
    return torch.randn(b, 5, 1000, 70)


def _check_output(y: torch.Tensor, b: int):
    assert y.shape == (b, 1, 70, 70)
    assert torch.isfinite(y).all()
    assert y.min() >= -1 and y.max() <= 1


@pytest.mark.parametrize("name", GRAPH_MODELS)
def test_card(name):
    _needs(name)
    card = model_card(name)
    assert card.mc_dropout
    assert "torch_geometric" in card.requires
    assert card.precision in ("bf16", "fp32")
    assert "equivariant" in card.equivariance and "not" in card.equivariance


@pytest.mark.parametrize("name", GRAPH_MODELS)
def test_tiny_forward_backward(name):
    _needs(name)
    model = create_model(name, "tiny")
    y = model(_seismic(2))
    _check_output(y, 2)
    ((y - 0.1) ** 2).mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} gets no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
    # the graph stack is not bypassed: some of its gradients are non-zero
    assert any(p.grad.abs().sum() > 0 for p in model.stack.parameters())


@pytest.mark.parametrize("name", GRAPH_MODELS)
def test_tiny_bf16_autocast(name):
    _needs(name)
    model = create_model(name, "tiny")
    x = _seismic(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x)
    _check_output(y.float(), 2)
    y.float().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", GRAPH_MODELS)
def test_tiny_mc_dropout_is_stochastic(name):
    _needs(name)
    model = create_model(name, "tiny").eval()
    x = _seismic(1)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.train()
        assert not torch.equal(model(x), model(x))


@pytest.mark.parametrize("name", GRAPH_MODELS)
def test_default_forward(name):
    _needs(name)
    model = create_model(name, "default").eval()
    assert 1e6 <= count_parameters(model) <= 10e6
    with torch.no_grad():
        _check_output(model(_seismic(1)), 1)


@pytest.mark.slow
@pytest.mark.parametrize("name", GRAPH_MODELS)
def test_default_backward_and_bf16(name):
    _needs(name)
    model = create_model(name, "default")
    x = _seismic(1)
    y = model(x)
    y.mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        _check_output(model.eval()(x).float(), 1)


# --- the shared base ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", GRAPH_MODELS)
def test_models_share_the_grid_graph_base(name):
    _needs(name)
    model = create_model(name, "tiny")
    assert isinstance(model, GridGraphModel)
    assert model.stack is getattr(model, STACK_NAMES[name])
    # checkpoints keep their keys (the stack under its old name, no graph buffers), and the parameters
    # their order: encoder, stack, decoder (an optimiser's saved state is indexed by that order)
    order = ["encoder", STACK_NAMES[name], "decoder"]
    assert list(dict.fromkeys(k.split(".")[0] for k in model.state_dict())) == order
    assert list(dict.fromkeys(k.split(".")[0] for k, _ in model.named_parameters())) == order


@pytest.mark.parametrize("name, dims", [("egnn", 2), ("se3_transformer", 3)])
def test_grid_graph(name, dims):
    _needs(name)
    model = create_model(name, "tiny")
    gh, gw = model.grid
    pos, edges = model.pos, model.edges
    assert pos.shape == (gh * gw, dims)
    torch.testing.assert_close(pos.mean(0), torch.zeros(dims))
    assert (pos[:, 2:] == 0).all()  # the SE(3) grid lies in the plane z = 0
    # row-major: node k is cell (k // w, k % w), rows are depth
    assert torch.equal(pos[gw, :2] - pos[0, :2], torch.tensor([1.0, 0.0]))
    # radius 1.5 cells: the 8-neighbourhood, both directions, no self loops
    degree = torch.bincount(edges[1], minlength=gh * gw).reshape(gh, gw)
    assert degree[0, 0] == 3 and degree[0, 1] == 5 and degree[1, 1] == 8
    assert (edges[0] != edges[1]).all()
    assert {tuple(e) for e in edges.T.tolist()} == {tuple(e) for e in edges.flip(0).T.tolist()}


def test_batch_edges_are_disjoint_copies():
    edges = torch.tensor([[0, 1, 2], [1, 2, 0]])
    batched = batch_edges(edges, n_nodes=3, batch=2)
    assert batched.tolist() == [[0, 1, 2, 3, 4, 5], [1, 2, 0, 4, 5, 3]]


class _MeanOfNeighbours(torch.nn.Module):
    """A minimal graph stack: node features averaged over incoming edges, then a linear map."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.lin = torch.nn.Linear(cin, cout)

    def forward(self, h, pos, edges):
        out = torch.zeros_like(h).index_add_(0, edges[1], h[edges[0]])
        deg = torch.bincount(edges[1], minlength=h.shape[0]).clamp_min(1).unsqueeze(1)
        return self.lin(out / deg)


def test_a_new_model_supplies_only_its_stack():
    model = GridGraphModel(lambda: _MeanOfNeighbours(6, 3), "mix", channels=6, stack_out=3, grid=(5, 5),
                           encoder_width=4, decoder_width=4)
    y = model(_seismic(2))
    _check_output(y, 2)
    y.mean().backward()
    assert model.mix.lin.weight.grad is not None
    assert {k.split(".")[0] for k in model.state_dict()} == {"encoder", "mix", "decoder"}


# --- equivariance of the graph stacks ----------------------------------------------------------------

def _orthogonal_2d(angle: float, reflect: bool) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    q = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    if reflect:
        q = q @ torch.tensor([[1.0, 0.0], [0.0, -1.0]], dtype=torch.float64)
    return q


@pytest.mark.parametrize("reflect", [False, True])
def test_egnn_stack_is_e2_equivariant(reflect):
    from gwi.models.egnn import EGNNStack

    stack = EGNNStack(channels=8, hidden=16, layers=3, coords_range=0.5, update_last_coords=True).double().eval()
    with torch.no_grad():
        # the paper's init barely moves coordinates; larger weights make the coordinate check bite
        for layer in stack.layers:
            layer.phi_x[-1].weight.normal_(0, 1.0)
    pos = torch.randn(24, 2, dtype=torch.float64) * 1.5
    h = torch.randn(24, 8, dtype=torch.float64)
    edges = radius_edges(pos, 2.0)
    assert edges.shape[1] > 24

    q = _orthogonal_2d(0.7 + 2.0 * torch.rand(()).item(), reflect)
    t = torch.randn(1, 2, dtype=torch.float64) * 3
    h1, x1 = stack(h, pos, edges)
    h2, x2 = stack(h, pos @ q.T + t, edges)
    assert (x1 - pos).abs().max() > 1e-2, "coordinates did not move: the check would be vacuous"
    assert not torch.allclose(h1, h)
    torch.testing.assert_close(h2, h1, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(x2, x1 @ q.T + t, rtol=1e-9, atol=1e-9)


def test_egnn_model_stack_is_invariant_on_grid():
    """The stack inside the tiny model, on its own grid and edges, in float32."""
    model = create_model("egnn", "tiny").eval()
    b, n = 2, model.pos.shape[0]
    edges = batch_edges(model.edges, n, b)
    pos = model.pos.repeat(b, 1)
    h = torch.randn(b * n, model.encoder.out_channels)
    q = _orthogonal_2d(1.1, True).float()
    h1, x1 = model.gnn(h, pos, edges)
    h2, x2 = model.gnn(h, pos @ q.T + 5.0, edges)
    torch.testing.assert_close(h2, h1, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(x2, x1 @ q.T + 5.0, rtol=1e-4, atol=1e-4)
    # the stack keeps to fp32 under a caller's bf16 autocast, as the SE(3) stack does below
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h3, x3 = model.gnn(h, pos, edges)
    assert h3.dtype == x3.dtype == torch.float32
    torch.testing.assert_close(h3, h1)


def test_se3_attention_stack_is_e3_equivariant():
    pytest.importorskip("e3nn")
    from e3nn import o3
    from e3nn.util.test import assert_equivariant

    from gwi.models.se3_transformer import SE3AttentionStack

    irreps_in = o3.Irreps("4x0e+2x1o+1x2e")
    stack = SE3AttentionStack([irreps_in, "8x0e+4x1o+2x2e", "6x0e+2x1o+1x2e"], lmax=2, n_basis=6,
                              radial_hidden=16, max_radius=2.5).eval()
    pos = torch.rand(16, 3) * 3
    edges = radius_edges(pos, 2.0)
    assert edges.shape[1] > 16
    f = irreps_in.randn(16, -1)

    def fn(f, pos):
        return stack(f, pos, edges)

    assert_equivariant(fn, args_in=[f, pos], irreps_in=[irreps_in, "cartesian_points"],
                       irreps_out=[stack.irreps_out])
    # also under a caller's bf16 autocast: the stack keeps to fp32 by itself
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fn(f, pos)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, fn(f, pos))
