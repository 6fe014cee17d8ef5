"""A store outage, injected for real (moto behind tests/faults.TcpProxy), is waited out within the
store's patience and then reported as StoreUnavailable (exit 75): never taken for a missing or a
corrupt object. And two pulls of one dataset on one machine share the work instead of racing."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import gwi.store
from gwi.data import sync
from gwi.data.prep import prep_train
from gwi.data.shards import ShardedDataset
from gwi.errors import GwiError, StoreError, StoreUnavailable
from gwi.runs import Run
from gwi.store import open_store

from .faults import TcpProxy


def later(seconds: float, fn) -> threading.Timer:
    t = threading.Timer(seconds, fn)
    t.daemon = True
    t.start()
    return t


# -- the fault tool itself -------------------------------------------------------------------------


@pytest.fixture
def echo_server():
    srv = socket.create_server(("127.0.0.1", 0))

    def echo(c: socket.socket) -> None:
        with c:
            try:
                while data := c.recv(4096):
                    c.sendall(data)
            except OSError:  # the proxy reset it: that is the test
                pass

    def serve():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=echo, args=(c,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield srv.getsockname()[1]
    srv.close()


def test_tcp_proxy_modes_reach_open_connections(echo_server):
    with TcpProxy("127.0.0.1", echo_server) as proxy:
        a = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
        a.sendall(b"hi")
        assert a.recv(10) == b"hi"
        proxy.set("stall")  # the open connection goes silent
        a.sendall(b"x")
        a.settimeout(0.3)
        with pytest.raises(socket.timeout):
            a.recv(10)
        proxy.set("reset")  # ...and then is reset
        a.settimeout(2)
        with pytest.raises(ConnectionResetError):
            a.recv(10)
        proxy.set("drop")  # a new one is closed at once
        b = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
        assert b.recv(10) == b""
        proxy.set("pass")
        c = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
        c.sendall(b"ok")
        assert c.recv(10) == b"ok"
        proxy.set_when(b"boom", "drop")
        c.sendall(b"a boom")
        assert c.recv(10) == b"" and proxy.mode == "drop"
        for s in (a, b, c):
            s.close()
        with pytest.raises(ValueError, match="expected one of pass, drop, reset, stall, got 'flaky'"):
            proxy.set("flaky")


# -- (a) a store call waits out an outage, bounded --------------------------------------------------


def test_patience_is_a_deadline_on_the_whole_call_even_when_the_store_never_answers(proxied):
    """Issue 27: an endpoint that accepts and never answers took GWI_STORE_PATIENCE_S=5 six minutes
    (60 s read timeout x 3 botocore attempts, patience counted only from the first failure)."""
    url, proxy = proxied
    proxy.set("stall")
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "gwi", "data", "info", f"{url}/datasets/x"], capture_output=True,
                       text=True, timeout=120, env={**os.environ, "GWI_STORE_PATIENCE_S": "5"})
    took = time.monotonic() - t0
    assert r.returncode == 75 and "Traceback" not in r.stderr, r.stderr
    assert "GWI_STORE_PATIENCE_S=5" in r.stderr.splitlines()[-1]
    assert took < 5 + 2.5 + 4, f"took {took:.1f} s"  # the patience, the try in flight, the interpreter's start
    assert gwi.store._client_limits(5.0) == (1.25, 1.25, 1) and gwi.store._client_limits(300.0) == (5.0, 60.0, 2)


def test_a_wait_that_ends_in_an_error_is_not_left_waiting(proxied):
    """The store comes back and answers "no such object": the call fails, and this process no longer
    says it waits (a wait left registered showed as ``waiting`` in every later heartbeat and hid the
    next outage from the hook)."""
    url, proxy = proxied
    st = open_store(url, patience=10)
    seen = []
    prev = gwi.store.set_wait_hook(seen.append)
    try:
        proxy.set("drop")
        later(1.5, lambda: proxy.set("pass"))
        with pytest.raises(StoreError, match="no such object"):
            st.get_bytes("missing")
    finally:
        gwi.store.set_wait_hook(prev)
    assert seen and seen[0].startswith(f"store {url} unreachable since ") and seen[-1] is None
    assert not gwi.store._waits


def test_a_store_call_waits_out_a_short_outage(proxied):
    url, proxy = proxied
    st = open_store(url, patience=10)
    st.put_bytes("k", b"v")
    seen = []
    prev = gwi.store.set_wait_hook(seen.append)
    try:
        proxy.set("drop")
        later(3, lambda: proxy.set("pass"))
        t0 = time.monotonic()
        assert st.child("").get_bytes("k") == b"v"  # child() keeps the patience
        assert time.monotonic() - t0 >= 2.5
    finally:
        gwi.store.set_wait_hook(prev)
    assert seen and seen[0].startswith(f"store {url} unreachable since ") and seen[-1] is None


def test_the_wait_is_bounded_by_patience(proxied):
    url, proxy = proxied
    proxy.set("drop")
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable, match=r"still unavailable after waiting 1 s; GWI_STORE_PATIENCE_S=1\)") as e:
        open_store(url, patience=1).put_bytes("k", b"v")
    assert time.monotonic() - t0 < 8 and e.value.exit_code == 75
    # patience from the environment; 0 is the scheduler's "report at once"
    os.environ["GWI_STORE_PATIENCE_S"] = "0"
    try:
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable, match="failed"):
            open_store(url).get_bytes("k")
        assert time.monotonic() - t0 < 3
    finally:
        del os.environ["GWI_STORE_PATIENCE_S"]


def test_a_stalled_store_times_out_and_a_reset_one_is_unavailable(proxied, monkeypatch):
    url, proxy = proxied
    monkeypatch.setenv("GWI_S3_READ_TIMEOUT_S", "0.5")
    st = open_store(url, patience=0)
    st.put_bytes("k", b"v")
    for mode in ("stall", "reset"):
        proxy.set(mode)
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable):
            st.get_bytes("k")
        assert time.monotonic() - t0 < 6, mode
        proxy.set("pass")
        assert st.get_bytes("k") == b"v"


def test_a_stream_cut_midway_resumes_where_it_stopped(proxied, tmp_path):
    url, proxy = proxied
    st = open_store(url, patience=10)
    data = os.urandom(24 * 1024 * 1024)
    st.put_bytes("big", data)
    chunks = st.iter_chunks("big", 1024 * 1024)
    got = [next(chunks)]
    proxy.set("reset")  # the body is still coming: the connection dies under the reader
    later(1, lambda: proxy.set("pass"))
    got += list(chunks)
    assert b"".join(got) == data


# -- (b) resume: unavailable is not corrupt -------------------------------------------------------


def ckpt(step: int) -> dict:
    import torch

    return {"epoch": step, "step": step, "w": torch.arange(4.0) * step}


def test_load_latest_during_an_outage_raises_instead_of_falling_back(proxied):
    url, proxy = proxied
    run = Run(f"{url}/runs/r", patience=1)
    for step in (2, 4):
        run.publish_checkpoint(ckpt(step), step, keep=3)
    logs: list[str] = []
    # the pointer is read, then the store goes down as the checkpoint is fetched
    proxy.set_when(b"checkpoints/step-", "drop")
    with pytest.raises(StoreUnavailable, match="checkpoints/step-4.pt"):
        run.load_latest(logs.append)
    assert not any("previous" in m or "scratch" in m for m in logs), logs
    proxy.set("pass")
    got, entry = run.load_latest(logs.append)
    assert got["step"] == 4 and "fallback" not in entry
    # a corrupt newest checkpoint is a reason to step back, and the entry says so
    st = open_store(f"{url}/runs/r")
    st.put_bytes(entry["path"], b"x" * entry["bytes"])
    got, entry = run.load_latest(logs.append)
    assert got["step"] == 2 and entry["fallback"] == "checkpoints/step-4.pt is truncated or corrupt (size/sha256 mismatch)"


def test_publish_under_an_outage_leaves_the_old_pointer_valid(proxied):
    url, proxy = proxied
    run = Run(f"{url}/runs/r", patience=0.5)
    run.publish_checkpoint(ckpt(2), 2, keep=2)
    bucket = url.removeprefix("s3://")
    proxy.set_when(f"PUT /{bucket}/runs/r/checkpoints/latest.json".encode(), "drop")  # blob done, pointer not
    with pytest.raises(StoreUnavailable):
        run.publish_checkpoint(ckpt(4), 4, keep=2)
    proxy.set("pass")
    assert run.pointer()["latest"]["step"] == 2
    got, entry = run.load_latest(lambda _: None)
    assert got["step"] == 2 and "fallback" not in entry
    run.publish_checkpoint(ckpt(6), 6, keep=2)  # the orphaned blob is pruned by the next publish
    assert sorted(run.store.list("checkpoints")) == ["checkpoints/latest.json", "checkpoints/step-2.pt",
                                                     "checkpoints/step-6.pt"]


# -- (c) two pulls of one dataset on one machine ---------------------------------------------------

PULLER = """
import os, signal, sys
from gwi.data import sync
url, stop_at = sys.argv[1], int(sys.argv[2])
def advanced(done, total):
    print(f"verified {done}/{total}", flush=True)
    if done == stop_at:
        os.kill(os.getpid(), signal.SIGSTOP)  # a real stop, at a known point of the pull
sync.pull(url, workers=1, progress=False, on_progress=advanced, log=lambda m: print(m, flush=True))
print("pulled", flush=True)
"""


class Puller:
    """``python -c PULLER`` in its own process, its stdout read line by line."""

    def __init__(self, url: str, stop_at: int = -1, env: dict | None = None):
        self.lines: list[str] = []
        self.proc = subprocess.Popen([sys.executable, "-c", PULLER, url, str(stop_at)], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})})
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True).start()

    def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert time.monotonic() < deadline and self.proc.poll() is None, (text, self.lines)
            time.sleep(0.05)

    def stopped(self) -> bool:
        return Path(f"/proc/{self.proc.pid}/stat").read_text().split(")")[-1].split()[0] == "T"


def temp_files(root: Path) -> list[str]:
    return [p.name for p in root.parent.rglob("*") if p.name.endswith((".download", ".partial", ".tmp"))]


@pytest.fixture
def s3_dataset(kaggle_dir, s3):
    root, _ = kaggle_dir
    m = prep_train(root, s3, "kt", shard_size=2, progress=False)
    return f"{s3}/datasets/kt", m


def test_a_second_pull_waits_for_the_first_and_reuses_its_work(s3_dataset, monkeypatch):
    url, m = s3_dataset
    n = len(m["shards"])
    first = Puller(url, stop_at=1)
    first.wait_for("verified 1/")
    deadline = time.monotonic() + 10
    while not first.stopped():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    second = Puller(url)
    second.wait_for(f"waiting for another pull of {url} (pid {first.proc.pid})")
    # a third that cannot wait long says who holds the lock
    monkeypatch.setenv("GWI_PULL_LOCK_TIMEOUT_S", "0.3")
    with pytest.raises(GwiError, match=rf"another pull \(pid {first.proc.pid}\) still holds .*kt-\w+\.lock after 0.3 s"):
        sync.pull(url, progress=False, log=lambda _: None)
    first.proc.send_signal(signal.SIGCONT)
    assert first.proc.wait(60) == 0 and second.proc.wait(60) == 0
    assert f"pulling kt: {n} of {n} shards to fetch" in "".join(first.lines)
    assert "pulled" in "".join(second.lines) and not any("verified" in s or "pulling" in s for s in second.lines), \
        second.lines
    local = sync.cache_dir_for(url)
    assert len(ShardedDataset(local)) == 7 and temp_files(local) == []
    assert len(json.loads((local / sync.VERIFIED).read_text())) == n


def test_a_killed_pull_leaves_nothing_that_looks_complete(s3_dataset):
    url, m = s3_dataset
    n = len(m["shards"])
    victim = Puller(url, stop_at=2)
    victim.wait_for("verified 2/")
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait(30)
    local = sync.cache_dir_for(url)
    assert not (local / "manifest.json").exists()
    logs, seen = [], []
    sync.pull(url, progress=False, log=logs.append, on_progress=lambda d, t: seen.append((d, t)))
    assert logs == [f"pulling kt: {n - 2} of {n} shards to fetch"]  # the two it verified are reused
    assert seen[-1] == (n, n) and len(ShardedDataset(local)) == 7 and temp_files(local) == []


# -- (d) gwi train cannot reach its checkpoint: exit 75, not a restart from scratch ----------------


def test_train_resume_during_an_outage_exits_75_and_keeps_its_steps(proxied, kaggle_dir, tmp_path):
    from gwi.config import TrainConfig
    from gwi.training import train

    url, proxy = proxied
    root, _ = kaggle_dir
    prep_train(root, f"file://{tmp_path}/st", "kt", shard_size=2, progress=False)
    dataset, run_url = f"file://{tmp_path}/st/datasets/kt", f"{url}/runs/r"
    base = dict(model="inversionnet", preset="tiny", dataset=dataset, run=run_url, batch_size=2, lr=2e-3,
                checkpoint_every=1, heartbeat_s=0.5, seed=0, device="cpu")
    train(TrainConfig(**base, epochs=1), log=lambda *_: None)
    step = Run(run_url).latest_step()
    assert step and step > 0
    proxy.set_when(b"checkpoints/step-", "drop")
    r = subprocess.run(
        [sys.executable, "-m", "gwi", "train", "--model", "inversionnet", "--preset", "tiny", "--dataset", dataset,
         "--run", run_url, "--epochs", "2", "--batch-size", "2", "--checkpoint-every", "1", "--heartbeat-s", "0.5",
         "--device", "cpu"],
        capture_output=True, text=True, timeout=240, env={**os.environ, "GWI_STORE_PATIENCE_S": "2"},
    )
    out = r.stdout + r.stderr
    assert r.returncode == 75, out[-3000:]
    assert "starting from scratch" not in out and "trying the previous" not in out, out[-3000:]
    assert "still unavailable after waiting" in out
    proxy.set("pass")
    assert Run(run_url).latest_step() == step
