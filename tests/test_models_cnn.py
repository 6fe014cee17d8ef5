"""specproj_unet and heat_kernel: shapes, range, gradients, bf16 autocast, and the maths of their
special layers (FFT band selection; heat diffusion against a dense matrix exponential)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.linalg import expm
from scipy.special import ive

from gwi.models.heat_kernel import (GridHeatDiffusion, dct_matrix, grid_laplacian_dense,
                                    path_laplacian_eigenvalues, scaled_bessel_i)
from gwi.models.registry import count_parameters, create_model, model_card
from gwi.models.specproj_unet import SpectralBand

MODELS = ("specproj_unet", "heat_kernel")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def seismic(b: int) -> torch.Tensor:
    return torch.randn(b, 5, 1000, 70)  # (B, 5, 1000, 70) normalised seismic


def check_grads(model) -> None:
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name}: no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name}: gradient is all zero"


# --------------------------------------------------------------------------------------------- both models


@pytest.mark.parametrize("name", MODELS)
def test_card(name):
    card = model_card(name)
    assert card.mc_dropout and card.precision == "bf16"
    assert {"default", "tiny"} <= set(card.presets)
    assert card.summary and card.reference and card.equivariance


@pytest.mark.parametrize("name", MODELS)
def test_tiny_shape_range_and_grads(name):
    model = create_model(name, "tiny").train()
    y = model(seismic(3))
    assert y.shape == (3, 1, 70, 70)
    assert torch.isfinite(y).all() and y.abs().max() <= 1.0
    ((y - torch.rand_like(y) * 2 + 1) ** 2).mean().backward()
    check_grads(model)


@pytest.mark.parametrize("name", MODELS)
def test_tiny_bf16_autocast(name):
    model = create_model(name, "tiny").train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(seismic(2))
    assert y.shape == (2, 1, 70, 70)
    assert torch.isfinite(y.float()).all() and y.float().abs().max() <= 1.0
    y.float().mean().backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n


@pytest.mark.parametrize("name", MODELS)
def test_mc_dropout_gives_different_samples(name):
    model = create_model(name, "tiny").eval()
    for m in model.modules():  # MC dropout: BatchNorm frozen, dropout on
        if isinstance(m, torch.nn.Dropout2d):
            m.train()
    x = seismic(1)
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))


@pytest.mark.parametrize("name", MODELS)
def test_default_forward(name):
    model = create_model(name, "default").eval()
    assert 1_000_000 < count_parameters(model) < 25_000_000
    with torch.no_grad():
        y = model(seismic(1))
    assert y.shape == (1, 1, 70, 70) and torch.isfinite(y).all() and y.abs().max() <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_default_grads(name):
    model = create_model(name, "default").train()
    model(seismic(2)).square().mean().backward()
    check_grads(model)


@pytest.mark.parametrize("name", MODELS)
def test_rejects_wrong_input_shape(name):
    model = create_model(name, "tiny")
    with pytest.raises(ValueError, match="expected"):
        model(torch.randn(2, 5, 1000, 69))


# --------------------------------------------------------------------------------------------- specproj


def test_band_keeps_the_right_bins():
    band = SpectralBand()  # 1000 samples at 1 ms: 1 Hz bins, 2..40 Hz kept
    assert band.freqs.tolist() == list(range(2, 41))
    t = torch.arange(1000) * 1e-3
    x = torch.sin(2 * math.pi * 20.0 * t)[None, None, :, None].expand(1, 5, 1000, 70)  # (1, 5, 1000, 70)
    amp = band.spectrum(x).abs()  # (1, 5, 39, 70)
    peak = amp.argmax(dim=2)
    assert (band.freqs[peak] == 20.0).all()
    other = amp.clone()
    other[:, :, band.freqs == 20.0] = 0
    assert other.max() < 1e-4 * amp.max()  # 20 whole cycles in the window: no leakage
    feats = band(x)  # (1, 5, 39, 2, 70): real, imag
    assert feats.shape == (1, 5, 39, 2, 70) and feats.dtype == torch.float32


def test_band_limits_are_arguments():
    band = SpectralBand(f_min=5.0, f_max=10.0)
    assert band.freqs.tolist() == [5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    band = SpectralBand(n_time=500, dt=2e-3, f_min=2.0, f_max=40.0)  # still 1 Hz bins
    assert band.freqs.tolist() == list(range(2, 41))
    with pytest.raises(ValueError, match="expected"):
        SpectralBand(f_min=2.0, f_max=600.0)  # above Nyquist (500 Hz)
    with pytest.raises(ValueError, match="expected"):
        SpectralBand(f_min=40.0, f_max=2.0)


def test_fft_runs_in_float32_under_autocast():
    band = SpectralBand()
    x = torch.randn(1, 5, 1000, 70)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats = band(x.bfloat16())
    assert feats.dtype == torch.float32
    torch.testing.assert_close(feats, band(x.bfloat16().float()))


# --------------------------------------------------------------------------------------------- heat kernel


def dense_operator(layer: GridHeatDiffusion, t: torch.Tensor) -> np.ndarray:
    """(C, n, n) matrices of the layer's linear map, one per channel, from the images of the basis."""
    h, w = layer.size
    n, c = h * w, layer.channels
    basis = torch.eye(n).reshape(n, 1, h, w).expand(n, c, h, w)  # (n, C, h, w)
    out = layer(basis.contiguous(), t).reshape(n, c, n)  # out[j, c] = op_c e_j
    return out.permute(1, 2, 0).double().numpy()


def test_dct_diagonalises_the_path_laplacian():
    n = 7
    c = dct_matrix(n).double().numpy()
    np.testing.assert_allclose(c @ c.T, np.eye(n), atol=1e-6)
    lap = grid_laplacian_dense(1, n)  # a 1×n grid is the path graph
    np.testing.assert_allclose(c @ lap @ c.T, np.diag(path_laplacian_eigenvalues(n).double().numpy()), atol=1e-5)


@pytest.mark.parametrize("mode", ["spectral", "chebyshev"])
def test_diffusion_equals_dense_expm(mode):
    h, w = 6, 5  # not square, so a transposed axis would show
    layer = GridHeatDiffusion(4, size=(h, w), mode=mode, order=30)
    t = torch.tensor([0.05, 0.5, 2.0, 6.0])
    assert t.max() <= layer.t_max
    ops = dense_operator(layer, t)
    lap = grid_laplacian_dense(h, w)
    for k, tk in enumerate(t.tolist()):
        np.testing.assert_allclose(ops[k], expm(-tk * lap), atol=2e-6 if mode == "spectral" else 1e-4)


def test_stencil_laplacian_is_the_graph_laplacian():
    layer = GridHeatDiffusion(1, size=(5, 6), mode="chebyshev")
    basis = torch.eye(30).reshape(30, 1, 5, 6)
    op = layer._laplacian(basis).reshape(30, 30).T.double().numpy()
    np.testing.assert_allclose(op, grid_laplacian_dense(5, 6), atol=1e-6)


@pytest.mark.parametrize("mode", ["spectral", "chebyshev"])
def test_diffusion_small_t_is_identity_and_mean_is_preserved(mode):
    layer = GridHeatDiffusion(3, mode=mode)
    x = torch.randn(2, 3, 70, 70)
    torch.testing.assert_close(layer(x, torch.full((3,), 1e-7)), x, atol=1e-4, rtol=0)
    y = layer(x)  # the layer's own (initial) times
    torch.testing.assert_close(y.mean(dim=(-2, -1)), x.mean(dim=(-2, -1)), atol=1e-5, rtol=0)
    assert (y.std(dim=(-2, -1)) < x.std(dim=(-2, -1))).all()  # and it smooths


def test_long_diffusion_tends_to_the_mean():
    layer = GridHeatDiffusion(1)
    x = torch.randn(1, 1, 70, 70)
    y = layer(x, torch.tensor([1e5]))  # the slowest mode decays like exp(−t·4 sin²(π/140)) ≈ e^{−20}
    torch.testing.assert_close(y, x.mean().expand_as(y), atol=1e-5, rtol=0)


def test_chebyshev_approximates_spectral():
    # tolerance: the expansion is truncated where 2 Σ_{k≥K} e^{−a} I_k(a) ≤ cheb_tol = 1e-4, a bound on
    # the operator 2-norm of the error, so ‖cheb(x) − spec(x)‖₂ ≤ 1e-4 ‖x‖₂ per channel (+ fp32 rounding)
    cheb = GridHeatDiffusion(5, mode="chebyshev", order=24, cheb_tol=1e-4)
    spec = GridHeatDiffusion(5, mode="spectral")
    t = torch.linspace(0.05, cheb.t_max, 5)
    x = torch.randn(2, 5, 70, 70)
    err = (cheb(x, t) - spec(x, t)).norm(dim=(-2, -1)) / x.norm(dim=(-2, -1))
    assert err.max() < 2e-4, err


def test_chebyshev_times_are_capped():
    layer = GridHeatDiffusion(2, mode="chebyshev", order=12, time_range=(0.5, 1e3))
    assert math.isfinite(layer.t_max) and layer.times().max() <= layer.t_max + 1e-6


def test_scaled_bessel_matches_scipy_and_is_differentiable():
    a = torch.tensor([0.0, 1e-6, 0.3, 2.0, 10.0, 40.0], dtype=torch.float64)
    got = scaled_bessel_i(a, 30).numpy()
    np.testing.assert_allclose(got, ive(np.arange(30)[None], a.numpy()[:, None]), atol=1e-12)
    a = torch.tensor([0.3, 2.0, 10.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: scaled_bessel_i(v, 12), (a,))


def test_diffusion_runs_in_float32_under_autocast():
    layer = GridHeatDiffusion(3)
    x = torch.randn(1, 3, 70, 70).bfloat16()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    with torch.no_grad():
        torch.testing.assert_close(y.float(), layer(x.float()), atol=2e-2, rtol=1e-2)  # bf16 output rounding only
    assert abs(float(y.float().mean() - x.float().mean())) < 1e-2


def test_heat_kernel_chebyshev_mode_trains():
    model = create_model("heat_kernel", "tiny", mode="chebyshev").train()
    y = model(seismic(2))
    assert y.shape == (2, 1, 70, 70) and y.abs().max() <= 1.0
    y.square().mean().backward()
    check_grads(model)  # including every block's log_t through the Bessel coefficients


def test_heat_kernel_rejects_bad_mode():
    with pytest.raises(ValueError, match="expected mode"):
        create_model("heat_kernel", "tiny", mode="euler")
