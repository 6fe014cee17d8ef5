"""``gwi data augment``: new maps from a dataset's maps, re-simulated; parts over shards joined by
``gwi data merge`` into the dataset one command would have made."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gwi.data.augment import augment, draw, parse_recipe
from gwi.data.shards import ShardedDataset, merge_parts
from gwi.data.sync import pull
from gwi.data.synth import synthesize
from gwi.errors import DataError
from gwi.physics import simulate

GWI = shutil.which("gwi", path=str(Path(sys.executable).parent)) or "gwi"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("aug")
    synthesize(["FlatVel_A", "CurveFault_A"], 3, f"file://{root}/s", "src", seed=5, progress=False, backend="deepwave")
    return {"store": f"file://{root}/s", "url": f"file://{root}/s/datasets/src", "root": root}


def maps(url: str) -> tuple[ShardedDataset, dict[str, tuple[str, np.ndarray]]]:
    """The dataset and its samples keyed by the bytes of their velocity map."""
    ds = ShardedDataset(pull(url, progress=False))
    out = {}
    for i in range(len(ds)):
        x, y, fam = ds[i]
        out[hashlib.sha256(np.asarray(y).tobytes()).hexdigest()] = (fam, np.asarray(x))
    return ds, out


def leaves(d, prefix=""):
    """A nested manifest section as {"a.b": number}, for approximate comparison."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(leaves(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float)):
            out[prefix + k] = v
    return out


def test_new_maps_are_resimulated_in_range_and_recorded(source):
    m = augment(source["url"], source["store"], "a2", factor=2, seed=3, progress=False)
    assert m["num_samples"] == 12 and m["families"]["FlatVel_A"]["samples"] == 6
    src = m["source"]
    assert (src["kind"], src["from"], src["factor"], src["recipe"], src["backend"]) == (
        "augment", source["url"], 2, ["flip", "crop", "affine", "blend"], "deepwave")  # the source's backend
    ds, _ = maps(f"{source['store']}/datasets/a2")
    _, old = maps(source["url"])
    y = ds.batch(range(len(ds)))[1][:, 0].astype(np.float32)
    assert y.min() >= 1500 and y.max() <= 4500
    # every map is new, and its recording is the forward model of that map (not a warped recording)
    assert not {hashlib.sha256(ds[i][1].tobytes()).hexdigest() for i in range(len(ds))} & set(old)
    # (the stored map is float16: up to 1 m/s off the one that was simulated)
    x = simulate(y[:2], "deepwave").numpy()
    assert np.linalg.norm(x - ds.batch([0, 1])[0]) <= 1e-2 * np.linalg.norm(x)


def test_shards_merged_equal_one_run_and_reruns_keep_their_work(source, tmp_path):
    out = f"file://{tmp_path}/o"
    augment(source["url"], out, "whole", factor=2, seed=1, keep_source=True, progress=False)
    for i in (1, 2):
        augment(source["url"], out, "parts", factor=2, seed=1, keep_source=True, shard=(i, 2), progress=False)
    with pytest.raises(DataError, match=r"part\(s\) 1, 2, 3 of 3 are missing .*found: 1-of-2, 2-of-2"):
        merge_parts(out, "parts", 3)
    m = merge_parts(out, "parts", 2)
    assert m["source"]["parts"] == 2 and "shard" not in m["source"] and m["num_samples"] == 18
    whole_ds, whole = maps(f"{out}/datasets/whole")
    parts_ds, parts = maps(f"{out}/datasets/parts")
    assert whole.keys() == parts.keys()  # the same maps, made in another order
    for k, (fam, x) in whole.items():
        assert parts[k][0] == fam and np.array_equal(parts[k][1], x)
    for key in ("families", "normalisation"):  # the statistics joined are the ones of one run
        assert leaves(parts_ds.manifest[key]) == pytest.approx(leaves(whole_ds.manifest[key]))
    _, old = maps(source["url"])
    assert set(old) <= set(parts)  # keep_source: the source samples, as they were
    # a rerun changes nothing: the part and the merge are there from the same command
    before = sorted(p.name for p in (tmp_path / "o/datasets/parts/shards").iterdir())
    again = augment(source["url"], out, "parts", factor=2, seed=1, keep_source=True, shard=(2, 2),
                    exist_ok=True, progress=False)
    assert again["build"] == json.loads((tmp_path / "o/datasets/parts/parts/2-of-2.json").read_text())["build"]
    assert merge_parts(out, "parts", 2)["build"] == m["build"]
    assert sorted(p.name for p in (tmp_path / "o/datasets/parts/shards").iterdir()) == before
    with pytest.raises(ValueError, match=r"part 2-of-2 of dataset parts exists in .* \(seed: 1 there, 2 asked\)"):
        augment(source["url"], out, "parts", factor=2, seed=2, keep_source=True, shard=(2, 2), exist_ok=True,
                progress=False)


def test_parts_of_different_commands_are_not_joined(source, tmp_path):
    out = f"file://{tmp_path}/o"
    augment(source["url"], out, "mix", factor=1, seed=1, shard=(1, 2), progress=False)
    augment(source["url"], out, "mix", factor=1, seed=9, shard=(2, 2), progress=False)
    with pytest.raises(DataError, match=r"parts/2-of-2.json: source.seed is 9, part 1 has 1; the parts were made "
                                        r"by different commands"):
        merge_parts(out, "mix", 2)
    assert not (tmp_path / "o/datasets/mix/manifest.json").exists()


def test_flat_families_stay_flat_and_recipes_are_checked():
    rng = np.random.default_rng(0)
    for _ in range(50):
        theta, weight, chosen = draw(rng, ("affine", "crop", "flip"), flat=True)
        assert theta[1, 0] == 0 and weight is None and chosen  # depth never depends on x: layers stay flat
    assert parse_recipe("crop, flip") == ("flip", "crop") and parse_recipe(None) == ("flip", "crop", "affine", "blend")
    for bad in ("rotate", "", "flip,flip"):
        with pytest.raises(ValueError, match="recipe: "):
            parse_recipe(bad)


def test_cli_errors_name_the_problem(source, tmp_path):
    env = {**os.environ, "GWI_HOME": str(tmp_path / "home")}

    def gwi(*args):
        return subprocess.run([GWI, "data", *args], capture_output=True, text=True, timeout=120, env=env)

    r = gwi("augment", "--from", source["url"], "--name", "x", "--factor", "0")
    assert r.returncode != 0 and "factor: expected a positive integer (new maps per source map), got 0" in r.stderr
    r = gwi("augment", "--from", source["url"], "--name", "x", "--recipe", "flip,spin")
    assert r.returncode != 0 and "recipe: expected a comma-separated subset of flip,crop,affine,blend" in r.stderr
    r = gwi("augment", "--from", source["url"], "--name", "x", "--shard", "0/2")
    assert r.returncode != 0 and "shard: expected i/N" in r.stderr
    r = gwi("augment", "--from", f"file://{tmp_path}/nowhere/datasets/none", "--name", "x")
    assert r.returncode != 0 and "nowhere/datasets/none" in r.stderr, r.stderr
    r = gwi("augment", "--from", source["url"], "--name", "cli", "--factor", "1", "--recipe", "flip",
            "--shard", "1/1", "--out", f"file://{tmp_path}/o")
    assert r.returncode == 0 and "gwi data merge --out" in r.stdout, r.stderr
    r = gwi("merge", "--out", f"file://{tmp_path}/o", "--name", "cli", "--parts", "1")
    assert r.returncode == 0 and "6 samples" in r.stdout, r.stdout + r.stderr


PLAN = """name: more
store: {store}
jobs:
  - name: aug
    kind: augment
    from: src
    dataset: src-aug
    factor: 2
    seed: 4
    shards: 3
    platforms: [local]
    heartbeat_s: 0.5
"""


@pytest.mark.slow
def test_a_plan_augments_over_shards_and_merges(source, tmp_path, monkeypatch):
    """Three shard jobs (real ``gwi data augment`` processes on the local platform), then the merge job:
    the dataset is the one a single command makes."""
    from gwi.adapters.base import load_profiles
    from gwi.scheduler import Scheduler
    from gwi.spec import load_spec

    from .conftest import run_until

    plat = tmp_path / "platforms"
    plat.mkdir()
    (plat / "local.yaml").write_text("adapter: local\ncapacity: 2\noptions: {runtime: process, grace_s: 2}\n")
    monkeypatch.setenv("GWI_PLATFORMS", str(plat))
    (tmp_path / "more.yaml").write_text(PLAN.format(store=source["store"]))
    s = Scheduler(tmp_path / "home", profiles=load_profiles([plat]))
    try:
        spec = load_spec(tmp_path / "more.yaml", profiles=s.profiles)
        assert [j.name for j in spec.jobs] == ["aug-s1", "aug-s2", "aug-s3", "aug"]
        s.submit(spec)
        run_until(s, lambda: s.state.job("more/aug")["state"] in ("succeeded", "failed"), 240)
        assert s.state.job("more/aug")["state"] == "succeeded", s.state.job("more/aug")["reason"]
    finally:
        for a in s.state.active_attempts():
            s.adapter(a["platform"]).cancel(json.loads(a["handle"]))
        s.close()
    merged_ds, merged = maps(f"{source['store']}/datasets/src-aug")
    assert merged_ds.manifest["source"]["parts"] == 3 and len(merged_ds) == 12
    augment(source["url"], f"file://{tmp_path}/o", "one", factor=2, seed=4, progress=False)
    assert maps(f"file://{tmp_path}/o/datasets/one")[1].keys() == merged.keys()
