"""The heartbeat against real slow and unreachable stores: the final beat stays last, a take-over
never lets the old heartbeat write after the new one, and a store outage shows as ``waiting``."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import gwi.store
from gwi import progress
from gwi.store import split_url

from .conftest import free_port
from .faults import TcpProxy

HEARTBEAT = "s3://bkt/runs/x/attempts/1/progress.json"


class SlowS3(ThreadingHTTPServer):
    """Just enough of S3 for heartbeats: PUT stores an object when the request completes, as S3
    does. While ``hold_s`` is set a PUT is held that long first: a store that hangs mid-request."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.objects: dict[str, bytes] = {}
        self.hold_s = 0.0
        self.holding = threading.Event()  # a held PUT is in flight
        self.url = f"http://127.0.0.1:{self.server_port}"

    def beat(self, path: str = "/bkt/runs/x/attempts/1/progress.json") -> dict | None:
        data = self.objects.get(path)
        return json.loads(data) if data else None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_PUT(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        hold = self.server.hold_s
        if hold:
            self.server.holding.set()
            time.sleep(hold)
        self.server.objects[self.path] = body
        self.send_response(200)
        self.send_header("ETag", '"0"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_HEAD(self):  # the cancel flag: never there
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def slow_s3(monkeypatch):
    srv = SlowS3()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    for k, v in {"AWS_ENDPOINT_URL": srv.url, "AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t",
                 "AWS_DEFAULT_REGION": "us-east-1", "GWI_S3_READ_TIMEOUT_S": "30"}.items():
        monkeypatch.setenv(k, v)
    gwi.store._CLIENTS.clear()
    yield srv
    srv.shutdown()
    srv.server_close()
    gwi.store._CLIENTS.clear()


def wait_for(cond, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_beat_in_flight_when_the_run_ends_cannot_overwrite_the_final_state(slow_s3):
    hb = progress.Heartbeat([split_url(HEARTBEAT, patience=0)], 0.05, {"state": "running", "step": 4})
    hb.start()
    wait_for(slow_s3.beat, what="a first beat")
    slow_s3.hold_s = 1.0  # the next beat hangs in the store for a second, then lands
    assert slow_s3.holding.wait(5), "no beat reached the store"
    slow_s3.hold_s = 0.0  # the final beat goes straight through
    hb.finish("succeeded", step=5)
    end = slow_s3.beat()
    assert (end["state"], end["step"]) == ("succeeded", 5)
    time.sleep(1.0 + 10 * 0.05)  # the held beat has landed by now, and any beat after it
    last = slow_s3.beat()
    assert last["state"] == "succeeded", f"a late beat overwrote the final state: {last}"
    assert last["beat"] == end["beat"] and last["final"] is True, "the heartbeat wrote again after its final beat"
    assert not hb.is_alive() and hb.beat() is False


def test_take_over_waits_for_the_old_beat_in_flight_and_the_old_heartbeat_never_writes_again(slow_s3, monkeypatch):
    monkeypatch.setenv("GWI_HEARTBEAT", HEARTBEAT)
    monkeypatch.setenv("GWI_HEARTBEAT_S", "0.05")
    old = progress.start_process_heartbeat("train")
    try:
        wait_for(lambda: (slow_s3.beat() or {}).get("beat", 0) >= 2, what="process beats")
        old.advance(phase="built")
        slow_s3.hold_s = 1.0
        assert slow_s3.holding.wait(5)
        slow_s3.hold_s = 0.0
        t0 = time.monotonic()
        hb = progress.take_over([], 0.05, {"state": "starting", "run": "r"})
        assert time.monotonic() - t0 >= 0.5, "take_over did not wait for the old beat in flight"
        assert not old.is_alive() and old.beat() is False
        first = slow_s3.beat()
        assert first["run"] == "r" and first["beat"] > 2 and first["progress_seq"] >= 2, first
        time.sleep(0.5)
        hb.finish("succeeded")
        time.sleep(0.3)
        last = slow_s3.beat()
        assert (last["state"], last["run"], last["final"]) == ("succeeded", "r", True)
        assert last["beat"] > first["beat"] and "command" not in last  # only the new one wrote
        progress.end_process_heartbeat("succeeded")  # the CLI's own end: a no-op after the take-over
        assert slow_s3.beat() == last
    finally:
        progress.end_process_heartbeat("failed")


def test_a_store_outage_shows_as_waiting_in_the_beat_and_clears_after(tmp_path, monkeypatch):
    """A worker's store call waits out an unreachable S3 endpoint (a proxy that drops every connection):
    meanwhile the beat says ``waiting``, so a stalled step count is not taken for a hang."""
    for k, v in {"AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t", "AWS_DEFAULT_REGION": "us-east-1",
                 "GWI_S3_CONNECT_TIMEOUT_S": "1", "GWI_S3_READ_TIMEOUT_S": "1"}.items():
        monkeypatch.setenv(k, v)
    beats = tmp_path / "attempt" / "progress.json"
    hb = progress.Heartbeat([split_url(f"file://{beats}")], 0.05, {"state": "running"})
    hb.start()
    with TcpProxy("127.0.0.1", free_port()) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        gwi.store._CLIENTS.clear()
        proxy.set("drop")
        store, key = split_url("s3://bkt/runs/x/checkpoints/latest.json", patience=2.0)
        errors = []
        worker = threading.Thread(target=lambda: errors.append(_raised(store.get_bytes, key)))
        worker.start()
        seen = wait_for(lambda: json.loads(beats.read_text()).get("waiting") if beats.exists() else None,
                        what="a beat saying waiting")
        assert "unreachable" in seen
        worker.join(30)
    gwi.store._CLIENTS.clear()
    assert errors and type(errors[0]).__name__ == "StoreUnavailable"
    time.sleep(0.2)
    assert "waiting" not in json.loads(beats.read_text())
    hb.finish("failed")


def _raised(fn, *a):
    try:
        fn(*a)
    except Exception as e:  # noqa: BLE001 - the test looks at which
        return e
    return None
