"""The verdict on one attempt: is it fine, started, stalled, lost, over its limits, or done?

Pure: the loop gathers what there is to know (the attempt as recorded, its platform's answer or the
error asking it, its heartbeat and whether the store answered, the job's limits and spend, the
time) and acts on the :class:`Verdict`. No database, no adapter, no store, no clock.

In order, first match wins:

1. asking the platform failed fatally: *lost* (a transient error or missing credentials in this
   shell leave the platform's view unknown: the heartbeat still decides);
2. the job was cancelled while the scheduler could not stop the attempt: *cancelled*;
3. the platform says it ended: *done* in the platform's state (succeeded, failed, lost, cancelled);
4. its heartbeat (unless the platform says it cannot beat, or the store did not answer): it said it
   finished and the platform has not confirmed within a grace: *done* by its own word; no beat
   within the start timeout: *lost*; none for ``stall_s``: *stalled* (lost);
5. its hours past the attempt's limit, or the job's dollars past its budget: *over limit*;
6. a pending attempt's first beat (or its silent platform saying running): *started*.

Beat age is measured on this machine's clock from when a *new* beat was first seen (:func:`observe`),
so remote clock skew does not matter and a scheduler restarted after a long pause does not call live
attempts lost: their beat has changed since it last looked.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from ..adapters.base import PlatformError, State, Status
from .lifecycle import CANCELLED
from .policy import attempt_hours

# verdict kinds
FINE = "fine"  # nothing to do
RELAUNCH = "relaunch"  # recorded but never launched, still within its start timeout: launch it again
STARTED = "started"  # pending -> running
LOST = "lost"
STALLED = "stalled"  # lost: its heartbeat stopped
OVER_LIMIT = "over_limit"  # stopped and cancelled: hours or dollars
DONE = "done"  # ended: by its platform's word or, failing that, its own last beat
CANCELLED_BY_USER = "cancelled"


@dataclass(frozen=True)
class Attempt:
    """An attempt as recorded (the columns the verdict and the loop read), JSON fields parsed."""

    id: str
    job_id: str
    n: int
    platform: str
    state: str
    heartbeat_url: str
    launched_at: float
    handle: dict | None = None
    started_at: float | None = None
    ended_at: float | None = None
    usd_per_hour: float = 0.0
    hours_limit: float | None = None
    progress: dict | None = None  # the last heartbeat read
    beat_key: str | None = None
    beat_seen_at: float | None = None
    resumed_from_step: int | None = None
    last_error: str = ""

    @classmethod
    def of(cls, row: Mapping) -> Attempt:
        def parsed(k):
            return json.loads(row[k]) if row[k] else None

        return cls(id=row["id"], job_id=row["job_id"], n=row["n"], platform=row["platform"], state=row["state"],
                   heartbeat_url=row["heartbeat_url"], launched_at=row["launched_at"], handle=parsed("handle"),
                   started_at=row["started_at"], ended_at=row["ended_at"], usd_per_hour=row["usd_per_hour"],
                   hours_limit=row["hours_limit"], progress=parsed("progress"), beat_key=row["beat_key"],
                   beat_seen_at=row["beat_seen_at"], resumed_from_step=row["resumed_from_step"],
                   last_error=row["last_error"] or "")

    def __getitem__(self, key: str):  # reads like the row it came from (attempt["n"])
        return getattr(self, key)


@dataclass(frozen=True)
class Limits:
    """What bounds an attempt of a job, resolved (the start timeout falls back to the platform's)."""

    start_timeout_s: float
    stall_s: float
    heartbeat_s: float
    max_cost_usd: float | None = None

    @property
    def grace_s(self) -> float:
        """How long a platform may take to report an end its job already announced."""
        return max(2 * self.heartbeat_s, 10.0)


@dataclass(frozen=True)
class Beat:
    """What the heartbeat says this pass."""

    progress: dict | None  # the heartbeat now (None: none yet, or unreadable)
    store_ok: bool  # the store answered (a missing heartbeat is an answer; a network error is not)
    key: str | None  # this beat's identity: its time and counter
    seen_at: float | None  # when the newest beat was first seen, on this machine's clock

    @property
    def final(self) -> str | None:
        """The process's own last word: ``succeeded`` or ``failed``, or None while it runs."""
        state = self.progress.get("state") if self.progress else None
        return state if state in ("succeeded", "failed") else None


@dataclass(frozen=True)
class Verdict:
    kind: str
    state: str | None = None  # the attempt's end state; None: it goes on
    reason: str = ""  # why it ended (for STARTED: what shows it runs)
    exit_code: int | None = None
    stop: bool = False  # ended by our verdict, not the platform's: stop it there (it may still run, and bill)


FINE_VERDICT = Verdict(FINE)


def observe(att: Attempt, progress: dict | None, store_ok: bool, now: float) -> Beat:
    """The beat-age bookkeeping: a beat not seen before (by its time and counter) was seen ``now``."""
    key = None if progress is None else f"{progress.get('unix_time')}:{progress.get('beat')}"
    seen_at = now if key is not None and key != att.beat_key else att.beat_seen_at
    return Beat(progress, store_ok, key, seen_at)


def progress_note(old: dict | None, new: dict | None) -> str | None:
    """An event worth recording in a new heartbeat: a finished epoch with its validation MAE."""
    if not new:
        return None
    old = old or {}
    mae = new.get("val_mae")
    if new.get("epoch") != old.get("epoch") and isinstance(mae, (int, float)) and new.get("epoch"):
        return f"epoch {new['epoch']}/{new.get('epochs', '?')}: val MAE {mae:.1f} m/s"
    return None


def unlaunched(att: Attempt, limits: Limits, now: float) -> Verdict:
    """An attempt without a handle: the scheduler died between recording and launching it, or its
    launch failed in a way worth retrying."""
    if now - att.launched_at > limits.start_timeout_s:
        return Verdict(LOST, State.LOST.value,
                       f"not launched within {limits.start_timeout_s:g} s ({att.last_error or 'no handle'})")
    return Verdict(RELAUNCH)


def judge(att: Attempt, job_state: str, limits: Limits, status: Status | None, query_error: PlatformError | None,
          beat: Beat, now: float, job_dollars: float) -> Verdict:
    """The verdict on a launched attempt (see the module's docstring for the order).
    ``status``: the platform's answer, None when asking failed (``query_error``);
    ``job_dollars``: what the job spent since it was last dispatched."""
    if query_error is not None and query_error.kind == "fatal":
        return Verdict(LOST, State.LOST.value, f"platform query failed: {query_error}", stop=True)
    if job_state == CANCELLED:
        return Verdict(CANCELLED_BY_USER, State.CANCELLED.value, "cancelled by user", stop=True)
    if status is not None and status.state.terminal:
        return platform_end(status, beat.progress)
    return (silence(att, limits, status, beat, now) or over_limit(att, limits, now, job_dollars)
            or started(att, status, beat) or FINE_VERDICT)


def platform_end(status: Status, progress: dict | None) -> Verdict:
    """The platform says it ended; the process's own error, when it gave one, says why."""
    reason = status.message or ("exited 0" if status.state == State.SUCCEEDED else status.state.value)
    err = str(progress.get("error") or "") if progress else ""
    if status.state != State.SUCCEEDED and err and err not in reason:
        reason += f" ({err[:300]})"
    # a platform's 'lost' (e.g. its wrapper died): what it started may live on
    return Verdict(DONE, status.state.value, reason, status.exit_code, stop=status.state == State.LOST)


def silence(att: Attempt, limits: Limits, status: Status | None, beat: Beat, now: float) -> Verdict | None:
    """What the heartbeat (or its absence) says; None when it says nothing against the attempt."""
    if status is not None and status.silent:
        return None  # no heartbeat can come: its platform's state and the hour limit decide
    if not beat.store_ok:
        return None  # the store is unreachable from here: no verdict on silence this pass
    seen_at = beat.seen_at
    if beat.final and seen_at is not None:
        # it said it finished (so silence is expected now); once the platform has had a grace to
        # report the end and has not, believe it, and release what the platform still holds
        if now - seen_at <= limits.grace_s:
            return None
        if beat.final == "succeeded":
            return Verdict(DONE, "succeeded", "finished (by its heartbeat)", stop=True)
        return Verdict(DONE, "failed", f"failed (by its heartbeat): {str(beat.progress.get('error', '?'))[:300]}",
                       stop=True)
    if seen_at is None and now - att.launched_at > limits.start_timeout_s:
        return Verdict(LOST, State.LOST.value, f"no heartbeat within {limits.start_timeout_s:g} s of launch", stop=True)
    if seen_at is not None and now - seen_at > limits.stall_s:
        return Verdict(STALLED, State.LOST.value,
                       f"heartbeat stalled: none for {now - seen_at:.0f} s (limit {limits.stall_s:g} s)", stop=True)
    return None


def over_limit(att: Attempt, limits: Limits, now: float, job_dollars: float) -> Verdict | None:
    """Past the attempt's hours or the job's dollars: stopped and cancelled."""
    hours = attempt_hours(att, now)
    if att.hours_limit is not None and hours > att.hours_limit:
        return Verdict(OVER_LIMIT, State.CANCELLED.value,
                       f"over budget: ran {hours:.2f} h, limit {att.hours_limit:g} h", stop=True)
    if limits.max_cost_usd is not None and att.usd_per_hour > 0 and job_dollars > limits.max_cost_usd:
        return Verdict(OVER_LIMIT, State.CANCELLED.value,
                       f"over budget: ${job_dollars:.2f} spent, limit ${limits.max_cost_usd:g}", stop=True)
    return None


def started(att: Attempt, status: Status | None, beat: Beat) -> Verdict | None:
    """A pending attempt shows it runs: its first heartbeat, or its (silent) platform says so."""
    if att.state != State.PENDING.value:
        return None
    if beat.progress is not None:
        return Verdict(STARTED, reason=f"first heartbeat from {beat.progress.get('host', '?')}")
    if status is not None and status.silent and status.state == State.RUNNING:
        return Verdict(STARTED, reason="running by its platform (it cannot heartbeat)")
    return None
