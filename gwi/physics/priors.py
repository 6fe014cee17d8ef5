"""Priors of refinement: the penalties, the family of a start map, and the grid weights are tuned on.

Two families of maps want different priors (OpenFWI's: FlatVel/FlatFault/CurveVel/CurveFault are
layers with sharp interfaces, Style is a smooth random field over a depth trend):

* **layered**: total variation (``tv``, in :mod:`gwi.physics.refine`) keeps interfaces sharp and
  flattens the layers between them;
* **smooth**: the mean squared discrete Laplacian (``smooth``) damps roughness without favouring
  jumps, which TV would put into a smooth field (staircasing);
* both may also be pulled toward the start map (``pull``, mean squared difference): the model's
  map is a prior of its own where the data says little (deep cells, the edges).

:func:`classify` picks the family of a file from its start map alone (the truth is unknown there).
"""

from __future__ import annotations

import numpy as np
import torch

# a cell is flat when its velocity changes by less than this to its neighbours (m/s per 10 m cell)
FLAT_STEP = 5.0
# a map is layered when at least this share of its cells are flat. Measured on 20 maps per family
# (gwi.data.synth, seed 123): the flat share is 0.73-1.00 for every layered family and 0.00-0.24 for
# Style_A/B; blurred by 2 cells (a model's soft prediction) 0.55-0.90 for FlatVel_A/CurveVel_A/
# FlatFault_A, 0.03-0.70 for the B families (CurveVel_B is the one that goes either way) and
# 0.00-0.09 for Style.
LAYERED_SHARE = 0.3

# The grid ``gwi refine --tune-on`` scores per prior set (every point on the validation files of that
# set, by MAE against their true maps). Scales: at a start 3 % off, the data misfit's gradient (each
# band normalised to 1) peaks at 0.07-0.4 per cell, TV's at 2-7e-4 per unit weight, the Laplacian's at
# ~1.5e-5 and the pull's at ~4e-5 per 0.1 km/s of difference (deepwave, FlatVel_A and Style_A); the
# values put each prior's gradient from negligible (1e-3, the old default TV) to ~10-30 % of the data's.
TUNING_GRID: dict[str, list[dict[str, float]]] = {
    "layered": [{"tv": tv, "smooth": 0.0, "pull": pull} for tv in (1e-3, 10.0, 100.0) for pull in (0.0, 300.0)],
    "smooth": [{"tv": 0.0, "smooth": s, "pull": pull} for s in (3e2, 1e3, 3e3) for pull in (0.0, 300.0)],
}


def flat_share(v: np.ndarray) -> float:
    """The share of cells of a (nz, nx) map in m/s whose gradient is below ``FLAT_STEP`` per cell."""
    v = np.asarray(v, dtype=np.float64)
    if v.ndim != 2 or min(v.shape) < 2:
        raise ValueError(f"map: expected a (nz, nx) array with nz, nx >= 2, got shape {v.shape}")
    dz = np.diff(v, axis=0)[:, :-1]
    dx = np.diff(v, axis=1)[:-1, :]
    return float((np.hypot(dz, dx) < FLAT_STEP).mean())


def classify(v: np.ndarray) -> str:
    """``layered`` or ``smooth``: the prior set for a start map (nz, nx) in m/s. A map of layers is
    flat between its interfaces, so most of its cells do not change at all; a smooth field changes a
    little everywhere (see ``LAYERED_SHARE`` for the measured shares)."""
    return "layered" if flat_share(v) >= LAYERED_SHARE else "smooth"


def laplacian(v: torch.Tensor) -> torch.Tensor:
    """(B,) mean squared 5-point Laplacian of maps ``v`` (B, nz, nx) in km/s (interior cells)."""
    k = v / 1000.0
    lap = k[:, 2:, 1:-1] + k[:, :-2, 1:-1] + k[:, 1:-1, 2:] + k[:, 1:-1, :-2] - 4 * k[:, 1:-1, 1:-1]
    return lap.pow(2).mean(dim=(1, 2))


def pull(v: torch.Tensor, v0: torch.Tensor) -> torch.Tensor:
    """(B,) mean squared difference of maps ``v`` to ``v0`` (B, nz, nx), in km/s."""
    return ((v - v0) / 1000.0).pow(2).mean(dim=(1, 2))
