"""The verdict on one attempt: is it fine, started, stalled, lost, over its limits, or done?

Pure: the loop gathers what there is to know (the attempt as recorded, its platform's answer or the
error asking it, its heartbeat and whether the store answered, the job's limits and spend, the
time) and acts on the :class:`Verdict`. No database, no adapter, no store, no clock.

In order, first match wins:

1. asking the platform failed fatally: *lost* (a transient error, an API that did not answer in
   time, or missing credentials in this shell leave the platform's view unknown: the heartbeat
   still decides);
2. the job was cancelled while the scheduler could not stop the attempt: *cancelled*;
3. the platform says it ended: *done* in the platform's state (succeeded, failed, lost, cancelled);
4. it resumed from a step older than the one published when it was launched, with no corrupt
   checkpoint to excuse it: *backwards* (stopped; most likely the store's fault, so blameless);
5. its heartbeat (unless the platform says it cannot beat, or the store did not answer): it said it
   finished and the platform has not confirmed within a grace: *done* by its own word; no beat
   within the start timeout: *lost*; none for ``stall_s``: *stalled* (lost); beats, but no progress
   (``progress_age_s``) for the progress limit, and not deliberately waiting: *stalled* too;
6. its hours past the attempt's limit, or the job's dollars past its budget: *over limit*;
7. a pending attempt's first beat (or its silent platform saying running): *started*.

An attempt that failed because the shared store was unreachable (exit status 75, or a final beat
saying ``retryable``) ends *blameless*: no platform's try is counted for it.

Beat age is measured on this machine's clock from when a *new* beat was first seen (:func:`observe`),
so remote clock skew does not matter and a scheduler restarted after a long pause does not call live
attempts lost: their beat has changed since it last looked.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from ..adapters.base import PlatformError, State, Status
from ..errors import EXIT_STORE_UNAVAILABLE
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
BACKWARDS = "backwards"  # resumed from before the published step: stopped, requeued, no try counted

STORE_DOWN = "the store was unreachable (not the platform's fault)"
PROGRESS_FLOOR_S = 600.0  # the progress limit, unless the plan sets stall_s: at least this,
PROGRESS_STEPS = 20  # or this many typical steps
_FINAL_STATES = ("succeeded", "failed", "cancelled")


def is_final(progress: dict | None) -> bool:
    """A process's last beat: nothing of that process beats after it."""
    return bool(progress) and (progress.get("final") is True or progress.get("state") in _FINAL_STATES)


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
    stall_s: float  # the pulse: no new beat for this long is a stall
    heartbeat_s: float
    max_cost_usd: float | None = None
    progress_s: float | None = None  # the plan's stall_s when it set one: no progress for this long is a stall

    @property
    def grace_s(self) -> float:
        """How long a platform may take to report an end its job already announced."""
        return max(2 * self.heartbeat_s, 10.0)

    def progress_limit(self, step_time_s) -> float:
        """How long an attempt may go without progress: the plan's ``stall_s`` if it set one, once
        the work has a measured rhythm (``step_time_s``); else sized from the step time, at least
        :data:`PROGRESS_FLOOR_S`. Before the first steps are timed (a first batch, a compile, a
        pull) a short explicit ``stall_s`` would mistake slow for stuck: the floor applies."""
        step = step_time_s if isinstance(step_time_s, (int, float)) and step_time_s > 0 else None
        if self.progress_s is not None and step is not None:
            return self.progress_s
        return max(PROGRESS_FLOOR_S, PROGRESS_STEPS * (step or 0.0), self.progress_s or 0.0)


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
    blameless: bool = False  # not the platform's fault (the store was down): no try counted against it


FINE_VERDICT = Verdict(FINE)


def observe(att: Attempt, progress: dict | None, store_ok: bool, now: float) -> Beat:
    """The beat-age bookkeeping: a beat not seen before (by its time and counter) was seen ``now``.
    A final beat once recorded stays: a late beat of the heartbeat thread does not replace it."""
    if is_final(att.progress) and not is_final(progress):
        return Beat(att.progress, store_ok, att.beat_key, att.beat_seen_at)
    if not store_ok and att.beat_seen_at is not None:
        # nothing could be read: the silence is the store's, not the attempt's (its beats failed
        # too), so the beat's age starts again and it gets a whole stall_s once the store is back
        return Beat(progress, False, att.beat_key, now)
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
    return (backwards(att, beat) or silence(att, limits, status, beat, now) or over_limit(att, limits, now, job_dollars)
            or started(att, status, beat) or FINE_VERDICT)


def store_down(exit_code: int | None, progress: dict | None) -> bool:
    """The attempt failed because the shared store was unreachable (its exit status, or its last word)."""
    return exit_code == EXIT_STORE_UNAVAILABLE or bool(is_final(progress) and progress.get("retryable") is True)


def platform_end(status: Status, progress: dict | None) -> Verdict:
    """The platform says it ended; the process's own error, when it gave one, says why."""
    reason = status.message or ("exited 0" if status.state == State.SUCCEEDED else status.state.value)
    err = str(progress.get("error") or "") if progress else ""
    if status.state == State.FAILED and store_down(status.exit_code, progress):
        return Verdict(DONE, State.FAILED.value, f"{STORE_DOWN}: {err[:300] or reason}", status.exit_code,
                       blameless=True)
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
        err = str(beat.progress.get("error", "?"))[:300]
        if store_down(None, beat.progress):
            return Verdict(DONE, "failed", f"{STORE_DOWN}: {err}", stop=True, blameless=True)
        return Verdict(DONE, "failed", f"failed (by its heartbeat): {err}", stop=True)
    if seen_at is None and now - att.launched_at > limits.start_timeout_s:
        return Verdict(LOST, State.LOST.value, f"no heartbeat within {limits.start_timeout_s:g} s of launch", stop=True)
    if seen_at is not None and now - seen_at > limits.stall_s:
        return Verdict(STALLED, State.LOST.value,
                       f"heartbeat stalled: none for {now - seen_at:.0f} s (limit {limits.stall_s:g} s)", stop=True)
    return no_progress(limits, beat, now)


def no_progress(limits: Limits, beat: Beat, now: float) -> Verdict | None:
    """The pulse goes on but the work does not (a dead DataLoader worker, a hung collective, a
    blocking read): stalled. A process that says it is ``waiting`` (for the store) is not stalled.
    The age is the one the newest beat reports: when the beats themselves stop, the pulse decides."""
    p = beat.progress
    age = p.get("progress_age_s") if p else None
    if not isinstance(age, (int, float)) or beat.final or p.get("waiting"):
        return None
    limit = limits.progress_limit(p.get("step_time_s"))
    if age <= limit:
        return None
    at = f" at step {p['step']}" if p.get("step") is not None else ""
    return Verdict(STALLED, State.LOST.value,
                   f"no progress for {age:.0f} s{at} (limit {limit:g} s) while its heartbeat goes on", stop=True)


def backwards(att: Attempt, beat: Beat) -> Verdict | None:
    """A run's step never goes backwards: an attempt that resumed from before the step published when
    it was launched, with no corrupt checkpoint to excuse it (``resume_fallback``), is stopped. Most
    likely it could not read the store, which is no platform's fault."""
    p = beat.progress
    resumed = p.get("resumed_from") if p else None
    if not isinstance(resumed, int) or att.resumed_from_step is None or p.get("resume_fallback"):
        return None
    if resumed >= att.resumed_from_step:
        return None
    return Verdict(BACKWARDS, State.FAILED.value, f"refusing to go backwards: resumed from step {resumed}, "
                                                  f"step {att.resumed_from_step} is published", stop=True, blameless=True)


def over_limit(att: Attempt, limits: Limits, now: float, job_dollars: float) -> Verdict | None:
    """Past the job's dollars or the attempt's hours: stopped and cancelled. Dollars first: a paid
    attempt's hour limit includes what its dollars buy, and the dollars are the better reason."""
    if limits.max_cost_usd is not None and att.usd_per_hour > 0 and job_dollars > limits.max_cost_usd:
        return Verdict(OVER_LIMIT, State.CANCELLED.value,
                       f"over budget: ${job_dollars:.2f} spent, limit ${limits.max_cost_usd:g}", stop=True)
    hours = attempt_hours(att, now)
    if att.hours_limit is not None and hours > att.hours_limit:
        return Verdict(OVER_LIMIT, State.CANCELLED.value,
                       f"over budget: ran {hours:.2f} h, limit {att.hours_limit:g} h", stop=True)
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
