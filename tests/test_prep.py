import hashlib
import json

import numpy as np
import pytest

from gwi.data.layout import discover_test, discover_train
from gwi.data.prep import prep_test, prep_train
from gwi.data.shards import ShardedDataset, load_manifest
from gwi.errors import DataError
from gwi.store import open_store

from .conftest import make_samples, write_kaggle


def store_files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_discovers_both_naming_styles(kaggle_dir):
    root, _ = kaggle_dir
    pairs = discover_train(root)
    names = [(p.family, p.x_path.name, p.y_path.name) for p in pairs]
    assert names == [
        ("CurveFault_B", "seis1_1_0.npy", "vel1_1_0.npy"),
        ("FlatVel_A", "data1.npy", "model1.npy"),
        ("FlatVel_A", "data2.npy", "model2.npy"),
    ]
    # train_samples/ itself and a single family folder work as --src too
    assert discover_train(root / "train_samples") == pairs
    assert [p.x_path.name for p in discover_train(root / "train_samples" / "FlatVel_A")] == ["data1.npy", "data2.npy"]


def test_prep_writes_float16_shards_and_a_complete_manifest(kaggle_dir, tmp_path):
    root, arrays = kaggle_dir
    out = f"file://{tmp_path}/store"
    m = prep_train(root, out, "kt", shard_size=4, progress=False)
    ds_dir = tmp_path / "store" / "datasets" / "kt"
    assert load_manifest(ds_dir) == m
    assert m["families"]["FlatVel_A"]["samples"] == 5 and m["families"]["CurveFault_B"]["samples"] == 2
    assert m["num_samples"] == 7 and m["labelled"] is True and m["gwi_version"]
    assert m["source"]["kind"] == "kaggle-train" and len(m["source"]["files"]) == 3
    # FlatVel_A: 5 samples with shard size 4 -> shards of 4 and 1, each with x and y
    fv = [s for s in m["shards"] if s["family"] == "FlatVel_A"]
    assert [(s["kind"], s["shape"][0]) for s in fv] == [("x", 4), ("y", 4), ("x", 1), ("y", 1)]
    for s in m["shards"]:
        p = ds_dir / s["path"]
        assert s["dtype"] == "float16"
        assert hashlib.sha256(p.read_bytes()).hexdigest() == s["sha256"]
        assert p.stat().st_size == s["bytes"]
        a = np.load(p, mmap_mode="r")
        assert a.dtype == np.float16 and list(a.shape) == s["shape"]
        assert s["shape"][1:] == ([5, 1000, 70] if s["kind"] == "x" else [1, 70, 70])

    # values survive the round trip within float16 precision, in source order
    ds = ShardedDataset(ds_dir)
    x_src = np.concatenate([x for x, _ in arrays["FlatVel_A"]])
    y_src = np.concatenate([y for _, y in arrays["FlatVel_A"]])
    idx = np.flatnonzero(ds.families == "FlatVel_A")
    xb, yb = ds.batch(idx)
    np.testing.assert_allclose(xb, x_src, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(yb, y_src, rtol=1e-3)
    # the measured round-trip error is what float16 does to these values
    err = m["float16_error"]
    assert 0 < err["x"]["max_rel"] <= 2 ** -11 + 1e-9
    assert 0 < err["y"]["max_abs"] <= 2.0  # float16 spacing at 4096 m/s is 4: rounding error <= 2
    # OpenFWI normalisation constants: log1p(|x|)*sign(x) of the family's extreme values
    allx = np.concatenate([x for x, _ in arrays["CurveFault_B"]])
    norm = m["normalisation"]["seismic"]["per_family"]["CurveFault_B"]
    assert norm["max"] == pytest.approx(np.log1p(allx.max()), rel=1e-6)
    assert norm["min"] == pytest.approx(-np.log1p(-allx.min()), rel=1e-6)
    assert m["normalisation"]["velocity"]["min"] == 1500 and m["normalisation"]["velocity"]["max"] == 4500


def test_velocity_stored_as_n_70_70_is_accepted(tmp_path):
    arrays = write_kaggle(tmp_path / "k", {"Style_A": [2]}, velocity_3d=True)
    m = prep_train(tmp_path / "k", f"file://{tmp_path}/s", "v3", progress=False)
    ds = ShardedDataset(tmp_path / "s" / "datasets" / "v3")
    _, y = ds.batch([0, 1])
    assert y.shape == (2, 1, 70, 70)
    np.testing.assert_allclose(y, arrays["Style_A"][0][1], rtol=1e-3)
    assert m["velocity_shape"] == [1, 70, 70]


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda x, y: x.__setitem__((2, 1, 10, 3), np.nan), r"data1\.npy: sample 2 holds NaN or Inf"),
        (lambda x, y: x.__setitem__((1, 0, 0, 0), np.inf), r"data1\.npy: sample 1 holds NaN or Inf"),
        (lambda x, y: x.__setitem__((2, 0, 5, 5), 70000.0), r"data1\.npy: sample 2 has \|value\| 70000 > 65504"),
        (lambda x, y: y.__setitem__((1, 0, 3, 3), 1200.0), r"model1\.npy: sample 1 has velocity 1200\.0\.\."),
        (lambda x, y: y.__setitem__((0, 0, 3, 3), 4600.0), r"model1\.npy: sample 0 has velocity .*4600\.0 m/s"),
    ],
)
def test_bad_values_stop_with_file_and_sample(tmp_path, corrupt, message):
    write_kaggle(tmp_path / "k", {"FlatVel_A": [3]})
    d = tmp_path / "k" / "train_samples" / "FlatVel_A"
    x, y = np.load(d / "data" / "data1.npy"), np.load(d / "model" / "model1.npy")
    corrupt(x, y)
    np.save(d / "data" / "data1.npy", x)
    np.save(d / "model" / "model1.npy", y)
    with pytest.raises(DataError, match=message):
        prep_train(tmp_path / "k", f"file://{tmp_path}/s", "bad", progress=False)
    # nothing half-written: no manifest, no shards, no staging folders
    assert store_files(tmp_path / "s") == []


def test_velocity_tolerance_is_configurable(tmp_path):
    write_kaggle(tmp_path / "k", {"FlatVel_A": [2]})
    p = tmp_path / "k" / "train_samples" / "FlatVel_A" / "model" / "model1.npy"
    y = np.load(p)
    y[0, 0, 0, 0] = 4500.5  # within the default 1 m/s tolerance
    np.save(p, y)
    prep_train(tmp_path / "k", f"file://{tmp_path}/s", "ok", progress=False)
    with pytest.raises(DataError, match="tolerance 0.1"):
        prep_train(tmp_path / "k", f"file://{tmp_path}/s", "strict", velocity_tolerance=0.1, progress=False)


def test_shape_errors_name_the_file(tmp_path):
    write_kaggle(tmp_path / "k", {"FlatVel_A": [2]})
    d = tmp_path / "k" / "train_samples" / "FlatVel_A"
    np.save(d / "data" / "data1.npy", np.zeros((2, 5, 999, 70), np.float32))
    with pytest.raises(DataError, match=r"data1\.npy: seismic shape \(2, 5, 999, 70\), expected \(n, 5, 1000, 70\)"):
        prep_train(tmp_path / "k", f"file://{tmp_path}/s", "x", progress=False)
    np.save(d / "data" / "data1.npy", np.zeros((3, 5, 1000, 70), np.float32))
    with pytest.raises(DataError, match=r"model1\.npy: 2 velocity samples, but .*data1\.npy has 3"):
        prep_train(tmp_path / "k", f"file://{tmp_path}/s", "x", progress=False)
    np.save(d / "data" / "data1.npy", np.zeros((2, 5, 1000, 70), np.float32))
    np.save(d / "model" / "model1.npy", np.full((2, 70, 71), 2000, np.float32))
    with pytest.raises(DataError, match=r"model1\.npy: velocity shape \(2, 70, 71\)"):
        prep_train(tmp_path / "k", f"file://{tmp_path}/s", "x", progress=False)


def test_missing_partner_files(tmp_path):
    write_kaggle(tmp_path / "k", {"FlatVel_A": [2, 2], "FlatFault_A": [2]})
    fam = tmp_path / "k" / "train_samples"
    (fam / "FlatVel_A" / "model" / "model2.npy").unlink()
    with pytest.raises(DataError, match=r"data2\.npy: no velocity file for it, expected .*model/model2\.npy"):
        discover_train(tmp_path / "k")
    (fam / "FlatVel_A" / "data" / "data2.npy").unlink()
    (fam / "FlatFault_A" / "vel1_1_0.npy").unlink()
    with pytest.raises(DataError, match=r"seis1_1_0\.npy: no velocity file for it, expected .*vel1_1_0\.npy"):
        discover_train(tmp_path / "k")
    with pytest.raises(DataError, match="no such folder"):
        discover_train(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no training data found"):
        discover_train(tmp_path / "empty")


def test_existing_dataset_is_kept_unless_overwrite_and_survives_a_failed_rebuild(tmp_path):
    write_kaggle(tmp_path / "k", {"FlatVel_A": [2]})
    out = f"file://{tmp_path}/s"
    m1 = prep_train(tmp_path / "k", out, "d", progress=False)
    with pytest.raises(DataError, match="already exists; pass --overwrite"):
        prep_train(tmp_path / "k", out, "d", progress=False)
    # a rebuild that fails half-way leaves the old dataset exactly as it was
    before = {p: (tmp_path / "s" / p).read_bytes() for p in store_files(tmp_path / "s")}
    bad = tmp_path / "k" / "train_samples" / "FlatVel_A" / "model" / "model1.npy"
    y = np.load(bad)
    y[1, 0, 0, 0] = np.nan
    np.save(bad, y)
    with pytest.raises(DataError, match="sample 1 holds NaN"):
        prep_train(tmp_path / "k", out, "d", overwrite=True, progress=False)
    assert {p: (tmp_path / "s" / p).read_bytes() for p in store_files(tmp_path / "s")} == before
    # a successful rebuild replaces it and removes the old build's shards
    y[1, 0, 0, 0] = 2000
    np.save(bad, y)
    m2 = prep_train(tmp_path / "k", out, "d", overwrite=True, progress=False)
    assert m2["build"] != m1["build"]
    files = store_files(tmp_path / "s")
    assert not any(m1["build"] in f for f in files) and any(m2["build"] in f for f in files)


def test_test_folder_keeps_oids_in_order(tmp_path):
    rng = np.random.default_rng(3)
    d = tmp_path / "comp" / "test"
    d.mkdir(parents=True)
    oids = ["000039dca2", "0a1b2c3d4e", "ff00aa11bb", "5b5b5b5b5b", "77e1d0c9aa"]
    xs = {}
    for o in oids:
        x, _ = make_samples(rng, 1)
        xs[o] = x[0]
        np.save(d / f"{o}.npy", x[0])
    assert [o for o, _ in discover_test(tmp_path / "comp")] == sorted(oids)
    m = prep_test(tmp_path / "comp", f"file://{tmp_path}/s", "test", shard_size=2, progress=False)
    assert m["labelled"] is False and all(s["kind"] == "x" for s in m["shards"])
    assert [o for s in m["shards"] for o in s["oids"]] == sorted(oids)
    ds = ShardedDataset(tmp_path / "s" / "datasets" / "test")
    assert ds.oids == sorted(oids)
    for i, o in enumerate(ds.oids):
        np.testing.assert_allclose(ds[i][0], xs[o], rtol=1e-3, atol=1e-4)
        assert ds[i][1] is None


def test_test_folder_bad_file_is_named(tmp_path):
    d = tmp_path / "test"
    d.mkdir()
    np.save(d / "aaa.npy", np.zeros((5, 1000, 70), np.float32))
    bad = np.zeros((5, 1000, 70), np.float32)
    bad[2, 3, 4] = np.nan
    np.save(d / "bbb.npy", bad)
    with pytest.raises(DataError, match=r"bbb\.npy: sample 0 holds NaN"):
        prep_test(d, f"file://{tmp_path}/s", "t", progress=False)
    np.save(d / "bbb.npy", np.zeros((5, 1000, 69), np.float32))
    with pytest.raises(DataError, match=r"bbb\.npy: shape \(5, 1000, 69\), expected \(5, 1000, 70\)"):
        prep_test(d, f"file://{tmp_path}/s", "t", progress=False)
    assert store_files(tmp_path / "s") == []


def test_time_decimation_filters_and_reports_aliasing(tmp_path):
    """A 15 Hz signal plus a 300 Hz one, decimated ×2 (new Nyquist 250 Hz): the 300 Hz part is the
    energy above the new Nyquist (0.3² / (1 + 0.3²) = 8.26 %) and the filter removes it."""
    t = np.arange(1000) * 1e-3
    sig = np.sin(2 * np.pi * 15 * t) + 0.3 * np.sin(2 * np.pi * 300 * t)
    x = np.broadcast_to(sig[None, None, :, None], (2, 5, 1000, 70)).astype(np.float32).copy()
    y = np.full((2, 1, 70, 70), 3000, np.float32)
    d = tmp_path / "k" / "train_samples" / "FlatVel_A"
    (d / "data").mkdir(parents=True)
    (d / "model").mkdir()
    np.save(d / "data" / "data1.npy", x)
    np.save(d / "model" / "model1.npy", y)
    m = prep_train(tmp_path / "k", f"file://{tmp_path}/s", "dec", time_decimate=2, progress=False)
    dec = m["time_decimation"]
    assert m["seismic_shape"] == [5, 500, 70] and m["dt_s"] == pytest.approx(2e-3)
    assert dec["energy_above_new_nyquist_fraction"] == pytest.approx(0.09 / 1.09, rel=0.02)
    assert dec["energy_removed_by_filter_fraction"] == pytest.approx(0.09 / 1.09, rel=0.05)
    out, _ = ShardedDataset(tmp_path / "s" / "datasets" / "dec").batch([0])
    trace = out[0, 0, :, 0].astype(np.float64)
    want = np.sin(2 * np.pi * 15 * t[::2])
    # away from the ends (filter edge effects) the 15 Hz wave is kept, in phase, and the 300 Hz gone
    assert np.abs(trace[50:450] - want[50:450]).max() < 0.02


def test_prep_into_s3(kaggle_dir, s3, tmp_path):
    root, arrays = kaggle_dir
    m = prep_train(root, s3 + "/team", "kt", progress=False)
    st = open_store(s3 + "/team/datasets/kt")
    assert json.loads(st.get_bytes("manifest.json"))["build"] == m["build"]
    for s in m["shards"]:
        assert hashlib.sha256(st.get_bytes(s["path"])).hexdigest() == s["sha256"]


def test_prep_in_parts_then_merge_makes_the_whole_dataset(kaggle_dir, tmp_path):
    """Issue 25: a 300 GB source is prepared by several machines, each taking every N-th source
    file (gwi data prep --shard i/N), and gwi data merge joins the parts."""
    import subprocess
    import sys

    from gwi.data.shards import merge_parts

    root, _ = kaggle_dir
    out = f"file://{tmp_path}/store"
    whole = prep_train(root, out, "whole", shard_size=4, progress=False)
    parts = [prep_train(root, out, "parts", shard_size=4, progress=False, shard=(i, 2)) for i in (1, 2)]
    assert [p["num_samples"] for p in parts] == [4, 3]  # source files 1 and 3 (2 + 2 samples), file 2 (3)
    assert not (tmp_path / "store" / "datasets" / "parts" / "manifest.json").exists()
    m = merge_parts(out, "parts", 2)
    assert m["num_samples"] == whole["num_samples"] == 7
    assert {f: d["samples"] for f, d in m["families"].items()} == {f: d["samples"] for f, d in whole["families"].items()}
    assert m["normalisation"]["seismic"]["per_family"].keys() == whole["normalisation"]["seismic"]["per_family"].keys()
    a, b = ShardedDataset(tmp_path / "store" / "datasets" / "parts"), ShardedDataset(tmp_path / "store" / "datasets" / "whole")
    # the same samples, in part order: compare them sorted by their content
    key = lambda ds: sorted(ds.batch(np.arange(len(ds)))[1].reshape(len(ds), -1).sum(1).round(1).tolist())  # noqa: E731
    assert key(a) == key(b)
    # through the command line: a part says how to join, and parts of other commands are refused
    r = subprocess.run([sys.executable, "-m", "gwi", "data", "prep", "--src", str(root), "--out", out, "--name",
                        "cli", "--shard", "2/2"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and f"gwi data merge --out {out} --name cli --parts 2" in r.stdout, r.stderr
    prep_train(root / "train_samples" / "FlatVel_A", out, "cli", progress=False, shard=(1, 2))
    with pytest.raises(DataError, match=r"source\.path is .* part 1 has .*; the parts were made by different commands"):
        merge_parts(out, "cli", 2)


def test_a_plan_preps_in_parts_and_merges(kaggle_dir, tmp_path, monkeypatch):
    """Issue 25: `kind: prep` with shards: two part jobs (real `gwi data prep --shard` processes on the
    local platform), then the merge job; the dataset holds what one whole prep holds, and a part job run
    again finds its part and does no work."""
    import json
    import subprocess
    import sys

    from gwi.adapters.base import load_profiles
    from gwi.scheduler import Scheduler
    from gwi.spec import load_spec

    from .conftest import run_until

    root, _ = kaggle_dir
    store = f"file://{tmp_path}/store"
    plat = tmp_path / "platforms"
    plat.mkdir()
    (plat / "local.yaml").write_text("adapter: local\ncapacity: 2\noptions: {runtime: process, grace_s: 2}\n")
    monkeypatch.setenv("GWI_PLATFORMS", str(plat))
    (tmp_path / "p.yaml").write_text(f"name: p\nstore: {store}\njobs:\n  - name: prep\n    kind: prep\n"
                                     f"    src: {root}\n    dataset: kt\n    shards: 2\n    shard_size: 4\n"
                                     "    platforms: [local]\n")
    s = Scheduler(tmp_path / "home", profiles=load_profiles([plat]))
    try:
        spec = load_spec(tmp_path / "p.yaml", profiles=s.profiles)
        assert [(j.name, j.after) for j in spec.jobs] == [("prep-s1", []), ("prep-s2", []), ("prep", ["prep-s1", "prep-s2"])]
        s.submit(spec)
        run_until(s, lambda: s.state.job("p/prep")["state"] in ("succeeded", "failed"), 240)
        assert s.state.job("p/prep")["state"] == "succeeded", s.state.job("p/prep")["reason"]
        again = spec.jobs[0].argv
    finally:
        for a in s.state.active_attempts():
            s.adapter(a["platform"]).cancel(json.loads(a["handle"]))
        s.close()
    whole = prep_train(root, f"file://{tmp_path}/o", "whole", shard_size=4, progress=False)
    merged = ShardedDataset(tmp_path / "store" / "datasets" / "kt")
    assert merged.manifest["num_samples"] == whole["num_samples"] == 7
    part = tmp_path / "store" / "datasets" / "kt" / "parts" / "1-of-2.json"
    before = part.stat().st_mtime_ns
    r = subprocess.run([sys.executable, "-m", "gwi", *again[1:]], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and part.stat().st_mtime_ns == before, r.stderr
