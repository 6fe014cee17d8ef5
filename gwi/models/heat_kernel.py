"""Heat-kernel diffusion network: learned heat diffusion on the 70×70 velocity grid between pointwise MLPs.

Why: a velocity map is mostly smooth layers with a few sharp interfaces. A CNN reaches across the map
only through depth (many 3×3 layers or down-sampling); heat diffusion ``exp(−tL)`` with a learned time
``t`` per channel gives each channel a receptive field of any size — from ~1 cell (small t) to the
whole grid (large t, where it tends to the channel mean) — at the same cost, and the pointwise MLPs
that mix a channel's undiffused and diffused values make differences of Gaussians (band-pass, edge
detectors) and multi-scale smoothing out of it. This is DiffusionNet (Sharp et al., ACM TOG 2022)
specialised to a regular grid, where the Laplacian's eigenbasis is known in closed form.

Pipeline::

    (B, 5, 1000, 70) --SeismicEncoder--> (B, C, h, w) --bilinear to 70×70, + (depth, x) coordinates,
    3×3 conv--> (B, C, 70, 70) --N × [x + MLP(x, exp(−t L) x)]--> 3×3 conv, 1×1 conv, tanh --> (B, 1, 70, 70)

L is the graph Laplacian D − A of the 70×70 4-neighbour grid graph. Having no edges leave the grid
is the Neumann (no-flux) boundary condition: heat is conserved, so diffusion preserves each channel's
mean and a constant field is a fixed point.

Two ways to apply ``exp(−tL)`` (``mode``):

* ``"spectral"`` (exact, the default): the grid graph is the Cartesian product of two path graphs, so
  L = L_H ⊗ I + I ⊗ L_W. The path graph's Laplacian is diagonalised by the orthonormal DCT-II with
  eigenvalues 4 sin²(πk / 2N), so exp(−tL) X = C_Hᵀ [exp(−t(λ_i + λ_j)) ⊙ (C_H X C_Wᵀ)] C_W: four
  70×70 matrix products per channel, any t at the same cost.
* ``"chebyshev"``: a K-term Chebyshev expansion in the 5-point stencil (a depthwise 3×3 conv),
  exp(−tL) ≈ Σ_k c_k(t) T_k(2L/λ_max − I) with c_0 = e^{−a} I_0(a), c_k = 2 (−1)^k e^{−a} I_k(a),
  a = t λ_max / 2 (I_k: modified Bessel functions). Exactly local (K−1 cells), the form that carries
  over to irregular meshes; accurate only while t is small against K, so times are capped at the t
  where the expansion's truncation bound reaches ``cheb_tol``. It keeps K feature maps per block for
  the backward pass, so it needs much more memory than spectral mode.

Both modes run in float32 with autocast off: the spectral transform sums 70 terms with cancellation
(bf16's 8-bit mantissa would leave ~1% error and break mean preservation) and the Chebyshev
recurrence amplifies rounding error with K; their cost is small next to the MLPs, which do run in bf16.

Dropout (``Dropout2d`` inside every block's MLP) is there for Monte-Carlo dropout uncertainty.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .common import ConvBNAct, SeismicEncoder
from .registry import register_model

GRID = (70, 70)
MODES = ("spectral", "chebyshev")


def dct_matrix(n: int) -> torch.Tensor:
    """(n, n) orthonormal DCT-II matrix C, C[k, m] = s_k cos(π (m + ½) k / n); rows are the
    eigenvectors of the n-node path graph's Laplacian (Neumann ends), so C L Cᵀ is diagonal."""
    k = np.arange(n)[:, None]
    m = np.arange(n)[None, :]
    c = np.cos(np.pi * (m + 0.5) * k / n) * np.sqrt(2.0 / n)
    c[0] /= np.sqrt(2.0)
    return torch.from_numpy(c).float()


def path_laplacian_eigenvalues(n: int) -> torch.Tensor:
    """(n,) eigenvalues 4 sin²(πk / 2n) of the n-node path graph's Laplacian, in DCT order."""
    return torch.from_numpy(4.0 * np.sin(np.pi * np.arange(n) / (2.0 * n)) ** 2).float()


def grid_laplacian_dense(h: int, w: int) -> np.ndarray:
    """(h·w, h·w) graph Laplacian D − A of the h×w 4-neighbour grid, row-major (for tests/reference)."""
    def path(n):
        a = np.diag(np.ones(n - 1), 1)
        a = a + a.T
        return np.diag(a.sum(1)) - a
    return np.kron(path(h), np.eye(w)) + np.kron(np.eye(h), path(w))


def scaled_bessel_i(a: torch.Tensor, order: int, extra: int = 32) -> torch.Tensor:
    """(..., order) e^{−a} I_k(a) for k = 0 … order−1, differentiable in ``a`` (a ≥ 0).

    torch.special has I_0 and I_1 only, and scipy's ``ive`` would need a host round trip and a custom
    backward. Instead: the ratios r_k = I_k / I_{k−1} satisfy r_k = a / (2k + a r_{k+1}) (the backward
    continued fraction of Miller's algorithm, started at k = order + extra with r = 0), which is stable
    for every a ≥ 0 (no division by a, no overflow as a → 0, unlike the forward recurrence), and
    I_k = i0e(a) · r_1 ⋯ r_k. Plain torch ops, so autograd differentiates it. Matches scipy.special.ive
    to ~1e-7 (float32) for a ≤ 150 and order ≤ 40.
    """
    if order < 1:
        raise ValueError(f"expected order >= 1, got {order}")
    r = torch.zeros_like(a)
    ratios = []
    for k in range(order + extra, 0, -1):
        r = a / (2 * k + a * r)
        if k < order:
            ratios.append(r)
    cols = [torch.special.i0e(a)]
    for rk in reversed(ratios):  # r_1 … r_{order−1}
        cols.append(cols[-1] * rk)
    return torch.stack(cols, dim=-1)


def chebyshev_max_a(order: int, tol: float) -> float:
    """Largest a with truncation bound 2 Σ_{k ≥ order} e^{−a} I_k(a) ≤ tol (|T_k| ≤ 1 on the spectrum)."""
    from scipy.special import ive

    def tail(a):
        # 1 = e^{−a}(I_0 + 2 Σ_{k≥1} I_k): the tail is what the kept terms miss
        return 1.0 - ive(0, a) - 2.0 * sum(ive(k, a) for k in range(1, order))

    lo, hi = 0.0, 4.0 * order + 16.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if tail(mid) <= tol else (lo, mid)
    return lo


class GridHeatDiffusion(nn.Module):
    """(B, C, H, W) → (B, C, H, W): x ↦ exp(−t_c L) x per channel c, L the H×W Neumann grid Laplacian.

    ``t_c = exp(log_t_c)`` (positive, and scale-free steps for the optimiser: going from t = 0.5 to 1 is
    as easy as from 50 to 100); initialised log-uniformly over ``time_range`` so the channels start
    at many scales.
    """

    def __init__(self, channels: int, size: tuple[int, int] = GRID, mode: str = "spectral", order: int = 24,
                 time_range: tuple[float, float] = (0.25, 100.0), cheb_tol: float = 1e-4):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"expected mode in {MODES}, got {mode!r}")
        h, w = (int(s) for s in size)
        if h < 2 or w < 2:
            raise ValueError(f"expected a grid of at least 2×2, got {h}×{w}")
        t_lo, t_hi = (float(v) for v in time_range)
        if not 0.0 < t_lo <= t_hi:
            raise ValueError(f"expected 0 < time_range[0] <= time_range[1], got {tuple(time_range)}")
        if mode == "chebyshev" and order < 2:
            raise ValueError(f"expected chebyshev order >= 2, got {order}")
        self.mode, self.size, self.order, self.channels = mode, (h, w), int(order), int(channels)
        lam_h, lam_w = path_laplacian_eigenvalues(h), path_laplacian_eigenvalues(w)
        # buffers are deterministic functions of the size: not persistent, so checkpoints stay small
        self.register_buffer("dct_h", dct_matrix(h), persistent=False)
        self.register_buffer("dct_w", dct_matrix(w), persistent=False)
        self.register_buffer("lam", lam_h[:, None] + lam_w[None, :], persistent=False)  # (H, W) eigenvalues
        self.lam_max = float(lam_h[-1] + lam_w[-1])  # < 8: the spectrum of L is [0, lam_max]
        stencil = torch.tensor([[0.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 0.0]])
        self.register_buffer("stencil", stencil.view(1, 1, 3, 3), persistent=False)
        if mode == "chebyshev":
            self.t_max = chebyshev_max_a(self.order, cheb_tol) * 2.0 / self.lam_max
            t_hi = min(t_hi, self.t_max)
            t_lo = min(t_lo, t_hi)
        else:
            self.t_max = math.inf
        self.log_t = nn.Parameter(torch.linspace(math.log(t_lo), math.log(t_hi), channels))

    def times(self) -> torch.Tensor:
        """(C,) diffusion times, capped at ``t_max`` in Chebyshev mode."""
        t = self.log_t.float().exp()
        return t.clamp(max=self.t_max) if math.isfinite(self.t_max) else t

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[-2:]) != self.size or x.shape[1] != self.channels:
            raise ValueError(f"expected (B, {self.channels}, {self.size[0]}, {self.size[1]}), got {tuple(x.shape)}")
        dtype = x.dtype
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            t = self.times() if t is None else t.float().to(x.device)
            y = self._spectral(x, t) if self.mode == "spectral" else self._chebyshev(x, t)
        return y.to(dtype)

    def _spectral(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        xh = self.dct_h @ x @ self.dct_w.T  # (B, C, H, W) DCT coefficients
        decay = torch.exp(-t[:, None, None] * self.lam)  # (C, H, W): exp(−t_c (λ_i + λ_j))
        return self.dct_h.T @ (xh * decay) @ self.dct_w  # (B, C, H, W)

    def _laplacian(self, x: torch.Tensor) -> torch.Tensor:
        # replicate padding makes a missing neighbour equal to the cell itself, so its term in
        # 4x − Σ neighbours cancels: exactly D − A with the boundary cells' smaller degree (Neumann)
        c = x.shape[1]
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), self.stencil.expand(c, 1, 3, 3), groups=c)

    def _chebyshev(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = t * (self.lam_max / 2.0)  # (C,)
        ive = scaled_bessel_i(a, self.order)  # (C, K) e^{−a} I_k(a)
        sign = torch.ones(self.order, device=x.device)
        sign[1::2] = -1.0
        coef = ive * sign * 2.0
        coef = torch.cat([ive[:, :1], coef[:, 1:]], dim=1)  # (C, K): c_0 = ive_0, c_k = 2 (−1)^k ive_k
        coef = coef.T[:, None, :, None, None]  # (K, 1, C, 1, 1)
        scale = 2.0 / self.lam_max

        def lt(z):  # the Laplacian mapped to spectrum [−1, 1]: 2L/λ_max − I
            return scale * self._laplacian(z) - z

        t_prev, t_cur = x, lt(x)  # T_0 x, T_1 x
        out = coef[0] * t_prev + coef[1] * t_cur
        for k in range(2, self.order):
            t_prev, t_cur = t_cur, 2.0 * lt(t_cur) - t_prev  # T_k = 2 L̃ T_{k−1} − T_{k−2}
            out = out + coef[k] * t_cur
        return out


class DiffusionBlock(nn.Module):
    """x + MLP([x, exp(−tL) x]) with 1×1 convs: DiffusionNet's block without its gradient features."""

    def __init__(self, channels: int, hidden: int, dropout: float = 0.0, **diffusion):
        super().__init__()
        self.diffusion = GridHeatDiffusion(channels, **diffusion)
        # the MLP sees both the field and its diffused copy, so it can form x − exp(−tL)x (a
        # high-pass / edge response) as well as the smoothed field itself
        self.mlp = nn.Sequential(
            nn.Conv2d(2 * channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.GELU(),
            nn.Dropout2d(dropout),  # no-op at 0 but keeps the module tree the same for every value
            nn.Conv2d(hidden, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.diffusion(x)  # (B, C, 70, 70)
        return x + self.mlp(torch.cat([x, d], dim=1))


class HeatKernelNet(nn.Module):
    def __init__(self, channels: int = 128, hidden: int = 512, blocks: int = 8, enc_width: int = 32,
                 grid=(32, 35), time_stages: int = 4, mode: str = "spectral", order: int = 24,
                 time_range=(0.25, 100.0), dropout: float = 0.1, time_pool: int = 1):
        super().__init__()
        if blocks < 1:
            raise ValueError(f"expected blocks >= 1, got {blocks}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"expected dropout in [0, 1), got {dropout}")
        if mode not in MODES:
            raise ValueError(f"expected mode in {MODES}, got {mode!r}")
        if time_pool < 1:
            raise ValueError(f"expected time_pool >= 1, got {time_pool}")
        # the 15 Hz Ricker has next to no energy above ~50 Hz, so 1 ms sampling (Nyquist 500 Hz) is
        # ~10× oversampled: averaging time_pool samples first loses nothing the data carry and divides
        # the encoder's cost, which dominates (its first layers run at full time resolution)
        self.time_pool = int(time_pool)
        self.encoder = SeismicEncoder(channels, tuple(grid), enc_width, time_stages)  # → (B, C, h, w)
        # a diffusion-and-pointwise trunk has no idea where it is on the grid, but velocity depends
        # strongly on depth: feed the (depth, x) coordinates to the lift once
        zz, xx = torch.meshgrid(torch.linspace(-1, 1, GRID[0]), torch.linspace(-1, 1, GRID[1]), indexing="ij")
        self.register_buffer("coords", torch.stack([zz, xx])[None], persistent=False)  # (1, 2, 70, 70)
        self.lift = ConvBNAct(channels + 2, channels, 3)
        self.blocks = nn.ModuleList(
            DiffusionBlock(channels, hidden, dropout, size=GRID, mode=mode, order=order, time_range=tuple(time_range))
            for _ in range(blocks))
        self.head = nn.Sequential(ConvBNAct(channels, channels, 3), nn.Conv2d(channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 5 or x.shape[-1] != 70:
            raise ValueError(f"expected input (B, 5, T, 70), got {tuple(x.shape)}")
        if self.time_pool > 1:
            x = F.avg_pool2d(x, (self.time_pool, 1), ceil_mode=True)  # (B, 5, T/time_pool, 70)
        h = self.encoder(x)  # (B, C, h, w): time axis → depth axis
        h = F.interpolate(h, size=GRID, mode="bilinear", align_corners=False)  # (B, C, 70, 70)
        h = self.lift(torch.cat([h, self.coords.expand(h.shape[0], -1, -1, -1).to(h.dtype)], dim=1))
        for blk in self.blocks:
            h = blk(h)  # (B, C, 70, 70)
        return torch.tanh(self.head(h))  # (B, 1, 70, 70)


@register_model(
    "heat_kernel",
    summary="SeismicEncoder to a latent grid, lifted to 70x70, then DiffusionNet-style blocks: learned "
            "per-channel heat diffusion exp(-tL) on the grid (exact DCT spectral or Chebyshev) between "
            "1x1-conv MLPs with residuals; diffusion runs in fp32 under autocast",
    reference="Sharp et al., DiffusionNet: Discretization Agnostic Learning on Surfaces (ACM TOG 2022); "
              "Chebyshev heat kernel: Hammond, Vandergheynst & Gribonval (ACHA 2011); grid DCT eigenbasis: "
              "Strang, The Discrete Cosine Transform (SIAM Review 1999); encoder after InversionNet "
              "(Wu & Lin 2019)",
    equivariance="none overall: diffusion and the 1x1 MLPs commute with the grid's symmetries (reflections "
                 "in depth and x), but the SeismicEncoder, the coordinate channels and the 3x3 lift/head "
                 "convs do not",
    presets={
        "default": {"channels": 128, "hidden": 512, "blocks": 8, "enc_width": 32, "grid": [32, 35],
                    "time_stages": 4, "time_pool": 1, "mode": "spectral", "order": 24, "dropout": 0.1},
        "tiny": {"channels": 16, "hidden": 32, "blocks": 2, "enc_width": 8, "grid": [16, 14],
                 "time_stages": 3, "time_pool": 4, "mode": "spectral", "order": 12, "dropout": 0.1},
    },
    precision="bf16",
    mc_dropout=True,
)
def heat_kernel(channels: int = 128, hidden: int = 512, blocks: int = 8, enc_width: int = 32, grid=(32, 35),
                time_stages: int = 4, mode: str = "spectral", order: int = 24, time_range=(0.25, 100.0),
                dropout: float = 0.1, time_pool: int = 1) -> HeatKernelNet:
    return HeatKernelNet(channels, hidden, blocks, enc_width, tuple(grid), time_stages, mode, order,
                         tuple(time_range), dropout, time_pool)
