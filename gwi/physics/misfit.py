"""The data misfit: how far maps are from explaining recordings (refinement's objective, and the
per-file score ``gwi predict --misfit`` ranks files by)."""

from __future__ import annotations

import math

import torch

# ``predict --misfit`` scores files below this frequency: long wavelengths are not cycle-skipped, so
# the misfit keeps growing with the map's error where the full band's saturates. Measured
# (bench/misfit_rank.py, 200 held-out files, a weak model): Spearman rho with the true MAE 0.24 on the
# full band, 0.38 below 7 Hz, 0.42 below 5, 0.47 below 3, 0.53 below 2.
RANK_BAND_HZ = 2.0


def lowpass(x: torch.Tensor, cutoff_hz: float, dt: float) -> torch.Tensor:
    """Low-pass along time (dim -2) with a cosine roll-off from 0.75·cutoff to cutoff (0: unchanged)."""
    if cutoff_hz <= 0:
        return x
    nt = x.shape[-2]
    f = torch.fft.rfftfreq(nt, dt, device=x.device, dtype=x.dtype)
    lo = 0.75 * cutoff_hz
    taper = torch.clamp((cutoff_hz - f) / (cutoff_hz - lo), 0.0, 1.0)
    taper = 0.5 - 0.5 * torch.cos(math.pi * taper)
    return torch.fft.irfft(torch.fft.rfft(x, dim=-2) * taper[:, None], n=nt, dim=-2)



def shot_weights(obs: torch.Tensor) -> torch.Tensor:
    """(B, S, 1, 1): 1 / RMS of each observed shot."""
    return 1.0 / obs.pow(2).mean(dim=(-2, -1), keepdim=True).sqrt().clamp_min(1e-12)


def data_misfit(sim: torch.Tensor, obs: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(B,) mean squared weighted residual per file."""
    return ((sim - obs) * w).pow(2).mean(dim=(1, 2, 3))


@torch.no_grad()
def file_misfit(fwd, v: torch.Tensor, obs: torch.Tensor, band_hz: float = 0.0) -> torch.Tensor:
    """(B,) how far maps ``v`` (B, nz, nx) are from explaining the recordings ``obs`` (B, S, nt, R),
    both low-passed to ``band_hz`` (0: the full band, the misfit ``refine`` starts from;
    ``RANK_BAND_HZ``: what ``gwi predict --misfit`` ranks files by)."""
    v = v.to(fwd.device or obs.device, fwd.dtype)
    obs = lowpass(obs.to(v.device, fwd.dtype), band_hz, fwd.g.dt)
    return data_misfit(lowpass(fwd(v), band_hz, fwd.g.dt), obs, shot_weights(obs))
