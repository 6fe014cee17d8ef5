"""deepwave's scalar propagator behind gwi's forward-model interface, aligned with OpenFWI.

* Wavelet: OpenFWI's Ricker (147 samples, positive peak at step 73), see :func:`openfwi.ricker`.
* deepwave solves ``∇²u − u_tt/v² = f``, the opposite sign of OpenFWI's source term, and its
  receiver sample ``k`` sees the source one step later than OpenFWI's loop does: we inject ``−w``
  advanced by one sample, so polarity and onset match.
* deepwave's absorbing layer is a 20-cell PML, not OpenFWI's 120-cell damping: the two agree to ~1 %
  before boundary effects arrive, and amplitudes differ by a few percent later
  (``tests/test_physics.py`` measures it against the openfwi backend).
* Time step: OpenFWI steps at 1 ms even at 4500 m/s (Courant 0.45 per axis). deepwave's default
  Courant number would halve the internal step; ``courant_number=0.7`` (deepwave checks it against
  the 4th-order scheme's stability limit) keeps OpenFWI's stepping and is twice as fast.
* ``max_vel`` is pinned to 4500 m/s: otherwise the PML profile and the time step follow the fastest
  map in the batch, and a sample's bytes would depend on its batch-mates.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from ..data.layout import VMAX
from .geometry import Geometry
from .openfwi import ricker

COURANT = 0.7
PML_WIDTH = 20


class Deepwave:
    """``fwd(v)``: velocity (B, nz, nx) m/s → (B, S, nt, R); every (map, shot) pair is one deepwave
    shot with its own model, so a batch is one propagator call."""

    name = "deepwave"

    def __init__(self, geometry: Geometry | None = None, *, device=None, dtype: torch.dtype = torch.float32):
        self.g = geometry or Geometry()
        self.device = torch.device(device) if device is not None else None
        self.dtype = dtype
        w = ricker(self.g.freq, self.g.dt, self.g.nt)
        self._wavelet = -np.concatenate([w[1:], [0.0]])  # polarity and onset: see the module docstring

    def describe(self) -> dict:
        import deepwave

        return {"geometry": {**self.g.describe(), "courant_number": COURANT, "pml_width": PML_WIDTH},
                "deepwave_version": getattr(deepwave, "__version__", "?"), "dtype": str(self.dtype)}

    def _geometry(self, batch: int, device):
        g, ns, nr = self.g, len(self.g.source_x), len(self.g.receiver_x)
        src = torch.zeros(batch * ns, 1, 2, dtype=torch.long, device=device)
        src[:, 0, 0] = g.source_z
        src[:, 0, 1] = torch.tensor(g.source_x, device=device).repeat(batch)
        rec = torch.zeros(batch * ns, nr, 2, dtype=torch.long, device=device)
        rec[:, :, 0] = g.receiver_z
        rec[:, :, 1] = torch.tensor(g.receiver_x, device=device)
        amp = torch.tensor(self._wavelet, dtype=self.dtype, device=device).reshape(1, 1, -1)
        return amp.expand(batch * ns, 1, g.nt).contiguous(), src, rec

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        import deepwave

        g = self.g
        v = torch.as_tensor(v).to(device=self.device or None, dtype=self.dtype)
        b, ns, nr = v.shape[0], len(g.source_x), len(g.receiver_x)
        amp, src, rec = self._geometry(b, v.device)
        vv = v.repeat_interleave(ns, dim=0)  # (B*S, nz, nx): one model per shot
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=getattr(deepwave, "DeepwaveWarning", Warning))
            out = deepwave.scalar(
                vv, g.dx, g.dt, source_amplitudes=amp, source_locations=src, receiver_locations=rec,
                accuracy=4, pml_width=PML_WIDTH, pml_freq=g.freq, courant_number=COURANT, max_vel=VMAX)
        d = out[-1]  # (B*S, R, nt) receiver amplitudes
        return d.reshape(b, ns, nr, g.nt).permute(0, 1, 3, 2)  # (B, S, nt, R)
