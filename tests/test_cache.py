"""The bounded shard cache and the shard-aware order (issue 25): a dataset 5x the cache limit read
through it, from a real S3 server (moto) and from a folder store; the bound sampled while it runs."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from gwi.data.cache import ShardCache, parse_size, stream_order
from gwi.data.shards import DatasetWriter, ShardedDataset, load_manifest
from gwi.data.sync import pull
from gwi.errors import DataError, IntegrityError
from gwi.store import open_store

from .conftest import make_samples

SHARD = 3  # samples a shard: ~1.3 MB of float16 seismic each


def dataset(store_url: str, name: str = "big", shards: int = 10, shard: int = SHARD) -> str:
    """A dataset of ``shards`` shards of ``shard`` samples, two families."""
    rng = np.random.default_rng(7)
    with DatasetWriter(store_url, name, source={"kind": "test"}, shard_size=shard) as w:
        for fam in ("FlatVel_A", "CurveVel_A"):
            x, y = make_samples(rng, shard * shards // 2)
            w.add(fam, x, y, src=f"test:{fam}")
        w.finish()
    return f"{store_url.rstrip('/')}/datasets/{name}"


def unit_bytes(url: str) -> int:
    m = load_manifest(open_store(url))
    return max(s["bytes"] for s in m["shards"] if s["kind"] == "x") + \
        max(s["bytes"] for s in m["shards"] if s["kind"] == "y")


def disk_bytes(root) -> int:
    """Bytes of shard files and downloads under ``root`` now. Files come and go while it looks (a
    download renamed into place, an eviction): a vanished one counts 0, and a download seen beside the
    file it became counts once."""
    sizes: dict[str, int] = {}
    for p in list(root.rglob("*")):
        if not p.name.endswith((".npy", ".download")):
            continue
        try:
            n = p.stat().st_size
        except FileNotFoundError:
            continue
        final = p.parent / (p.name[1:].rsplit(".", 3)[0] if p.name.endswith(".download") else p.name)
        sizes[str(final)] = max(n, sizes.get(str(final), 0))
    return sum(sizes.values())


def test_sizes_are_read_as_people_write_them():
    assert parse_size("40GB") == 40 * 10**9 and parse_size("512MiB") == 512 * 2**20 and parse_size("1.5T") == 1.5e12
    assert parse_size("1000") == 1000 and parse_size(7) == 7
    for bad in ("lots", "-1GB", "0"):
        with pytest.raises(ValueError, match="cache limit: expected a size"):
            parse_size(bad)


def test_a_limit_below_two_shards_says_the_smallest_workable_one(tmp_path):
    url = dataset(f"file://{tmp_path}/store", shards=4)
    one = unit_bytes(url)
    with pytest.raises(DataError, match=r"cache limit .* holds fewer than 2 shards of big \(the largest is .*\): the "
                                        r"smallest workable limit is "):
        ShardCache(url, one, root=tmp_path / "cache")
    ShardCache(url, 2 * one, root=tmp_path / "cache").close()


@pytest.mark.parametrize("where", ["s3", "file"])
def test_a_dataset_five_times_the_limit_streams_within_the_bound(tmp_path, request, where):
    store = request.getfixturevalue("s3") if where == "s3" else f"file://{tmp_path}/store"
    url = dataset(store, shards=10)
    limit = 2 * unit_bytes(url)  # 10 shards through a cache of 2: 5x
    whole = ShardedDataset(pull(url, tmp_path / "whole", progress=False))
    cache = ShardCache(url, limit, root=tmp_path / "cache", workers=2)
    peak, stop = [0, 0], threading.Event()

    def watch():  # the bound as the disk sees it, and as the cache counts it
        while not stop.is_set():
            peak[0] = max(peak[0], disk_bytes(tmp_path / "cache"))
            peak[1] = max(peak[1], cache.used())
            time.sleep(0.002)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        units = [np.arange(whole.offsets[k], whole.offsets[k + 1]) for k in range(len(whole.offsets) - 1)]
        samples, owner = stream_order(units, seed=1, epoch=0, rank=0, world=1, window=1)
        seen = []
        for k in dict.fromkeys(owner.tolist()):  # the units in the order the stream reads them
            later = list(dict.fromkeys(owner.tolist()))
            cache.prefetch(later[later.index(k):])  # this one and the ones after it
            x, y = cache.open(k)
            idx = samples[owner == k] - whole.offsets[k]
            got_x, want_x = np.asarray(x[idx]), whole.batch(samples[owner == k], dtype=np.float16)[0]
            assert np.array_equal(got_x, want_x) and np.array_equal(np.asarray(y[idx]),
                                                                     whole.batch(samples[owner == k], np.float16)[1])
            seen += samples[owner == k].tolist()
            cache.release(k)
    finally:
        stop.set()
        t.join()
        cache.close()
    assert sorted(seen) == list(range(len(whole)))  # every sample once
    assert limit / 2 < peak[0] <= limit and peak[1] <= limit, (peak, limit)  # filled, never past the limit
    assert cache.fetched == 10 and cache.evicted >= 8


def test_a_second_cache_adopts_what_is_there_and_a_corrupt_shard_is_never_read(tmp_path, s3):
    url = dataset(s3, shards=4)
    limit = 4 * unit_bytes(url)
    c = ShardCache(url, limit, root=tmp_path / "cache")
    for k in range(4):
        c.open(k)
        c.release(k)
    c.close()
    again = ShardCache(url, limit, root=tmp_path / "cache")
    assert sorted(again.present) == [0, 1, 2, 3]
    again.open(2)
    assert again.fetched == 0  # verified copies from before: nothing downloaded
    again.close()
    # the store's copy of a shard goes bad: fetched twice, then one error naming it, never opened
    store = open_store(url)
    m = load_manifest(store)
    bad = next(s for s in m["shards"] if s["kind"] == "x")
    store.put_bytes(bad["path"], b"\x93NUMPY corrupt" + b"\0" * 100)
    logs = []
    fresh = ShardCache(url, limit, root=tmp_path / "fresh", log=logs.append)
    with pytest.raises(IntegrityError, match=rf"{bad['path']}: sha256 does not match the manifest after two downloads"):
        fresh.open(0)
    assert [m.endswith("fetching it again") for m in logs] == [True, False]
    assert 0 not in fresh.present and not list((tmp_path / "fresh").rglob("*.npy"))
    fresh.close()


def test_the_stream_order_is_a_pure_function_with_disjoint_shards_per_rank():
    units = [np.arange(10 * k, 10 * k + 10) for k in range(12)]
    a = stream_order(units, seed=3, epoch=5, rank=1, world=3, window=2)
    b = stream_order(units, seed=3, epoch=5, rank=1, world=3, window=2)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not np.array_equal(a[0], stream_order(units, seed=3, epoch=6, rank=1, world=3, window=2)[0])
    ranks = [stream_order(units, seed=3, epoch=5, rank=r, world=3, window=2) for r in range(3)]
    assert len({len(s) for s, _ in ranks}) == 1  # equal lengths
    shards = [set(o.tolist()) for _, o in ranks]
    assert not (shards[0] & shards[1]) and not (shards[1] & shards[2]) and not (shards[0] & shards[2])
    one, owner = stream_order(units, seed=3, epoch=5, rank=0, world=1, window=3)
    assert sorted(one.tolist()) == list(range(120))
    # a window of 3 shards: any 30 consecutive samples (aligned) come from 3 shards
    assert all(len(set(owner[i:i + 30].tolist())) == 3 for i in range(0, 120, 30))
    with pytest.raises(ValueError, match="expected 0 <= rank < world, got 3/3"):
        stream_order(units, 0, 0, 3, 3)


def test_a_streamed_dataset_reads_the_same_batches_as_a_pulled_copy(tmp_path):
    from gwi.data.cache import StreamedDataset

    url = dataset(f"file://{tmp_path}/store", shards=6)
    whole = ShardedDataset(pull(url, tmp_path / "whole", progress=False))
    cache = ShardCache(url, 3 * unit_bytes(url), root=tmp_path / "cache", at_once=3)
    ds = StreamedDataset(cache)
    try:
        assert len(ds) == len(whole) and list(ds.families) == list(whole.families)
        assert list(ds.offsets) == list(whole.offsets)
        idx = np.random.default_rng(0).permutation(len(ds))[:7]
        flip = np.arange(7) % 2 == 0
        for dtype in (np.float16, np.float32):
            got, want = ds.batch(idx, dtype=dtype, flip=flip), whole.batch(idx, dtype=dtype, flip=flip)
            assert got[0].dtype == dtype and np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
        parts = ds.units(idx)
        assert sorted(np.concatenate(parts).tolist()) == sorted(idx.tolist())
        assert all(((ds.unit_of(p) == k) | (len(p) == 0)).all() for k, p in enumerate(parts))
        assert not cache.pins  # every shard a batch opened was released
    finally:
        cache.close()


def test_gwi_train_streams_a_dataset_larger_than_its_cache_limit(tmp_path):
    """Issue 25: with --cache-limit below the dataset's size, training reads it through the bounded
    cache (no whole pull), validates on a few shards' validation samples, and stays within the limit."""
    from gwi.config import TrainConfig
    from gwi.data.sync import cache_dir_for
    from gwi.training import train

    url = dataset(f"file://{tmp_path}/store", shards=10)
    limit = 7 * unit_bytes(url)  # a window of 4, one arriving, room for validation shards
    peak, stop = [0], threading.Event()
    stream_dir = cache_dir_for(url).with_name(cache_dir_for(url).name + "-stream-0")

    def watch():
        while not stop.is_set():
            if stream_dir.exists():
                peak[0] = max(peak[0], disk_bytes(stream_dir))
            time.sleep(0.005)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    logs = []
    try:
        cfg = TrainConfig(model="inversionnet", dataset=url, run=f"file://{tmp_path}/runs/s", preset="tiny", epochs=2,
                          batch_size=4, split="kfold:5:0", cache_limit=str(limit), heartbeat_s=0.5, ema=0)
        m = train(cfg, log=logs.append)
    finally:
        stop.set()
        t.join()
    assert m["steps"] > 0 and m["val_mae"] > 0
    assert any(line.startswith("streaming big (") for line in logs), logs
    assert any("streaming: validation on the" in line for line in logs), logs
    assert not cache_dir_for(url).exists()  # never pulled whole
    assert 0 < peak[0] <= limit, (peak, limit)


def test_a_streamed_run_killed_mid_epoch_resumes_exactly(tmp_path):
    """The stream's order is a pure function of (seed, epoch, rank, world) and the position in the
    epoch is the step: a crash mid-epoch and a resume end with the weights of a straight run."""
    import torch

    from gwi.config import TrainConfig
    from gwi.training import train

    url = dataset(f"file://{tmp_path}/store", shards=10)

    def cfg(run, **kw):
        return TrainConfig(model="inversionnet", dataset=url, run=f"file://{tmp_path}/{run}", preset="tiny", epochs=2,
                           batch_size=4, split="kfold:5:0", cache_limit=str(7 * unit_bytes(url)), heartbeat_s=0.5,
                           checkpoint_every=2, **kw)

    straight = train(cfg("a"), log=lambda *_: None)
    per_epoch = straight["steps"] // 2
    crash = per_epoch + 3  # inside the second epoch, a step after a checkpoint
    with pytest.raises(RuntimeError, match=f"injected fault at step {crash}"):
        train(cfg("b", fault_at_step=crash), log=lambda *_: None)
    resumed = train(cfg("b"), log=lambda *_: None)
    assert resumed["steps"] == straight["steps"] and resumed["resumed_from"]
    a, b = (torch.load(tmp_path / r / "checkpoints" / f"step-{straight['steps']}.pt", weights_only=True) for r in "ab")
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
