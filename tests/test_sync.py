import json

import numpy as np
import pytest

from gwi.data import sync
from gwi.data.prep import prep_train
from gwi.data.shards import ShardedDataset
from gwi.errors import IntegrityError, StoreError
from gwi.store import FileStore, S3Store, open_store


@pytest.fixture
def s3_dataset(kaggle_dir, s3):
    root, arrays = kaggle_dir
    m = prep_train(root, s3, "kt", shard_size=2, progress=False)
    return f"{s3}/datasets/kt", m, arrays


def count_downloads(monkeypatch):
    calls = []
    orig = S3Store.get_file

    def spy(self, key, dest):
        calls.append(key)
        return orig(self, key, dest)

    monkeypatch.setattr(S3Store, "get_file", spy)
    return calls


def test_pull_verifies_and_caches(s3_dataset, monkeypatch, tmp_path):
    url, m, arrays = s3_dataset
    calls = count_downloads(monkeypatch)
    local = sync.pull(url, progress=False)
    assert local.is_relative_to(tmp_path / "gwi-cache")  # GWI_CACHE
    assert sorted(calls) == sorted(s["path"] for s in m["shards"])
    ds = ShardedDataset(local)
    x, y = ds.batch(np.flatnonzero(ds.families == "CurveFault_B"))
    np.testing.assert_allclose(y, arrays["CurveFault_B"][0][1], rtol=1e-3)
    # a second pull downloads nothing
    calls.clear()
    assert sync.pull(url, progress=False) == local
    assert calls == []


def test_pull_replaces_a_corrupt_cached_shard(s3_dataset, monkeypatch):
    url, m, _ = s3_dataset
    local = sync.pull(url, progress=False)
    victim = local / m["shards"][0]["path"]
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    calls = count_downloads(monkeypatch)
    sync.pull(url, progress=False)
    assert calls == [m["shards"][0]["path"]]
    assert sync.sha256_file(victim) == m["shards"][0]["sha256"]


def test_interrupted_pull_leaves_nothing_that_looks_complete(s3_dataset, monkeypatch):
    url, m, _ = s3_dataset
    orig = S3Store.get_file
    n = {"calls": 0}

    def flaky(self, key, dest):
        n["calls"] += 1
        if n["calls"] == 3:
            raise StoreError("connection reset (simulated)")
        return orig(self, key, dest)

    monkeypatch.setattr(S3Store, "get_file", flaky)
    with pytest.raises(StoreError, match="simulated"):
        sync.pull(url, workers=1, progress=False)
    local = sync.cache_dir_for(open_store(url).url)
    assert not (local / "manifest.json").exists()
    assert not [p for p in local.rglob("*") if p.name.endswith((".download", ".partial"))]
    have = {p.relative_to(local).as_posix() for p in (local / "shards").rglob("*.npy")}
    assert 2 <= len(have) < len(m["shards"])
    # the next pull completes, fetching only what is missing
    monkeypatch.setattr(S3Store, "get_file", orig)
    calls = count_downloads(monkeypatch)
    sync.pull(url, progress=False)
    assert sorted(calls) == sorted(s["path"] for s in m["shards"] if s["path"] not in have)
    assert len(ShardedDataset(local)) == 7


def test_corrupt_store_shard_is_reported_by_verify_and_refused_by_pull(s3_dataset):
    url, m, _ = s3_dataset
    manifest, problems = sync.verify(url, progress=False)
    assert problems == []
    st = open_store(url)
    bad = m["shards"][1]["path"]
    data = bytearray(st.get_bytes(bad))
    data[200] ^= 0x01
    st.put_bytes(bad, bytes(data))
    st.delete(m["shards"][2]["path"])
    _, problems = sync.verify(url, progress=False)
    assert [(p.path.rsplit("/", 1)[-1], p.what.split(" ")[0]) for p in problems] == sorted(
        [(bad.rsplit("/", 1)[-1], "sha256"), (m["shards"][2]["path"].rsplit("/", 1)[-1], "missing")]
    )
    with pytest.raises((IntegrityError, StoreError)):
        sync.pull(url, progress=False)
    local = sync.cache_dir_for(st.url)
    assert not (local / bad).exists()


def test_verify_reports_size_mismatch_on_a_folder_store(kaggle_dir, tmp_path):
    root, _ = kaggle_dir
    m = prep_train(root, f"file://{tmp_path}/s", "kt", progress=False)
    p = tmp_path / "s" / "datasets" / "kt" / m["shards"][0]["path"]
    p.write_bytes(p.read_bytes()[:-10])
    _, problems = sync.verify(f"file://{tmp_path}/s/datasets/kt", progress=False)
    assert len(problems) == 1 and "size" in problems[0].what


def test_push_between_stores_roundtrips(kaggle_dir, s3, tmp_path, monkeypatch):
    root, _ = kaggle_dir
    m = prep_train(root, f"file://{tmp_path}/s", "kt", progress=False)
    src = tmp_path / "s" / "datasets" / "kt"
    sync.push(src, f"{s3}/mirror/datasets/kt", progress=False)
    assert sync.verify(f"{s3}/mirror/datasets/kt", progress=False)[1] == []
    # pushing again sends no shard
    sent = []
    orig = S3Store.put_file
    monkeypatch.setattr(S3Store, "put_file", lambda self, s, k, move=False: (sent.append(k), orig(self, s, k, move=move)))
    sync.push(src, f"{s3}/mirror/datasets/kt", progress=False)
    assert sent == []
    # and S3 -> folder
    sync.push(f"{s3}/mirror/datasets/kt", f"file://{tmp_path}/copy/datasets/kt", progress=False)
    assert json.loads((tmp_path / "copy/datasets/kt/manifest.json").read_text())["build"] == m["build"]
    assert sync.verify(f"file://{tmp_path}/copy/datasets/kt", progress=False)[1] == []


def test_push_refuses_a_corrupt_source(kaggle_dir, s3, tmp_path):
    root, _ = kaggle_dir
    m = prep_train(root, f"file://{tmp_path}/s", "kt", progress=False)
    p = tmp_path / "s" / "datasets" / "kt" / m["shards"][0]["path"]
    data = bytearray(p.read_bytes())
    data[300] ^= 1
    p.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256 does not match"):
        sync.push(tmp_path / "s" / "datasets" / "kt", f"{s3}/m/datasets/kt", progress=False)
    assert not open_store(f"{s3}/m/datasets/kt").exists("manifest.json")


def test_pull_of_a_missing_dataset_is_a_clear_error(s3):
    with pytest.raises(StoreError, match=rf"no such object: {s3}/datasets/nope/manifest.json"):
        sync.pull(f"{s3}/datasets/nope", progress=False)
    assert isinstance(open_store(s3), S3Store) and not isinstance(open_store(s3), FileStore)


@pytest.mark.parametrize("field", ["families", "name", "num_samples", "normalisation"])
def test_a_manifest_without_a_field_is_one_line_in_gwi_data_info(s3_dataset, field):
    """Issue 27: a manifest without families gave a KeyError traceback in gwi data info."""
    import subprocess
    import sys

    from gwi.store import open_store

    url, m, _ = s3_dataset
    bad = {k: v for k, v in m.items() if k != field}
    open_store(url).put_bytes("manifest.json", json.dumps(bad).encode())
    r = subprocess.run([sys.executable, "-m", "gwi", "data", "info", url], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip() == f"gwi: error: {url}/manifest.json: field '{field}' should be a " \
                               f"{type(m[field]).__name__}, got missing"


def test_pull_refuses_a_cache_folder_that_leads_outside(s3_dataset, tmp_path):
    """A symlink planted in the cache (here: the shards folder) must not carry downloads elsewhere."""
    from gwi.errors import DataError

    url, m, _ = s3_dataset
    local = sync.pull(url, progress=False)
    outside = tmp_path / "outside"
    (local / "shards").rename(outside)
    (local / "shards").symlink_to(outside)
    with pytest.raises(DataError, match=rf"{url}/manifest.json: shard path '{m['shards'][0]['path']}' would leave "
                                        "the cache folder"):
        sync.pull(url, progress=False)


def test_pull_reports_progress_and_a_lock_beside_the_folder(s3_dataset):
    url, m, _ = s3_dataset
    seen, logs = [], []
    local = sync.pull(url, progress=False, workers=2, on_progress=lambda d, t: seen.append((d, t)), log=logs.append)
    n = len(m["shards"])
    assert sorted(seen) == [(i, n) for i in range(1, n + 1)] and logs == [f"pulling kt: {n} of {n} shards to fetch"]
    assert local.with_name(local.name + ".lock").is_file()
    seen.clear()
    sync.pull(url, progress=False, on_progress=lambda d, t: seen.append((d, t)), log=logs.append)
    assert seen == [] and len(logs) == 1  # all verified: nothing fetched, nothing said
