"""Heartbeats: the one way every platform reports how a run is doing.

A process writes a small ``progress.json`` to the store every few seconds: its state, step, epoch,
val MAE, ETA, host and pid, and the wall time of the beat. The scheduler reads it to tell a live
attempt from a lost one; ``gwi status`` shows it.

A beat is a pulse *and* a measure of progress: the work calls :meth:`Heartbeat.advance` whenever it
gets further (a training step, a validation batch, a pulled shard, a phase change), and every beat
says how long ago that last happened (``progress_age_s``, on this process's monotonic clock) and how
long an advance typically takes (``step_time_s``). A loop stuck in a blocking read keeps the pulse
and loses the progress, and the judge can tell. While the store is being waited out on purpose the
beat says ``waiting``.

A process's last beat carries ``final: true`` and nothing of that process writes the file after it:
beats are serialised by a write lock, :meth:`Heartbeat.finish` waits for a beat in flight before
writing the final one, and every beat after it is a no-op.

Where it goes: a training run always writes ``runs/RUN/progress.json``; a process launched by the
scheduler is also given ``GWI_HEARTBEAT`` (the store URL of its attempt's ``progress.json``) and
``GWI_ATTEMPT``. ``gwi`` starts a process-wide heartbeat to that URL as soon as it starts, before
any data is pulled, so a slow pull is not mistaken for a stall; ``gwi train`` then takes it over
(:func:`take_over`) and writes its richer snapshot to both places.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time

from . import store as _store
from .runs import CANCEL
from .store import Store, split_url

ENV_URL = "GWI_HEARTBEAT"
ENV_ATTEMPT = "GWI_ATTEMPT"
ENV_INTERVAL = "GWI_HEARTBEAT_S"

# How long finish() and take_over() wait for a beat in flight. A beat's store is opened without
# patience, so only a hung connection takes this long; the final beat is then written regardless and
# the late beat writes it again once it returns.
WRITE_WAIT_S = 15.0
STEP_EMA = 0.2  # weight of the newest interval in step_time_s
STEP_MIN_INTERVALS = 3  # step_time_s is reported once this many intervals were measured


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def beat_target(url: str) -> tuple[Store, str]:
    """(store, key) for a heartbeat URL, opened without patience: a missed beat is fine, a beat that
    blocks the heartbeat thread through a store outage is not."""
    return split_url(url, patience=0)


class _Channel:
    """What a heartbeat shares with the one that takes it over: the write lock (so the old one's last
    write cannot land after the new one's) and the final beat once written."""

    def __init__(self):
        self.lock = threading.Lock()
        self.final: bytes | None = None


class Heartbeat(threading.Thread):
    """Writes a snapshot to every target every ``interval`` seconds; the owner keeps it current with
    :meth:`update` (fields) and :meth:`advance` (fields, and the work got further)."""

    def __init__(self, targets: list[tuple[Store, str]], interval: float, base: dict,
                 cancel: tuple[Store, str] | None = None, channel: _Channel | None = None):
        super().__init__(daemon=True, name="gwi-heartbeat")
        self.targets, self.interval = list(targets), interval
        self.cancel = cancel  # a flag object the scheduler leaves where it cannot signal (Colab)
        self.channel = channel or _Channel()
        self.lock = threading.Lock()  # the state below
        self.state = dict(base)
        self.beats = int(self.state.pop("beat", 0))  # a successor continues its predecessor's counters
        self.progress_seq = int(self.state.pop("progress_seq", 0))
        self.last_advance = time.monotonic()
        self.last_timed: float | None = None  # the previous advance that measures a step, if any
        self.step_time: float | None = None
        self.intervals = 0
        self.halt = threading.Event()
        self.closed = False  # set under the write lock: no beat of this heartbeat writes again
        self.errors = 0

    def update(self, **kw) -> None:
        with self.lock:
            self.state.update(kw)

    def advance(self, *, timed: bool = True, **kw) -> None:
        """The work got further (merge ``kw`` too). ``timed=False`` for a phase change, whose duration
        says nothing about how long a step takes."""
        now = time.monotonic()
        with self.lock:
            self.state.update(kw)
            self.progress_seq += 1
            self.last_advance = now
            if timed and self.last_timed is not None:
                gap = now - self.last_timed
                self.step_time = gap if self.step_time is None else self.step_time + STEP_EMA * (gap - self.step_time)
                self.intervals += 1
            self.last_timed = now if timed else None

    def phase(self, name: str, **kw) -> None:
        self.advance(timed=False, phase=name, **kw)

    def snapshot(self) -> dict:
        with self.lock:
            snap = dict(self.state, beat=self.beats, progress_seq=self.progress_seq,
                        progress_age_s=round(time.monotonic() - self.last_advance, 3))
            if self.step_time is not None and self.intervals >= STEP_MIN_INTERVALS:
                snap["step_time_s"] = round(self.step_time, 6)
        reason = waiting()
        if reason:
            snap["waiting"] = reason
        return snap

    def _compose(self, final: bool = False) -> bytes:
        with self.lock:
            self.beats += 1
        snap = dict(self.snapshot(), time=now_iso(), unix_time=time.time())
        if final:
            snap["final"] = True
        return json.dumps(snap, indent=1, default=str).encode()

    def _write(self, data: bytes) -> None:
        for store, key in self.targets:
            try:
                store.put_bytes(key, data)
            except Exception:  # noqa: BLE001 - a missed beat must not kill the work; the next one retries
                self.errors += 1

    def beat(self) -> bool:
        """Write one snapshot to every target; False once this heartbeat has ended (nothing written)."""
        with self.channel.lock:
            if self.closed:
                return False
            self._write(self._compose())
            if self.channel.final is not None:  # finish() gave up waiting for this write: it goes last again
                self._write(self.channel.final)
            return True

    def run(self) -> None:  # noqa: D401 - Thread API
        while not self.halt.wait(self.interval):
            if not self.beat():
                return
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
        """Stop the periodic beats (the owner still writes the final one with :meth:`finish`)."""
        self.halt.set()

    def _quiesce(self) -> bool:
        """Stop the thread and wait (bounded) for a beat in flight; True holding the write lock."""
        deadline = time.monotonic() + WRITE_WAIT_S
        self.halt.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(WRITE_WAIT_S)
        return self.channel.lock.acquire(timeout=max(0.0, deadline - time.monotonic()))

    def finish(self, state: str, **kw) -> None:
        """Write the final beat (``final: true``), after any beat in flight; later beats are no-ops.
        The first finish wins: a second one (the CLI after training's own) writes nothing."""
        locked = self._quiesce()
        try:
            if self.closed:
                return
            self.update(state=state, **kw)
            data = self._compose(final=True)
            self.closed = True
            self.channel.final = data  # before writing: a write still in flight repeats it after itself
            self._write(data)
        finally:
            if locked:
                self.channel.lock.release()

    def retire(self) -> None:
        """End without a final beat: a successor sharing :attr:`channel` writes the same file next."""
        locked = self._quiesce()
        self.closed = True
        if locked:
            self.channel.lock.release()


# -- the store's waits ------------------------------------------------------------------------------

# Why this process is waiting out a store outage, or None. The store keeps track of every waiting call
# and reports one process-wide reason (and None once no call waits); a heartbeat's own writes have no
# patience, so they never claim a wait.
_waiting: str | None = None


def waiting() -> str | None:
    """Why this process is waiting on purpose (a store outage), or None."""
    return _waiting


def _on_store_wait(reason: str | None) -> None:
    global _waiting
    _waiting = reason or None


_store.set_wait_hook(_on_store_wait)


# -- the process's heartbeat ------------------------------------------------------------------------

_process: Heartbeat | None = None


def attempt_target() -> tuple[Store, str] | None:
    url = os.environ.get(ENV_URL)
    return beat_target(url) if url else None


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
    """The process got further (synth and predict report counts): merge ``kw`` into its heartbeat,
    if it has one, as an advance."""
    if _process is not None:
        _process.advance(**kw)


def phase(name: str, **kw) -> None:
    """The process reached a new phase (``pulled``, ``built``): an advance that does not time a step."""
    if _process is not None:
        _process.phase(name, **kw)


def take_over(targets: list[tuple[Store, str]], interval: float, base: dict) -> Heartbeat:
    """Replace the process heartbeat with a richer one (training's), started and beating to
    ``targets`` and to the attempt's file. The old one stops after its beat in flight and never
    writes again; the new one continues its beat and progress counters, so neither goes backwards."""
    global _process
    old, _process = _process, None
    target = attempt_target()
    channel, carried = None, {}
    if old is not None:
        old.retire()
        channel = old.channel
        snap = old.snapshot()
        carried = {"beat": snap["beat"], "progress_seq": snap["progress_seq"]}
    hb = Heartbeat(list(targets) + ([target] if target else []), interval, {**base, **carried},
                   cancel=cancel_flag(), channel=channel)
    hb.advance(timed=False)  # starting to train is progress
    hb.beat()
    hb.start()
    return hb


def end_process_heartbeat(state: str, **kw) -> None:
    global _process
    if _process is not None:
        _process.finish(state, **kw)
        _process = None
