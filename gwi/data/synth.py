"""OpenFWI-style synthetic families: velocity-map generators, forward-modelled into datasets.

Velocity maps (70×70, 10 m cells, 1500–4500 m/s), one generator per family:

=============  ==========================================================================
FlatVel_A/B    flat layers. A: 2–4 layers, velocity increasing with depth. B: 4–8 layers, any
               order (low-velocity layers allowed), stronger contrasts.
CurveVel_A/B   the same layers folded by a smooth sinusoid. B: larger, two-component folds.
FlatFault_A/B  flat layers cut by a dipping fault with a vertical throw. B: more layers and
CurveFault_A/B curved layers, two faults.
Style_A/B      smooth heterogeneous textures (Gaussian random fields over a depth trend).
               B: shorter correlation lengths, stronger contrasts, added lenses.
=============  ==========================================================================

Every sample draws from its own generator seeded by ``(seed, family, index)``, so the bytes of a
sample do not depend on batch size or on how many samples were asked for: the same seed gives
identical shards.

Forward models live in :mod:`gwi.physics` (``openfwi``: the organisers' scheme, the default;
``deepwave``: faster on CPU). The manifest records which one made the data.
"""

from __future__ import annotations

import math
import zlib
from typing import Callable

import numpy as np

from ..progress import update as report_progress
from .layout import FAMILIES, NX, NZ, VMAX, VMIN

GENERATOR_VERSION = 1

# ------------------------------------------------------------------------------------------------
# velocity generators

_Z = np.arange(NZ, dtype=np.float64)[:, None]  # (70, 1) depth index
_X = np.arange(NX, dtype=np.float64)[None, :]  # (1, 70) lateral index


def sample_rng(seed: int, family: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(family.encode()), int(index)]))


def _layer_velocities(rng, n: int, hard: bool) -> np.ndarray:
    if not hard:
        v = np.sort(rng.uniform(VMIN, VMAX, n))
        v[0] = rng.uniform(VMIN, min(v[1], 2500.0)) if n > 1 else v[0]
        return v
    # B: a broad increasing trend with inversions and strong jumps
    trend = np.linspace(rng.uniform(VMIN, 2500), rng.uniform(3200, VMAX), n)
    return np.clip(trend + rng.normal(0, 600, n), VMIN, VMAX)


def _interfaces(rng, n_layers: int) -> np.ndarray:
    """Depths (rows) of the n_layers-1 interfaces, at least 4 cells apart."""
    k = n_layers - 1
    for _ in range(100):
        d = np.sort(rng.uniform(6, NZ - 4, k))
        if k <= 1 or np.diff(d).min() >= 4:
            return d
    return np.linspace(8, NZ - 6, k)


def _fill_layers(depth_of_cell: np.ndarray, interfaces: np.ndarray, vel: np.ndarray,
                 shift: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Velocity per cell given the (possibly warped) interfaces: ``vel[i]`` above interface i."""
    z = depth_of_cell
    idx = np.zeros(z.shape, dtype=np.int64)
    for d in interfaces:
        idx += (z >= d)
    return vel[idx]


def _fold(rng, hard: bool):
    """A smooth lateral warp of the layering: depth offset as a function of x (and depth for B)."""
    amp = rng.uniform(3, 8) if not hard else rng.uniform(6, 14)
    lam = rng.uniform(40, 120) if not hard else rng.uniform(25, 80)
    ph = rng.uniform(0, 2 * math.pi)
    if not hard:
        return lambda x, z: amp * np.sin(2 * math.pi * x / lam + ph)
    amp2, lam2, ph2 = rng.uniform(2, 6), rng.uniform(12, 30), rng.uniform(0, 2 * math.pi)
    grow = rng.uniform(0.5, 1.5)  # folds tighten or relax with depth
    return lambda x, z: (amp * np.sin(2 * math.pi * x / lam + ph) + amp2 * np.sin(2 * math.pi * x / lam2 + ph2)) \
        * (1 + (grow - 1) * z / NZ)


def _layered(rng, hard: bool, curved: bool):
    """A callable depth → velocity evaluated at warped coordinates, so faults can shift it."""
    n = int(rng.integers(4, 9)) if hard else int(rng.integers(2, 5))
    inter = _interfaces(rng, n)
    vel = _layer_velocities(rng, n, hard)
    warp = _fold(rng, hard) if curved else (lambda x, z: 0.0 * x)

    def model(z: np.ndarray, x: np.ndarray) -> np.ndarray:
        return _fill_layers(z - warp(x, z), inter, vel)

    return model


def _faulted(rng, base, n_faults: int, hard: bool):
    zz, xx = np.broadcast_arrays(_Z, _X)
    z_eff = zz.astype(np.float64).copy()
    for _ in range(n_faults):
        x0 = rng.uniform(15, 55)
        dip = math.radians(rng.uniform(35, 80)) * rng.choice([-1, 1])
        throw = rng.uniform(5, 12) if not hard else rng.uniform(8, 20)
        # signed distance to the fault line through (z=35, x=x0) with the given dip
        side = (xx - x0) - (zz - NZ / 2) / math.tan(dip)
        z_eff = z_eff - throw * (side > 0)
    return base(z_eff, xx.astype(np.float64))


def _smooth_field(rng, corr: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian random field with a Gaussian correlation of ``corr`` cells."""
    pad = 3 * int(corr) + 8  # avoid the FFT's wrap-around correlating opposite edges
    n = NZ + 2 * pad
    noise = rng.standard_normal((n, n))
    k = np.fft.fftfreq(n)[:, None] ** 2 + np.fft.fftfreq(n)[None, :] ** 2
    f = np.real(np.fft.ifft2(np.fft.fft2(noise) * np.exp(-2 * (math.pi * corr) ** 2 * k)))
    f = f[pad:pad + NZ, pad:pad + NX]
    return (f - f.mean()) / (f.std() + 1e-12)


def _style(rng, hard: bool) -> np.ndarray:
    top = rng.uniform(VMIN, 2600)
    bottom = rng.uniform(max(top + 300, 3000), VMAX)
    trend = top + (bottom - top) * (_Z / (NZ - 1)) ** rng.uniform(0.6, 1.6)
    if not hard:
        field = _smooth_field(rng, rng.uniform(8, 16)) * rng.uniform(150, 350)
    else:
        field = (_smooth_field(rng, rng.uniform(3, 7)) * rng.uniform(250, 500)
                 + _smooth_field(rng, rng.uniform(10, 18)) * rng.uniform(200, 400))
        for _ in range(int(rng.integers(1, 4))):  # lenses: sharp-edged bodies in the texture
            cz, cx = rng.uniform(15, 65), rng.uniform(0, NX)
            rz, rx = rng.uniform(3, 8), rng.uniform(6, 20)
            inside = ((_Z - cz) / rz) ** 2 + ((_X - cx) / rx) ** 2 < 1
            field = np.where(inside, field + rng.choice([-1, 1]) * rng.uniform(400, 900), field)
    return trend + field


def velocity_model(family: str, rng: np.random.Generator) -> np.ndarray:
    """One (70, 70) float32 velocity map in m/s for an OpenFWI family name like ``CurveFault_B``."""
    if family not in FAMILIES:
        raise ValueError(f"family: expected one of {', '.join(FAMILIES)}, got {family!r}")
    kind, level = family.split("_")
    hard = level == "B"
    zz, xx = np.broadcast_arrays(_Z, _X)
    if kind in ("FlatVel", "CurveVel"):
        v = _layered(rng, hard, curved=kind == "CurveVel")(zz.astype(np.float64), xx.astype(np.float64))
    elif kind in ("FlatFault", "CurveFault"):
        base = _layered(rng, hard, curved=kind == "CurveFault")
        v = _faulted(rng, base, 2 if hard else 1, hard)
    else:
        v = _style(rng, hard)
    return np.clip(v, VMIN, VMAX).astype(np.float32)


def velocity_batch(family: str, seed: int, start: int, count: int) -> np.ndarray:
    """Samples ``start .. start+count-1`` of a family: (count, 70, 70) float32."""
    return np.stack([velocity_model(family, sample_rng(seed, family, start + i)) for i in range(count)])


# ------------------------------------------------------------------------------------------------
# the command


def synthesize(families: list[str], samples: int, out: str, name: str, *, seed: int = 0, batch_size: int = 16,
               device: str | None = None, shard_size: int = 500, overwrite: bool = False,
               progress: bool | None = None, exist_ok: bool = False, backend: str = "openfwi") -> dict:
    """Generate ``samples`` maps per family, forward-model them with ``backend`` (see
    :mod:`gwi.physics`), write shards + manifest.

    ``exist_ok``: when the dataset is already there from the same families, samples, seed and
    generator, return its manifest without work (a rerun job); made otherwise, it is an error."""
    from ..console import progress as console_progress

    from .. import physics
    from .shards import DatasetWriter, existing_dataset

    if backend not in physics.BACKENDS:
        raise ValueError(f"backend: expected one of {', '.join(physics.BACKENDS)}, got {backend!r}")
    for f in families:
        if f not in FAMILIES:
            raise ValueError(f"family: expected one of {', '.join(FAMILIES)}, got {f!r}")
    if not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples: expected a positive integer, got {samples!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch size: expected a positive integer, got {batch_size!r}")
    if exist_ok and not overwrite:
        want = {"families": list(families), "samples_per_family": samples, "seed": seed,
                "generator_version": GENERATOR_VERSION, "backend": backend}
        # datasets from before the backends were named were deepwave's
        existing = existing_dataset(out, name, want, defaults={"backend": "deepwave"})
        if existing is not None:
            return existing
    import torch

    fm = physics.backend(backend, device=device or ("cuda" if torch.cuda.is_available() else "cpu"))
    source = {
        "kind": "synth", "families": list(families), "samples_per_family": samples, "seed": seed,
        "generator_version": GENERATOR_VERSION, "backend": backend, "device": str(fm.device),
        **fm.describe(),
    }
    with DatasetWriter(out, name, source=source, labelled=True, shard_size=shard_size,
                       overwrite=overwrite) as w, \
            console_progress(samples * len(families), f"synth {name}", enabled=progress) as bar:
        for fam in families:
            for start in range(0, samples, batch_size):
                n = min(batch_size, samples - start)
                v = velocity_batch(fam, seed, start, n)
                with torch.no_grad():
                    x = fm(torch.from_numpy(v)).float().cpu().numpy()  # (n, 5, 1000, 70)
                w.add(fam, x, v[:, None], src=f"synth:{fam}:seed={seed}", first=start)
                bar.update(n)
                report_progress(state="running", done=bar.n, total=bar.total, unit="samples")
        return w.finish()
