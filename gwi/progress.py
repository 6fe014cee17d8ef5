"""Heartbeats: the one way every platform reports how a run is doing.

A process writes a small ``progress.json`` to the store every few seconds: its state, step, epoch,
val MAE, ETA, host and pid, and the wall time of the beat. The scheduler reads it to tell a live
attempt from a lost one; ``gwi status`` shows it.

Where it goes: a training run always writes ``runs/RUN/progress.json``; a process launched by the
scheduler is also given ``GWI_HEARTBEAT`` (the store URL of its attempt's ``progress.json``) and
``GWI_ATTEMPT``. ``gwi`` starts a process-wide heartbeat to that URL as soon as it starts, before
any data is pulled, so a slow pull is not mistaken for a stall; ``gwi train`` then takes it over and
writes its richer snapshot to both places.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time

from .runs import CANCEL
from .store import Store, split_url

ENV_URL = "GWI_HEARTBEAT"
ENV_ATTEMPT = "GWI_ATTEMPT"
ENV_INTERVAL = "GWI_HEARTBEAT_S"


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Heartbeat(threading.Thread):
    """Writes a snapshot to every target every ``interval`` seconds; the owner keeps it current."""

    def __init__(self, targets: list[tuple[Store, str]], interval: float, base: dict,
                 cancel: tuple[Store, str] | None = None):
        super().__init__(daemon=True, name="gwi-heartbeat")
        self.targets, self.interval = list(targets), interval
        self.cancel = cancel  # a flag object the scheduler leaves where it cannot signal (Colab)
        self.lock = threading.Lock()
        self.state = dict(base)
        self.halt = threading.Event()
        self.errors = 0
        self.beats = 0

    def update(self, **kw) -> None:
        with self.lock:
            self.state.update(kw)

    def snapshot(self) -> dict:
        with self.lock:
            return dict(self.state)

    def beat(self) -> None:
        with self.lock:
            self.beats += 1
            snap = dict(self.state, time=now_iso(), unix_time=time.time(), beat=self.beats)
        data = json.dumps(snap, indent=1, default=str).encode()
        for store, key in self.targets:
            try:
                store.put_bytes(key, data)
            except Exception:  # noqa: BLE001 - a missed beat must not kill the work; the next one retries
                self.errors += 1

    def run(self) -> None:  # noqa: D401 - Thread API
        while not self.halt.wait(self.interval):
            self.beat()
            if self.cancel is not None and self._cancelled():
                import signal
                import sys

                print("gwi: cancelled by the scheduler (cancel flag in the store); stopping", file=sys.stderr, flush=True)
                self.finish("cancelled")
                os.kill(os.getpid(), signal.SIGTERM)
                return

    def _cancelled(self) -> bool:
        store, key = self.cancel
        try:
            return store.exists(key)
        except Exception:  # noqa: BLE001 - an unreachable store is not a cancel
            return False

    def stop(self) -> None:
        self.halt.set()

    def finish(self, state: str, **kw) -> None:
        """Stop beating and write the final state once."""
        self.stop()
        self.update(state=state, **kw)
        self.beat()


_process: Heartbeat | None = None


def attempt_target() -> tuple[Store, str] | None:
    url = os.environ.get(ENV_URL)
    return split_url(url) if url else None


def cancel_flag() -> tuple[Store, str] | None:
    """The cancel flag beside the attempt's heartbeat."""
    target = attempt_target()
    return (target[0], CANCEL) if target else None


def interval_from_env(default: float = 20.0) -> float:
    try:
        return max(0.05, float(os.environ.get(ENV_INTERVAL, default)))
    except ValueError:
        return default


def start_process_heartbeat(command: str) -> Heartbeat | None:
    """Begin beating to ``$GWI_HEARTBEAT`` for this process (no-op without it)."""
    global _process
    target = attempt_target()
    if target is None or _process is not None:
        return _process
    _process = Heartbeat([target], interval_from_env(), {
        "state": "starting", "command": command, "attempt": os.environ.get(ENV_ATTEMPT),
        "host": socket.gethostname(), "pid": os.getpid(), "started": now_iso()}, cancel=cancel_flag())
    _process.beat()
    _process.start()
    return _process


def update(**kw) -> None:
    """Merge fields into this process's heartbeat, if it has one (synth and predict report counts)."""
    if _process is not None:
        _process.update(**kw)


def take_over() -> dict:
    """Stop the process heartbeat so a richer one (training's) can write the attempt's file."""
    global _process
    if _process is None:
        return {}
    _process.stop()
    snap = _process.snapshot()
    _process = None
    return snap


def end_process_heartbeat(state: str, **kw) -> None:
    global _process
    if _process is not None:
        _process.finish(state, **kw)
        _process = None
