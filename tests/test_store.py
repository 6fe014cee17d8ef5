import os

import boto3
import pytest

import gwi.store
from gwi.errors import EXIT_STORE_UNAVAILABLE, StoreError, StoreUnavailable
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
        # patience 0: the scheduler's way, reported at once (waiting is tested in test_outage.py)
        with pytest.raises(StoreUnavailable, match="cannot reach the S3 endpoint") as e:
            open_store("s3://b", patience=0).get_bytes("k")
        assert e.value.exit_code == EXIT_STORE_UNAVAILABLE == 75
    finally:
        gwi.store._CLIENTS.clear()


def test_boto3_client_sees_the_same_objects(s3):
    """What gwi writes is plain S3: another client reads it back."""
    open_store(s3 + "/p").put_bytes("q/r.txt", b"data")
    c = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1")
    body = c.get_object(Bucket=s3[5:], Key="p/q/r.txt")["Body"].read()
    assert body == b"data"


@pytest.fixture
def fake_s3():
    """An S3 endpoint on 127.0.0.1 that answers every request with ``answer["status"]`` and the S3
    error ``answer["code"]``, counting requests."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    answer = {"status": 500, "code": "InternalError", "requests": 0}

    class Handler(BaseHTTPRequestHandler):
        def _reply(self):
            if self.command == "HEAD" and self.path.strip("/").count("/") == 0:  # HeadBucket: it exists
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            answer["requests"] += 1
            if self.headers.get("Expect") == "100-continue":
                self.close_connection = True  # as S3 does: refuse before the body is sent
            else:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = (f"<?xml version='1.0'?><Error><Code>{answer['code']}</Code>"
                    f"<Message>fake {answer['code']}</Message></Error>").encode()
            self.send_response(answer["status"])
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _reply

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", answer
    srv.shutdown()
    srv.server_close()


def test_5xx_and_throttling_are_unavailable_refusals_are_not(fake_s3, monkeypatch):
    url, answer = fake_s3
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setattr(gwi.store, "_CLIENTS", {})
    for status, code in ((500, "InternalError"), (503, "SlowDown"), (429, "TooManyRequests")):
        answer.update(status=status, code=code, requests=0)
        with pytest.raises(StoreUnavailable, match=rf"S3 busy or failing \(HTTP {status}, {code}"):
            open_store("s3://b", patience=0).get_bytes("k")
        # no patience (heartbeats, the scheduler's reads): one try, so a failing store costs a beat, not a wait
        assert answer["requests"] == 1, code
    answer.update(status=503, code="SlowDown", requests=0)
    with pytest.raises(StoreUnavailable):
        open_store("s3://b", patience=0.01).get_bytes("k")
    # a short patience leaves no room for botocore's own attempts (issue 27: patience is a deadline)
    assert answer["requests"] == 1
    answer.update(status=500, code="InternalError", requests=0)
    with pytest.raises(StoreUnavailable, match=r"still unavailable after waiting 1 s"):
        open_store("s3://b", patience=1).put_bytes("k", b"v")
    assert answer["requests"] > 1, "the store's own wait tried again after botocore gave up"
    answer.update(status=403, code="AccessDenied", requests=0)
    with pytest.raises(StoreError, match="access denied") as e:
        open_store("s3://b", patience=30).get_bytes("k")
    assert not isinstance(e.value, StoreUnavailable) and answer["requests"] == 1
    answer.update(status=404, code="NoSuchKey", requests=0)
    st = open_store("s3://b", patience=30)
    assert not st.exists("k")
    with pytest.raises(StoreError, match="no such object: s3://b/k") as e:
        st.get_bytes("k")
    assert not isinstance(e.value, StoreUnavailable)


def test_a_full_local_disk_is_a_store_error_naming_the_path(tmp_path):
    """A real write refused by the kernel (a file-size limit: EFBIG, as ENOSPC would be)."""
    import subprocess
    import sys

    code = (
        "import resource, signal, sys\n"
        "from gwi.errors import StoreUnavailable\n"
        "from gwi.store import FileStore\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
        "st = FileStore(sys.argv[1])\n"
        "for op in (lambda: st.put_bytes('a/big.bin', b'x' * 5000), lambda: st.put_file(sys.argv[2], 'a/f.bin')):\n"
        "    try:\n"
        "        op()\n"
        "    except StoreUnavailable:\n"
        "        print('unavailable?')\n"
        "    except Exception as e:\n"
        "        print(type(e).__name__, e)\n"
    )
    src = tmp_path / "src.bin"
    src.write_bytes(b"y" * 5000)
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "st"), str(src)], capture_output=True,
                       text=True, timeout=60)
    assert r.stdout.splitlines() == [
        f"StoreError write {tmp_path}/st/a/big.bin: File too large (EFBIG)",
        f"StoreError write {tmp_path}/st/a/f.bin: File too large (EFBIG)",
    ], r.stdout + r.stderr
    assert [p.name for p in (tmp_path / "st").rglob("*") if p.is_file()] == []
