"""SpecProj-UNet: a spectral projection front end followed by a U-Net.

Why a spectral front end: the source is a 15 Hz Ricker wavelet, so everything the recording says
about the subsurface lives in roughly 2–40 Hz; the other ~460 of the 501 one-hertz bins of a
1000-sample, 1 ms trace carry next to no energy (the Ricker amplitude at 50 Hz is 0.05% of its peak).
A real FFT along time and a band cut shrink each trace from 1000 samples to 39 complex numbers
without losing signal, and in the frequency
domain a time shift (which is what depth becomes in a recording) is a phase rotation — something a
linear layer represents exactly, where a time-domain CNN has to learn it with a deep stack of
strided (k, 1) kernels.

Why a learned projection makes the depth axis: for each receiver, the band-limited spectra of all
five shots (5 × 39 × 2 real numbers) are mapped by a learned linear-nonlinear-linear projection to
a column of C0 features at each of 70 depths. That turns the (source, time, receiver) recording
into a (feature, depth, x) image on the velocity map's grid, in the spirit of a learned migration
operator (Kirchhoff or Born migration is linear in the data, and the image under a receiver is
dominated by the traces near it). Nothing about the wave equation is hard-coded, so the
projection can also learn refraction and diving-wave information.

Why a U-Net afterwards: the projected image is a blurry, noisy first guess on the right grid; an
image-to-image U-Net (Ronneberger et al., 2015) sharpens interfaces with skip connections and its
bottleneck mixes information laterally across the whole model, which a per-receiver projection
cannot do. 70 is padded to a multiple of 2**levels (72 for 3 levels, 80 for 4) and cropped back.

Dropout (``Dropout2d`` at the bottleneck and after each decoder stage) is there so Monte-Carlo
dropout can give a per-pixel uncertainty at inference.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .common import ConvBNAct
from .registry import register_model

SOURCES, TIME_SAMPLES, RECEIVERS, DEPTH = 5, 1000, 70, 70


class SpectralBand(nn.Module):
    """(B, S, T, R) seismic → (B, S, F, 2, R) real/imag parts of the kept frequency bins.

    Real/imag rather than log-amplitude + cos/sin phase because (1) it is a linear function of the
    trace, so the learned projection that follows composes with it into one learned linear
    time→depth operator (a migration-like map), and (2) it has no singularity: phase is undefined
    and log-amplitude is −∞ where the amplitude vanishes (spectral notches where reflections
    interfere, muted or dead traces), which would need an epsilon and gives noisy gradients. The amplitude dynamic
    range across the band (the Ricker amplitude is ~20× below its peak at 2 Hz, ~60× at 40 Hz) is
    handled by the per-feature BatchNorm that follows instead of by a log.
    """

    def __init__(self, n_time: int = TIME_SAMPLES, dt: float = 1e-3, f_min: float = 2.0, f_max: float = 40.0):
        super().__init__()
        if n_time < 2:
            raise ValueError(f"expected n_time >= 2, got {n_time}")
        if dt <= 0:
            raise ValueError(f"expected dt > 0 seconds, got {dt}")
        df = 1.0 / (n_time * dt)  # bin spacing: 1 Hz for 1000 samples at 1 ms
        nyquist = n_time // 2 * df
        if not 0.0 <= f_min <= f_max <= nyquist:
            raise ValueError(f"expected 0 <= f_min <= f_max <= {nyquist:g} Hz (Nyquist), got f_min={f_min}, "
                             f"f_max={f_max}")
        # bins whose centre lies inside [f_min, f_max]; a small slack so 2.0/1.0 does not round to 1.999…
        self.k_lo = math.ceil(f_min / df - 1e-9)
        self.k_hi = math.floor(f_max / df + 1e-9)
        if self.k_hi < self.k_lo:
            raise ValueError(f"expected the band [{f_min}, {f_max}] Hz to contain a bin of spacing {df:g} Hz, "
                             f"got none")
        self.n_time = n_time
        self.register_buffer("freqs", torch.arange(self.k_lo, self.k_hi + 1, dtype=torch.float32) * df,
                             persistent=False)

    @property
    def n_bins(self) -> int:
        return self.k_hi - self.k_lo + 1

    def spectrum(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S, T, R) → complex (B, S, F, R) spectrum of the kept bins, always computed in float32."""
        if x.shape[-2] != self.n_time:
            raise ValueError(f"expected {self.n_time} time samples on dim -2, got shape {tuple(x.shape)}")
        # cuFFT has no bf16 and does fp16 only for power-of-two lengths (1000 is not), and a 1000-point
        # sum in bf16 would lose the weak late (deep) arrivals anyway: run the FFT in float32 with
        # autocast off, whatever precision the caller is in.
        with torch.autocast(device_type=x.device.type, enabled=False):
            spec = torch.fft.rfft(x.float(), dim=-2, norm="ortho")  # (B, S, T//2+1, R), 1 Hz bins
        return spec[..., self.k_lo:self.k_hi + 1, :]  # (B, S, F, R)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spec = self.spectrum(x)  # (B, S, F, R) complex64
        return torch.stack([spec.real, spec.imag], dim=-2)  # (B, S, F, 2, R) float32


class DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(ConvBNAct(cin, cout, 3), ConvBNAct(cout, cout, 3))


class UNet(nn.Module):
    """(B, C0, H, W) → (B, widths[0], H, W); H and W must be divisible by 2**(len(widths)-1)."""

    def __init__(self, cin: int, widths=(32, 64, 128, 256, 512), dropout: float = 0.0):
        super().__init__()
        if len(widths) < 2:
            raise ValueError(f"expected at least 2 U-Net widths (one down-sampling), got {list(widths)}")
        self.levels = len(widths) - 1
        self.inc = DoubleConv(cin, widths[0])
        self.downs = nn.ModuleList(DoubleConv(widths[i], widths[i + 1]) for i in range(self.levels))
        self.ups = nn.ModuleList()
        self.up_convs = nn.ModuleList()
        for i in reversed(range(self.levels)):
            self.ups.append(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2))
            self.up_convs.append(DoubleConv(2 * widths[i], widths[i]))
        # nn.Dropout2d(0) is a no-op but keeps the module tree the same for every dropout value
        self.drop = nn.Dropout2d(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inc(x)  # (B, w0, H, W)
        skips = [h]
        for down in self.downs:
            h = down(F.max_pool2d(h, 2))  # (B, w_{i+1}, H/2^{i+1}, W/2^{i+1})
            skips.append(h)
        h = self.drop(skips.pop())  # bottleneck: the whole 70×70 field is within its receptive field
        for up, conv in zip(self.ups, self.up_convs):
            h = up(h)  # (B, w_i, 2h, 2w)
            h = self.drop(conv(torch.cat([h, skips.pop()], dim=1)))
        return h  # (B, w0, H, W)


class SpecProjUNet(nn.Module):
    def __init__(self, f_min: float = 2.0, f_max: float = 40.0, proj_hidden: int = 512, proj_kernel: int = 5,
                 c0: int = 32, widths=(32, 64, 128, 256, 512), dropout: float = 0.1,
                 n_time: int = TIME_SAMPLES, dt: float = 1e-3):
        super().__init__()
        if proj_kernel < 1 or proj_kernel % 2 == 0:
            raise ValueError(f"expected an odd proj_kernel >= 1 (receivers on each side), got {proj_kernel}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"expected dropout in [0, 1), got {dropout}")
        widths = tuple(int(w) for w in widths)
        self.band = SpectralBand(n_time, dt, f_min, f_max)
        n_feat = SOURCES * self.band.n_bins * 2  # 5 × 39 × 2 = 390 for 2..40 Hz
        self.c0 = c0
        # one BatchNorm channel per (source, frequency, part): equalises the Ricker spectrum's
        # amplitude across the band and the shot-to-shot amplitude differences
        self.in_norm = nn.BatchNorm1d(n_feat)
        # a receiver neighbourhood (proj_kernel) rather than one trace: dipping reflectors and
        # diffractions put a point's energy on neighbouring receivers too
        self.proj_in = nn.Conv1d(n_feat, proj_hidden, proj_kernel, padding=proj_kernel // 2, bias=False)
        self.proj_norm = nn.BatchNorm1d(proj_hidden)
        # the projection is shared by all receivers, but what a trace means depends on where the
        # five shots are relative to the receiver (offsets): a learned per-receiver bias tells it
        self.receiver_bias = nn.Parameter(torch.zeros(1, proj_hidden, RECEIVERS))
        self.proj_out = nn.Conv1d(proj_hidden, c0 * DEPTH, 1)  # the depth axis is made here
        self.unet = UNet(c0, widths, dropout)
        mult = 2 ** self.unet.levels
        padded = math.ceil(DEPTH / mult) * mult  # 72 for 3 levels, 80 for 4
        lo = (padded - DEPTH) // 2
        self.pad = (lo, padded - DEPTH - lo)
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != (SOURCES, self.band.n_time, RECEIVERS):
            raise ValueError(f"expected input (B, {SOURCES}, {self.band.n_time}, {RECEIVERS}), got {tuple(x.shape)}")
        b = x.shape[0]
        z = self.band(x)  # (B, 5, F, 2, 70) float32
        z = z.reshape(b, -1, RECEIVERS)  # (B, 5·F·2, 70): features per receiver
        z = self.in_norm(z)
        z = self.proj_norm(self.proj_in(z)) + self.receiver_bias  # (B, hidden, 70)
        z = self.proj_out(F.leaky_relu(z, 0.2))  # (B, c0·70, 70)
        img = z.reshape(b, self.c0, DEPTH, RECEIVERS)  # (B, c0, depth, x): receivers become the x axis
        lo, hi = self.pad
        # replicate, not zeros: a zero border would look like an extra (fake) edge to the U-Net
        img = F.pad(img, (lo, hi, lo, hi), mode="replicate")  # (B, c0, 72 or 80, 72 or 80)
        h = self.unet(img)  # (B, w0, P, P)
        h = h[..., lo:lo + DEPTH, lo:lo + RECEIVERS]  # (B, w0, 70, 70)
        return torch.tanh(self.head(h))  # (B, 1, 70, 70)


@register_model(
    "specproj_unet",
    summary="rFFT along time, 2-40 Hz band (real/imag), learned per-receiver projection to a "
            "(feature, depth, x) image, then a U-Net; FFT runs in fp32 under autocast",
    reference="band selection as in frequency-domain FWI (Pratt, Geophysics 1999; Sirgue & Pratt, Geophysics "
              "2004); U-Net: Ronneberger et al. (MICCAI 2015), as used for velocity model building by Yang & Ma "
              "(Geophysics 2019); task: Deng et al., OpenFWI (NeurIPS 2022)",
    equivariance="none",
    presets={
        "default": {"f_min": 2.0, "f_max": 40.0, "proj_hidden": 512, "proj_kernel": 5, "c0": 32,
                    "widths": [32, 64, 128, 256, 512], "dropout": 0.1},
        "tiny": {"f_min": 2.0, "f_max": 40.0, "proj_hidden": 32, "proj_kernel": 1, "c0": 8,
                 "widths": [8, 16, 32, 32], "dropout": 0.1},
    },
    precision="bf16",
    mc_dropout=True,
)
def specproj_unet(f_min: float = 2.0, f_max: float = 40.0, proj_hidden: int = 512, proj_kernel: int = 5,
                  c0: int = 32, widths=(32, 64, 128, 256, 512), dropout: float = 0.1, n_time: int = TIME_SAMPLES,
                  dt: float = 1e-3) -> SpecProjUNet:
    return SpecProjUNet(f_min, f_max, proj_hidden, proj_kernel, c0, tuple(widths), dropout, n_time, dt)
