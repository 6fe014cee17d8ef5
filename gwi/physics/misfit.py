"""The data misfit: how far maps are from explaining recordings (refinement's objective, and the
per-file score ``gwi predict --misfit`` ranks files by)."""

from __future__ import annotations

import torch


def shot_weights(obs: torch.Tensor) -> torch.Tensor:
    """(B, S, 1, 1): 1 / RMS of each observed shot."""
    return 1.0 / obs.pow(2).mean(dim=(-2, -1), keepdim=True).sqrt().clamp_min(1e-12)


def data_misfit(sim: torch.Tensor, obs: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(B,) mean squared weighted residual per file."""
    return ((sim - obs) * w).pow(2).mean(dim=(1, 2, 3))


@torch.no_grad()
def file_misfit(fwd, v: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
    """(B,) the misfit ``refine`` starts from: how far maps ``v`` (B, nz, nx) are from explaining the
    recordings ``obs`` (B, S, nt, R); what ``gwi predict --misfit`` ranks files by."""
    v = v.to(fwd.device or obs.device, fwd.dtype)
    obs = obs.to(v.device, fwd.dtype)
    return data_misfit(fwd(v), obs, shot_weights(obs))
