"""The synthetic families are checked physically, not only by shape."""

import numpy as np
import pytest
import torch

from gwi.data.layout import FAMILIES
from gwi.data.shards import ShardedDataset
from gwi.data.synth import sample_rng, synthesize, velocity_batch, velocity_model
from gwi.physics import backend
from gwi.physics.openfwi import ricker

N = 40  # maps per family for the statistical checks (generation only, no modelling: fast)


@pytest.fixture(scope="module")
def fm():
    """The deepwave backend as numpy in, numpy out."""
    dw = backend("deepwave", device="cpu")

    def run(v):
        with torch.no_grad():
            return dw(torch.as_tensor(np.asarray(v, np.float32))).numpy()
    return run


def test_every_family_stays_in_range_and_is_deterministic():
    for fam in FAMILIES:
        v = velocity_batch(fam, seed=7, start=0, count=N)
        assert v.shape == (N, 70, 70) and v.dtype == np.float32
        assert v.min() >= 1500 and v.max() <= 4500, fam
        # sample i does not depend on how many were asked for or where the batch starts
        np.testing.assert_array_equal(velocity_batch(fam, 7, 5, 3), v[5:8])
        assert not np.array_equal(velocity_batch(fam, 8, 0, 1)[0], v[0])


def test_flatvel_rows_are_constant_along_x():
    for fam in ("FlatVel_A", "FlatVel_B"):
        v = velocity_batch(fam, 0, 0, N)
        assert np.all(v == v[:, :, :1]), fam
        layers = [len(np.unique(m[:, 0])) for m in v]
        assert min(layers) >= 2, fam
    # A: velocity increases with depth
    for m in velocity_batch("FlatVel_A", 0, 0, N):
        assert np.all(np.diff(m[:, 0]) >= 0)


def lateral_jumps(v: np.ndarray, thresh: float = 100.0) -> np.ndarray:
    """Largest velocity jump between neighbouring columns, per map: (N,)"""
    return np.abs(np.diff(v, axis=2)).max(axis=(1, 2))


def test_faults_are_lateral_discontinuities():
    for fam in ("FlatFault_A", "FlatFault_B"):
        v = velocity_batch(fam, 0, 0, N)
        # flat layers only change along x where a fault offsets them
        jumps = lateral_jumps(v)
        assert (jumps > 100).mean() > 0.9, fam
        # a fault displaces layers: some row changes velocity along x, while unfaulted flat rows never do
        assert all(np.any(np.ptp(m, axis=1) > 100) for m in v[jumps > 100])
    # curved layers change smoothly along x: neighbour-column jumps across a fault are larger on average
    cf = velocity_batch("CurveFault_A", 0, 0, N)
    assert (lateral_jumps(cf) > 100).mean() > 0.9


def test_curvevel_layers_bend():
    v = velocity_batch("CurveVel_A", 0, 0, N)
    # depth of the first interface varies along x in nearly every map
    bends = []
    for m in v:
        first = (m != m[0:1]).argmax(axis=0)  # first row differing from the top, per column
        bends.append(np.ptp(first))
    assert np.mean(np.array(bends) >= 3) > 0.8


def test_b_is_harder_than_a():
    def distinct_layers(fam):
        return np.mean([len(np.unique(m[:, 0])) for m in velocity_batch(fam, 1, 0, N)])

    assert distinct_layers("FlatVel_B") > distinct_layers("FlatVel_A") + 1.5

    def roughness(fam):
        v = velocity_batch(fam, 1, 0, N)
        return np.mean(np.abs(np.diff(v, axis=1))) + np.mean(np.abs(np.diff(v, axis=2)))

    for kind in ("CurveVel", "FlatFault", "CurveFault", "Style"):
        assert roughness(f"{kind}_B") > 1.3 * roughness(f"{kind}_A"), kind
    # Style is smooth texture, not layers: many distinct values, small neighbour differences
    s = velocity_batch("Style_A", 1, 0, 5)
    assert all(len(np.unique(m)) > 1000 for m in s)


def test_unknown_family_is_named():
    with pytest.raises(ValueError, match=r"expected one of FlatVel_A.*got 'FlatVel_C'"):
        velocity_model("FlatVel_C", sample_rng(0, "x", 0))


def first_break(trace: np.ndarray, frac: float = 0.1) -> int:
    """Index where |trace| first reaches ``frac`` of its early peak."""
    a = np.abs(trace)
    return int(np.argmax(a >= frac * a.max()))


def test_direct_arrival_moves_with_top_layer_velocity(fm):
    """Source 0 sits at x = 0; receiver 69 is 690 m away. The direct wave's onset moves with v_top:
    t(v) - t(v') = 690 m * (1/v - 1/v'), within a few samples."""
    picks = {}
    for vtop in (1800.0, 2400.0, 3000.0):
        v = np.full((1, 70, 70), 4000.0, np.float32)
        v[:, :55] = vtop  # thick top layer: no head wave overtakes the direct wave within 690 m
        d = fm(v)[0, 0, :, 69]
        picks[vtop] = first_break(d[:700])
    for a, b in ((1800.0, 2400.0), (2400.0, 3000.0)):
        expected = 690.0 * (1 / a - 1 / b) * 1000  # ms = samples
        assert picks[a] - picks[b] == pytest.approx(expected, abs=4), picks


def test_polarity_and_onset_match_openfwi_wavelet(fm):
    """The direct wave carries OpenFWI's positive-peak polarity, and its peak moves out at the medium
    velocity. (The absolute onset, including the 2-D Green's function's phase lag, is checked against
    the openfwi backend in tests/test_physics.py.)"""
    v = np.full((1, 70, 70), 2000.0, np.float32)
    d = fm(v)[0, 2]  # source 2 at x = 34
    near, far = d[:, 40], d[:, 64]  # 60 m and 300 m offset
    pn, pf = int(np.argmax(np.abs(near[:400]))), int(np.argmax(np.abs(far[:400])))
    assert near[pn] > 0 and far[pf] > 0
    assert pf - pn == pytest.approx(240 / 2000 * 1000, abs=3)
    assert pn >= 73 + 30  # causal: not before the wavelet's peak plus the travel time
    w = ricker(15.0, 1e-3, 1000)
    assert int(np.argmax(w)) == 73 and len(np.flatnonzero(w)) == 147


def test_synthesize_writes_identical_bytes_for_the_same_seed(tmp_path, fm):
    m1 = synthesize(["FlatFault_A", "Style_B"], 3, f"file://{tmp_path}/a", "s", seed=5, batch_size=2, progress=False, backend="deepwave")
    m2 = synthesize(["FlatFault_A", "Style_B"], 3, f"file://{tmp_path}/b", "s", seed=5, batch_size=3, progress=False, backend="deepwave")
    m3 = synthesize(["FlatFault_A", "Style_B"], 3, f"file://{tmp_path}/c", "s", seed=6, batch_size=3, progress=False, backend="deepwave")
    assert [s["sha256"] for s in m1["shards"]] == [s["sha256"] for s in m2["shards"]]
    assert [s["sha256"] for s in m1["shards"]] != [s["sha256"] for s in m3["shards"]]
    assert m1["families"] == {f: m1["families"][f] for f in ("FlatFault_A", "Style_B")}
    assert m1["source"]["kind"] == "synth" and m1["source"]["seed"] == 5 and m1["source"]["backend"] == "deepwave"
    ds = ShardedDataset(tmp_path / "a" / "datasets" / "s")
    x, y = ds.batch(range(len(ds)))
    assert x.shape == (6, 5, 1000, 70) and y.shape == (6, 1, 70, 70)
    # the labels are the generator's maps (to float16 precision) and the data is their modelled response
    np.testing.assert_allclose(y[:3, 0], velocity_batch("FlatFault_A", 5, 0, 3), rtol=1e-3)
    np.testing.assert_allclose(x[:2], fm(velocity_batch("FlatFault_A", 5, 0, 2)), rtol=2e-3, atol=2e-3)
    # OpenFWI-like amplitude range (the Kaggle data's raw extremes are a few tens)
    assert 5 < np.abs(x).max() < 200
