"""Several datasets in one run, with weights (issue 25): the epoch's sample list (exact counts, each
dataset's own order kept, a pure function of seed/epoch/rank), gwi train and a plan mixing them, the
mix in the run's metrics and `gwi runs`; and how the cache limit is shared and defaulted."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gwi.config import TrainConfig
from gwi.data.mix import interleave, parse_part, spell_part
from gwi.data.shards import DatasetWriter, load_manifest
from gwi.data.sync import cache_dir_for
from gwi.errors import GwiError
from gwi.store import open_store
from gwi.training.data import cache_limit, cache_shares, load_data
from gwi.training.distributed import Dist

from .conftest import make_samples


def dataset(store: str, name: str, families: dict[str, int], shard: int = 4, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    with DatasetWriter(store, name, source={"kind": "test"}, shard_size=shard) as w:
        for fam, n in families.items():
            x, y = make_samples(rng, n)
            w.add(fam, x, y, src=f"test:{fam}")
        w.finish()
    return f"{store}/datasets/{name}"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    s = f"file://{root}/store"
    a = dataset(s, "a", {"FlatVel_A": 20}, seed=1)
    b = dataset(s, "b", {"CurveVel_A": 20}, seed=2)
    c = dataset(s, "c", {"FlatVel_A": 8, "CurveVel_A": 8}, seed=3)
    return root, s, a, b, c


def test_a_weight_is_read_after_the_last_colon_of_a_url():
    assert parse_part("s3://bucket/datasets/x") == ("s3://bucket/datasets/x", 1.0)
    assert parse_part("s3://bucket/datasets/x:0.3") == ("s3://bucket/datasets/x", 0.3)
    assert parse_part("file:///data/store/datasets/y:2") == ("file:///data/store/datasets/y", 2.0)
    assert parse_part(spell_part("s3://b/datasets/x", 0.25)) == ("s3://b/datasets/x", 0.25)
    assert spell_part("s3://b/datasets/x", 1.0) == "s3://b/datasets/x"
    for bad, why in (("s3://b/datasets/x:0", "expected a weight above 0"), ("s3://b/datasets/x:-1", "above 0"),
                     ("s3://b/datasets/x:lots", "with a number as WEIGHT, got 'lots'"), ("s3://b/x:nan", "above 0")):
        with pytest.raises(ValueError, match=why):
            parse_part(bad)
    with pytest.raises(ValueError, match="datasets: expected each dataset once"):
        TrainConfig(model="inversionnet", dataset="s3://b/datasets/x", datasets=["s3://b/datasets/x:2"], run="").validate()
    with pytest.raises(ValueError, match="val_dataset: expected one of the run's datasets"):
        TrainConfig(model="inversionnet", dataset="s3://b/datasets/x", run="", val_dataset="y").validate()


def test_interleave_keeps_each_share_in_its_own_order():
    a, b = np.arange(10), np.arange(100, 103)
    out = interleave([a, b], seed=0, epoch=0, rank=0)
    assert sorted(out.tolist()) == sorted(a.tolist() + b.tolist())
    assert out[out < 100].tolist() == a.tolist() and out[out >= 100].tolist() == b.tolist()
    assert np.array_equal(out, interleave([a, b], seed=0, epoch=0, rank=0))
    assert not np.array_equal(out, interleave([a, b], seed=0, epoch=1, rank=0))


def test_each_epoch_draws_exactly_its_weight_of_each_dataset(store):
    _, _, a, b, c = store
    cfg = TrainConfig(model="inversionnet", dataset=a, datasets=[f"{b}:0.5", f"{c}:2"], run="", split="kfold:4:0")
    data = load_data(cfg, Dist(), torch.device("cpu"), log=lambda *_: None)
    src = {s.url: s for s in data.sources}
    n = {u: len(s.train_idx) for u, s in src.items()}
    assert data.epoch_len(1) == n[a] + n[b] // 2 + 2 * n[c]
    seen = []
    for epoch in (0, 1):
        order = data.epoch(0, epoch, 0, 1)
        assert len(order) == data.epoch_len(1)
        assert np.array_equal(order, data.epoch(0, epoch, 0, 1))  # a pure function
        part = data.ds.part_of(order)
        own = {u: order[part == i] - s.offset for i, (u, s) in enumerate(src.items())}
        assert sorted(own[a].tolist()) == sorted(src[a].train_idx.tolist())  # weight 1: each once
        assert len(own[b]) == n[b] // 2 and len(set(own[b].tolist())) == len(own[b])  # half, no repeat
        counts = np.bincount(own[c], minlength=len(data.ds.parts[2]))
        assert set(counts[src[c].train_idx].tolist()) == {2}  # weight 2: each twice
        # each dataset's share keeps that dataset's own order
        for i, s in enumerate(data.sources):
            assert np.array_equal(order[part == i], s.order(0 + 1_000_003 * i, epoch, 0, 1))
        seen.append(set(own[b].tolist()))
    assert seen[0] != seen[1]  # a different half of b each epoch
    # two ranks: disjoint samples of a, each rank the same count
    r0, r1 = data.epoch(0, 0, 0, 2), data.epoch(0, 0, 1, 2)
    assert len(r0) == len(r1) == data.epoch_len(2)
    a0, a1 = (set(r[data.ds.part_of(r) == 0].tolist()) for r in (r0, r1))
    assert not a0 & a1
    # validation on the first dataset: its families only
    assert set(data.ds.families[data.val_idx]) == {"FlatVel_A"} and data.val_idx.max() < len(data.ds.parts[0])


def test_a_family_split_validates_on_the_dataset_holding_the_family(store):
    _, _, a, _, c = store
    cfg = TrainConfig(model="inversionnet", dataset=a, datasets=[c], run="", split="family:CurveVel_A", val_dataset="c")
    data = load_data(cfg, Dist(), torch.device("cpu"), log=lambda *_: None)
    first, second = data.sources
    assert len(first.train_idx) == 20  # a holds no CurveVel_A: all of it trains
    assert set(data.ds.families[data.val_idx]) == {"CurveVel_A"} and len(data.val_idx) == 8
    assert set(data.ds.families[second.train_idx + second.offset]) == {"FlatVel_A"}
    cfg.val_dataset = ""
    with pytest.raises(GwiError, match="split family:CurveVel_A: validation dataset .*/a has no such samples"):
        load_data(cfg, Dist(), torch.device("cpu"), log=lambda *_: None)


def test_the_cache_limit_is_shared_small_datasets_first_and_defaults_to_the_free_disk(monkeypatch, tmp_path):
    assert cache_shares([10, 20], None) == [None, None]
    assert cache_shares([10, 20], 30) == [None, None]  # they fit: pulled whole
    assert cache_shares([10, 100], 60) == [None, 50]  # the small one pulled, the large one streams in the rest
    assert cache_shares([100, 10, 200], 90) == [40, None, 40]
    monkeypatch.setenv("GWI_CACHE", str(tmp_path))
    cfg = TrainConfig(model="inversionnet", dataset="s3://b/datasets/x", run="")
    monkeypatch.delenv("GWI_CACHE_LIMIT", raising=False)
    import shutil

    free = shutil.disk_usage(tmp_path).free
    assert 0.7 * free < cache_limit(cfg) <= 0.8 * free + 1
    monkeypatch.setenv("GWI_CACHE_LIMIT", "3GB")  # a platform profile's cache_limit
    assert cache_limit(cfg) == 3 * 10**9
    cfg.cache_limit = "none"
    assert cache_limit(cfg) is None
    cfg.cache_limit = "2GiB"
    assert cache_limit(cfg) == 2 * 2**30


def test_gwi_train_mixes_datasets_streams_the_large_one_and_reports_the_mix(store, tmp_path, capsys):
    """`--dataset A --dataset B:0.5 --val-dataset b` with a cache limit that holds A whole and a few of
    B's shards: A is pulled, B streams, each epoch's samples are as weighted (sample log), validation is
    on B's split, and the metrics and `gwi runs list` show the mix."""
    from gwi.cli import main

    root, s, a, _, _ = store
    big = dataset(s, "big", {"CurveVel_A": 40}, shard=4, seed=5)
    mb = load_manifest(open_store(big))
    unit = max(x["bytes"] for x in mb["shards"] if x["kind"] == "x") + max(x["bytes"] for x in mb["shards"] if x["kind"] == "y")
    size_a = sum(x["bytes"] for x in load_manifest(open_store(a))["shards"])
    run, log = f"{s}/runs/mixed", tmp_path / "samples.log"
    rc = main(["train", "--model", "inversionnet", "--preset", "tiny", "--dataset", a, "--dataset", f"{big}:0.5",
               "--val-dataset", "big", "--run", run, "--epochs", "2", "--batch-size", "4", "--ema", "0",
               "--cache-limit", str(size_a + 7 * unit), "--set", f"sample_log={log}", "--split", "kfold:5:0"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "mixing a x1 (16 of 16 samples per epoch), big x0.5 (16 of 32 samples per epoch); validation on big" in out
    assert "streaming big (" in out and cache_dir_for(a).exists() and not cache_dir_for(big).exists()
    m = json.loads(open_store(run).get_bytes("metrics.json"))
    assert [(p["name"], p["weight"], p["samples_per_epoch"], p["streamed"]) for p in m["datasets"]] == \
        [("a", 1.0, 16, False), ("big", 0.5, 16, True)]
    assert set(m["val_mae_per_family"]) == {"CurveVel_A"}  # big's split, not a's (FlatVel_A only)
    lines = [ln.split() for ln in log.read_text().splitlines()]
    assert len(lines) == m["steps"] == 2 * 32 // 4
    for epoch in (0, 1):
        idx = np.array([int(i) for ln in lines if int(ln[0]) == epoch for i in ln[2:]])
        assert (idx < 20).sum() == 16 and (idx >= 20).sum() == 16 and len(set(idx.tolist())) == 32
    main(["runs", "list", s])
    assert "a + big x0.5" in capsys.readouterr().out


def test_a_plan_mixes_datasets_by_name_with_weights(tmp_path):
    from gwi.spec import load_spec
    from gwi.yamlfile import ConfigError

    body = """name: mixp
store: file://{root}/store
defaults: {{platforms: [local]}}
jobs:
  - name: syn
    kind: synth
    dataset: synth-b
    families: [FlatVel_A]
    samples: 8
  - name: tr
    kind: train
    model: inversionnet
    preset: tiny
    datasets: {datasets}
    config: {{epochs: 1, val_dataset: kaggle-train}}
"""
    p = tmp_path / "p.yaml"
    p.write_text(body.format(root=tmp_path, datasets='[kaggle-train, {synth-b: 0.3}, "s3://b/datasets/x:2"]'))
    tr = {j.name: j for j in load_spec(p).jobs}["tr"]
    assert tr.after == ["syn"]  # it reads what the synth job writes
    store = f"file://{tmp_path}/store"
    assert tr.argv[tr.argv.index("--run") - 6:tr.argv.index("--run")] == [
        "--dataset", f"{store}/datasets/kaggle-train", "--dataset", f"{store}/datasets/synth-b:0.3",
        "--dataset", "s3://b/datasets/x:2"]
    for bad, why in (("[a, a]", "'a' is listed twice"), ('[a, "b:0"]', "expected a weight above 0"), ("[]", "at least one"),
                     ("[a, {b: x}]", "with a number as WEIGHT"), ("[[1]]", "expected a name, a URL or NAME: WEIGHT")):
        p.write_text(body.format(root=tmp_path, datasets=bad))
        with pytest.raises(ConfigError, match=f"p.yaml:14: job 'tr': field 'datasets': .*{why}"):
            load_spec(p)
    p.write_text(body.format(root=tmp_path, datasets="[a]").replace("    datasets:", "    dataset: a\n    datasets:"))
    with pytest.raises(ConfigError, match="give dataset or datasets, not both"):
        load_spec(p)


def test_bad_mixes_are_refused_naming_the_dataset(store, tmp_path):
    _, s, a, _, _ = store
    short = dataset(s, "short", {"FlatVel_A": 4}, shard=4)
    m = load_manifest(open_store(short))
    m["seismic_shape"] = [5, 999, 70]
    open_store(short).put_bytes("manifest.json", json.dumps(m).encode())
    cfg = TrainConfig(model="inversionnet", dataset=a, datasets=[short], run="")
    with pytest.raises(GwiError, match=f"dataset {short}: seismic shape \\[5, 999, 70\\] differs from \\[5, 1000, 70\\]"):
        load_data(cfg, Dist(), torch.device("cpu"), log=lambda *_: None)
    cfg = TrainConfig(model="inversionnet", dataset=a, run="", families=["CurveVel_B"])
    with pytest.raises(GwiError, match="families: CurveVel_B not in dataset"):
        load_data(cfg, Dist(), torch.device("cpu"), log=lambda *_: None)
