import os

import boto3
import pytest

import gwi.store
from gwi.errors import StoreError
from gwi.store import FileStore, S3Store, open_store

from .conftest import start_moto


def roundtrip(store, tmp_path):
    store.put_bytes("a/b/one.txt", b"hello")
    assert store.get_bytes("a/b/one.txt") == b"hello"
    assert store.exists("a/b/one.txt") and not store.exists("a/b/two.txt")
    assert store.size("a/b/one.txt") == 5
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(1000))
    store.put_file(src, "a/c/two.bin")
    store.get_file("a/c/two.bin", tmp_path / "dl" / "two.bin")
    assert (tmp_path / "dl" / "two.bin").read_bytes() == src.read_bytes()
    assert b"".join(store.iter_chunks("a/c/two.bin", 300)) == src.read_bytes()
    assert store.list("a") == ["a/b/one.txt", "a/c/two.bin"]
    assert store.child("a").list("b") == ["b/one.txt"]
    store.put_bytes("ab/x", b"1")
    assert store.list("a") == ["a/b/one.txt", "a/c/two.bin"], "prefix 'a' must not match 'ab/'"
    store.delete("a/b/one.txt")
    store.delete("a/b/one.txt")  # missing is fine
    assert not store.exists("a/b/one.txt")
    assert store.delete_prefix("a") == 1 and store.list("a") == []
    with pytest.raises(StoreError, match="no such object"):
        store.get_bytes("nope")
    with pytest.raises(StoreError, match="no such object"):
        store.get_file("nope", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_file_store_roundtrip(tmp_path):
    store = open_store(f"file://{tmp_path}/st")
    assert isinstance(store, FileStore)
    roundtrip(store, tmp_path)
    leftovers = [p for p in (tmp_path / "st").rglob("*") if p.name.endswith(".partial")]
    assert leftovers == []


def test_file_store_rejects_escaping_keys(tmp_path):
    with pytest.raises(StoreError, match="escapes"):
        FileStore(tmp_path).put_bytes("../outside", b"x")


def test_file_store_move_consumes_source(tmp_path):
    st = FileStore(tmp_path / "st")
    src = tmp_path / "f.bin"
    src.write_bytes(b"abc")
    st.put_file(src, "k/f.bin", move=True)
    assert not src.exists() and st.get_bytes("k/f.bin") == b"abc"


def test_url_forms(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert open_store("file://rel/dir").root == tmp_path / "rel" / "dir"
    assert open_store(str(tmp_path / "p")).root == tmp_path / "p"
    s = open_store("s3://bucket/some/prefix")
    assert isinstance(s, S3Store) and s.bucket == "bucket" and s.prefix == "some/prefix"
    assert s.child("datasets/x").url == "s3://bucket/some/prefix/datasets/x"
    with pytest.raises(StoreError, match=r"unsupported store URL scheme 'gs://'"):
        open_store("gs://bucket")
    monkeypatch.setenv("GWI_HOME", str(tmp_path / "h"))
    assert open_store().url == f"file://{tmp_path}/h/store"


def test_s3_store_roundtrip_over_http(s3, tmp_path):
    roundtrip(open_store(s3 + "/prefix"), tmp_path)


def test_s3_large_objects_go_multipart(s3, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(70 * 1024 * 1024))
    st = open_store(s3)
    st.put_file(big, "big.bin")
    head = st.client.head_object(Bucket=st.bucket, Key="big.bin")
    assert head["ContentLength"] == big.stat().st_size
    assert head["ETag"].strip('"').endswith("-3"), "expected a 3-part multipart upload (32 MiB parts)"
    st.get_file("big.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == big.read_bytes()


def test_s3_missing_bucket_is_a_clear_error(s3, tmp_path):
    st = open_store("s3://no-such-bucket-gwi/x")
    with pytest.raises(StoreError, match="bucket 'no-such-bucket-gwi' does not exist"):
        st.get_bytes("manifest.json")
    with pytest.raises(StoreError, match="bucket 'no-such-bucket-gwi' does not exist"):
        st.put_bytes("k", b"v")
    with pytest.raises(StoreError, match="bucket 'no-such-bucket-gwi' does not exist"):
        st.size("k")


def test_s3_missing_key_names_the_url(s3):
    with pytest.raises(StoreError, match=rf"no such object: {s3}/a/missing.json"):
        open_store(s3 + "/a").get_bytes("missing.json")


def test_s3_access_denied_is_a_clear_error(monkeypatch):
    """A moto server that authenticates every request rejects unknown keys with 403."""
    proc, url = start_moto({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNKEY000000")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        gwi.store._CLIENTS.clear()
        with pytest.raises(StoreError, match="access denied"):
            open_store("s3://somebucket").put_bytes("k", b"v")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        gwi.store._CLIENTS.clear()


def test_s3_unreachable_endpoint(monkeypatch):
    from .conftest import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    gwi.store._CLIENTS.clear()
    try:
        with pytest.raises(StoreError, match="cannot reach the S3 endpoint"):
            open_store("s3://b").get_bytes("k")
    finally:
        gwi.store._CLIENTS.clear()


def test_boto3_client_sees_the_same_objects(s3):
    """What gwi writes is plain S3: another client reads it back."""
    open_store(s3 + "/p").put_bytes("q/r.txt", b"data")
    c = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1")
    body = c.get_object(Bucket=s3[5:], Key="p/q/r.txt")["Body"].read()
    assert body == b"data"
