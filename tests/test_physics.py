"""Forward models: the openfwi backend against arrays from the organisers' published code, and
physics that needs no fixture (direct-wave moveout, a reflector's two-way time, no energy growth)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gwi.physics import backend, check_velocity, simulate
from gwi.physics.openfwi import OpenFWI, ricker

FIXTURE = Path(__file__).parent / "fixtures" / "openfwi_forward" / "reference.npz"


def rel_l2(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.slow
def test_openfwi_backend_matches_the_published_code():
    """tests/fixtures/openfwi_forward/README.md says which code made the arrays and how."""
    ref = np.load(FIXTURE)
    ours = simulate(ref["velocity"], "openfwi").numpy()  # float32 (the fixture ran in float64): 1.5e-5
    assert ours.shape == ref["seismic"].shape == (2, 5, 1000, 70)
    for i in range(2):
        assert rel_l2(ours[i], ref["seismic"][i]) <= 1e-3, f"map {i}"


def peak_time(trace: np.ndarray, lo: int, hi: int) -> float:
    """Sub-sample time (in samples) of the largest positive sample in [lo, hi), by a parabola."""
    i = lo + int(np.argmax(trace[lo:hi]))
    a, b, c = trace[i - 1], trace[i], trace[i + 1]
    return i + 0.5 * (a - c) / (a - 2 * b + c)


@pytest.mark.slow
@pytest.mark.parametrize("v", [2000.0, 3500.0])
def test_direct_wave_moves_out_at_offset_over_velocity(v):
    """Homogeneous medium, source 0 at x = 0: the direct wave's peak at offset d arrives d/v after its
    peak at a reference offset, within one sample (1 ms)."""
    d = simulate(np.full((70, 70), v, np.float32), "openfwi", nbc=60).numpy()[0]  # shot 0, (1000, 70)
    ref_x = 20
    t_ref = peak_time(d[:, ref_x], 73, 400)
    for x in (30, 45, 60, 69):
        expected = (x - ref_x) * 10.0 / v * 1000  # ms = samples
        assert peak_time(d[:, x], 73, 600) - t_ref == pytest.approx(expected, abs=1.0), x


@pytest.mark.slow
def test_a_flat_reflector_arrives_at_its_two_way_time():
    """A faster half-space below row 25 under 2000 m/s: with the homogeneous response subtracted, the
    zero-offset reflection arrives, with the incident wave's polarity (the impedance rises), when the
    direct wave reaches the receiver whose offset equals the two-way path, within two samples (that
    receiver carries the same wavelet delay and 2-D phase lag, so only the path is compared)."""
    v1, v2, row = 2000.0, 3500.0, 25
    top = np.full((70, 70), v1, np.float32)
    layered = top.copy()
    layered[row:] = v2
    fwd = OpenFWI(nbc=60)
    a, b = (fwd(torch.tensor(m)[None])[0, 0].numpy() for m in (layered, top))  # shot 0 at x = 0
    path = 2 * ((row - 0.5) - 1) * 10.0  # the interface lies between rows 24 and 25; the source is in row 1
    refl = (a - b)[:, 0]
    t_refl, t_direct = peak_time(refl, 150, 700), peak_time(b[:, int(path / 10)], 73, 700)
    assert t_refl == pytest.approx(t_direct, abs=2.0)
    assert refl[int(round(t_refl))] > 0
    assert t_refl - peak_time(b[:, 3], 73, 300) == pytest.approx((path - 30.0) / v1 * 1000, abs=3.0)


@pytest.mark.slow
def test_energy_does_not_grow_and_the_boundary_absorbs_it():
    """After the wavelet has ended (147 steps), the energy in the grid (padding included) never rises,
    and by the last step nearly all of it has left through the absorbing layer."""
    v = np.full((70, 70), 2500.0, np.float32)
    v[30:] = 4500.0  # a strong contrast: reflections and head waves, not just a direct wave
    fwd = OpenFWI(nbc=60)
    energy = [float((fwd.wavefield(torch.tensor(v)[None], n) ** 2).sum()) for n in (200, 400, 600, 800, 1000)]
    assert all(b <= a for a, b in zip(energy, energy[1:])), energy
    assert energy[-1] < 1e-3 * energy[0], energy


def test_the_wavelet_is_openfwis():
    w = ricker(15.0, 1e-3, 1000)
    assert int(np.argmax(w)) == 73 and len(np.flatnonzero(w)) == 147 and w.max() == pytest.approx(1.0)


def test_gradients_flow_through_the_checkpointed_time_loop():
    """The gradient of a data misfit with respect to the velocity, by autograd through checkpointed
    segments, equals a finite difference of the misfit (small grid, few steps)."""
    from gwi.physics.geometry import Geometry

    g = Geometry(nt=300)
    fwd = OpenFWI(g, nbc=10, dtype=torch.float64, segment=16)
    # rising with depth: the box below is off the map's minimum, which sets the boundary's damping
    v0 = (2500.0 + 5.0 * torch.arange(70, dtype=torch.float64)[:, None]).expand(1, 70, 70).clone()
    obs = fwd(v0 + 100.0 * (torch.arange(70, dtype=torch.float64)[:, None] > 8))
    v = v0.clone().requires_grad_(True)
    ((fwd(v) - obs) ** 2).sum().backward()
    dv = torch.zeros_like(v0)
    dv[0, 10:14, 30:34] = 1.0  # a small box: the directional derivative along it
    eps = 1e-2
    f = [float(((fwd(v0 + s * eps * dv) - obs) ** 2).sum()) for s in (1, -1)]
    fd = (f[0] - f[1]) / (2 * eps)
    assert float((v.grad * dv).sum()) == pytest.approx(fd, rel=1e-4)


@pytest.mark.parametrize("v,message", [
    (np.full((70, 60), 2000.0), "velocity: expected shape (B, 70, 70) or (70, 70), got (70, 60)"),
    (np.full((70, 70), 1400.0), "velocity: expected velocities in 1500–4500 m/s, got 1400.0 m/s (below the range) "
                                "at map 0, row 0, column 0"),
    (np.where(np.arange(70)[None, :] == 7, 5000.0, 2000.0) * np.ones((2, 70, 70)),
     "got 5000.0 m/s (above the range) at map 0, row 0, column 7"),
    (np.where(np.arange(70)[:, None] == 3, np.nan, 2000.0) * np.ones((70, 70)),
     "velocity: expected finite velocities, got nan at map 0, row 3, column 0"),
])
def test_bad_velocity_is_named(v, message):
    with pytest.raises(ValueError) as e:
        check_velocity(v)
    assert message in str(e.value)


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="backend: expected one of openfwi, deepwave, got 'devito'"):
        backend("devito")


@pytest.mark.slow
def test_deepwave_backend_agrees_with_openfwi():
    """The two backends on one layered map: deepwave (its PML, its own stepping) is aligned in polarity
    and onset with the organisers' scheme; what is left is measured here, not assumed."""
    from gwi.data.synth import velocity_batch

    v = torch.tensor(velocity_batch("CurveVel_A", 3, 0, 1))
    a, b = simulate(v, "openfwi").numpy()[0], simulate(v, "deepwave").numpy()[0]
    assert rel_l2(b[:, :600], a[:, :600]) < 0.02
    for s, r in ((2, 40), (0, 69)):
        x, y = a[s, :600, r], b[s, :600, r]
        cc = [float(np.dot(np.roll(y, lag), x)) for lag in range(-5, 6)]
        assert int(np.argmax(cc)) - 5 == 0, (s, r)
