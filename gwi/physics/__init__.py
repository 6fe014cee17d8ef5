"""Forward models: velocity maps (B, 70, 70) in m/s → recordings (B, 5, 1000, 70), differentiable.

Backends (``BACKENDS``):

* ``openfwi`` — the organisers' finite-difference scheme (:mod:`gwi.physics.openfwi`), matched to
  arrays from their published code; what the competition's data was made with.
* ``deepwave`` — deepwave's scalar propagator with a PML (:mod:`gwi.physics.deepwave_backend`),
  aligned to OpenFWI's polarity and onset; faster on CPU, ~4 % off in amplitude.

``simulate(v)`` checks its input (shape, finite, 1500–4500 m/s) and runs the chosen backend; a
backend object (``backend("openfwi")``) can be kept and called many times (refinement does).
"""

from __future__ import annotations

from typing import Any

from ..data.layout import VMAX, VMIN
from .geometry import Geometry

BACKENDS = ("openfwi", "deepwave")
OPTIMIZERS = ("gd", "adam", "lbfgs")  # of refinement (refine.py), named here so plans are checked without torch
DEFAULT_BACKEND = "openfwi"
# of augmentation by re-simulation (gwi/data/augment.py), named here for the same reason
AUGMENT_OPS = ("flip", "crop", "affine", "blend")


def backend(name: str = DEFAULT_BACKEND, *, geometry: Geometry | None = None, device=None, **options: Any):
    """A forward model by name; ``options`` go to its constructor (e.g. ``nbc`` for openfwi)."""
    if name == "openfwi":
        from .openfwi import OpenFWI

        return OpenFWI(geometry, device=device, **options)
    if name == "deepwave":
        from .deepwave_backend import Deepwave

        return Deepwave(geometry, device=device, **options)
    raise ValueError(f"backend: expected one of {', '.join(BACKENDS)}, got {name!r}")


def check_velocity(v, geometry: Geometry | None = None, where: str = "velocity", tolerance: float = 1e-3):
    """Raise ValueError naming ``where`` unless ``v`` is (B, nz, nx) or (nz, nx), finite, in 1500–4500 m/s."""
    import torch

    g = geometry or Geometry()
    t = torch.as_tensor(v)
    if t.ndim not in (2, 3) or tuple(t.shape[-2:]) != (g.nz, g.nx):
        raise ValueError(f"{where}: expected shape (B, {g.nz}, {g.nx}) or ({g.nz}, {g.nx}), got {tuple(t.shape)}")
    t = t.detach().reshape(-1, g.nz, g.nx)
    bad = ~torch.isfinite(t)
    if bad.any():
        b, z, x = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{where}: expected finite velocities, got {float(t[b, z, x])} at map {b}, row {z}, column {x}")
    for fn, limit, word in ((torch.argmin, VMIN, "below"), (torch.argmax, VMAX, "above")):
        i = int(fn(t))
        b, z, x = i // (g.nz * g.nx), i // g.nx % g.nz, i % g.nx
        val = float(t[b, z, x])
        if (word == "below" and val < limit - tolerance) or (word == "above" and val > limit + tolerance):
            raise ValueError(f"{where}: expected velocities in {VMIN:.0f}–{VMAX:.0f} m/s, got {val:.1f} m/s "
                             f"({word} the range) at map {b}, row {z}, column {x}")


def simulate(v, backend_name: str = DEFAULT_BACKEND, *, geometry: Geometry | None = None, device=None, **options):
    """Velocity (B, nz, nx) or (nz, nx) m/s, numpy or torch → seismic (B, S, nt, R) torch tensor."""
    import torch

    check_velocity(v, geometry)
    t = torch.as_tensor(v)
    if not t.is_floating_point():
        t = t.float()
    squeeze = t.ndim == 2
    out = backend(backend_name, geometry=geometry, device=device, **options)(t[None] if squeeze else t)
    return out[0] if squeeze else out
