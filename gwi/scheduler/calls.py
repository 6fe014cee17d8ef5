"""Calls with a deadline: what the loop asks a platform (or a store) never blocks the pass.

Each *lane* (a platform, or the store the heartbeats are read from) has a few daemon worker threads;
the loop submits a call and waits for it at most ``timeout_s``. A call that does not answer in time
is reported as a transient :class:`~gwi.adapters.base.PlatformError` ("lam API did not answer within
30 s"), so the judge leaves the attempt to its heartbeat, and the lane is *stuck* until that call
returns: later calls fail at once instead of piling up on a hung API. A call whose key (an attempt
id) still has an earlier call running is refused the same way, so one attempt is never queried,
launched or cancelled twice at once.

Daemon threads, not a ThreadPoolExecutor: its workers are joined at exit, so a call hung forever
would keep ``gwi watch`` from exiting. Only the calls run on these threads; SQLite stays on the loop's.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future, wait

from ..adapters.base import PlatformError

DEFAULT_TIMEOUT_S = 30.0
WORKERS = 4  # calls at once per lane: enough for a pass, few enough for a rate-limited API


class _Lane:
    def __init__(self, name: str, workers: int):
        self.name, self.workers = name, workers
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()
        self.running: dict[Future, tuple[object, float]] = {}  # call -> (key, when it started)
        self.keys: dict[object, Future] = {}  # key -> its unfinished call

    def submit(self, key, fn, args) -> Future:
        fut: Future = Future()
        with self.lock:
            if key is not None:
                self.keys[key] = fut
            if len(self.threads) < self.workers:
                t = threading.Thread(target=self._work, daemon=True, name=f"gwi-call-{self.name}")
                self.threads.append(t)
                t.start()
        self.jobs.put((fut, key, fn, args))
        return fut

    def _work(self) -> None:
        while True:
            fut, key, fn, args = self.jobs.get()
            if fut.set_running_or_notify_cancel():
                with self.lock:
                    self.running[fut] = (key, time.monotonic())
                try:
                    fut.set_result(fn(*args))
                except BaseException as e:  # noqa: BLE001 - handed to the waiting loop
                    fut.set_exception(e)
            with self.lock:
                self.running.pop(fut, None)
                if key is not None and self.keys.get(key) is fut:
                    del self.keys[key]

    def overdue(self, timeout_s: float) -> float | None:
        """How long the oldest call past its deadline has run, or None when none has."""
        now = time.monotonic()
        with self.lock:
            ages = [now - t for _, t in self.running.values() if now - t > timeout_s]
        return max(ages) if ages else None

    def busy_key(self, key) -> bool:
        with self.lock:
            return key is not None and key in self.keys


class Calls:
    """The lanes of one scheduler. ``timeout_s``: how long the loop waits for any one answer."""

    def __init__(self, timeout_s: float = DEFAULT_TIMEOUT_S, workers: int = WORKERS):
        self.timeout_s = timeout_s
        self.workers = workers
        self._lanes: dict[str, _Lane] = {}

    def _lane(self, name: str) -> _Lane:
        if name not in self._lanes:
            self._lanes[name] = _Lane(name, self.workers)
        return self._lanes[name]

    def submit(self, lane: str, key, fn, *args) -> Future:
        """Start ``fn(*args)`` on ``lane``; a lane stuck on an unanswered call, or a key with a call
        still running, gets a future that already failed (transient)."""
        ln = self._lane(lane)
        stuck = ln.overdue(self.timeout_s)
        refusal = None
        if stuck is not None:
            refusal = f"{lane} has not answered a call for {stuck:.0f} s; no new call until it does"
        elif ln.busy_key(key):
            refusal = f"{lane} is still busy with the previous call for {key}"
        if refusal:
            fut: Future = Future()
            fut.set_exception(PlatformError(refusal, "retryable"))
            return fut
        return ln.submit(key, fn, args)

    def wait(self, futures: Iterable[Future], timeout_s: float | None = None) -> None:
        """Wait for all of ``futures`` together, at most ``timeout_s`` (default: the call timeout)."""
        wait(list(futures), timeout=self.timeout_s if timeout_s is None else timeout_s)

    def outcome(self, lane: str, fut: Future):
        """The answer of a call the loop waited for: its result, its exception raised, or (no answer
        yet) a transient PlatformError. A call not started yet is dropped."""
        if not fut.done():
            fut.cancel()
            raise PlatformError(f"{lane} did not answer within {self.timeout_s:g} s", "retryable")
        return fut.result()

    def run(self, lane: str, key, fn, *args):
        """One call, waited for at most the call timeout."""
        fut = self.submit(lane, key, fn, *args)
        self.wait([fut])
        return self.outcome(lane, fut)
