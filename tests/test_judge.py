"""Verdicts on an attempt as pure functions: a recorded attempt, its platform's answer, its heartbeat,
its limits and the time in; a verdict out. No database, no processes, no store."""

from __future__ import annotations

import json

from gwi.adapters.base import PlatformError, State, Status
from gwi.scheduler import judge
from gwi.scheduler.judge import Attempt, Beat, Limits, Verdict

T0 = 1_000_000.0
LIMITS = Limits(start_timeout_s=60, stall_s=30, heartbeat_s=5)
RUNNING = Status(State.RUNNING)


def att(**kw) -> Attempt:
    base = {"id": "t.j.1", "job_id": "t/j", "n": 1, "platform": "a", "state": "running", "heartbeat_url": "file:///s/hb",
            "launched_at": T0, "handle": {"id": "t.j.1"}}
    return Attempt(**{**base, **kw})


def beat(progress=None, seen_at=None, store_ok=True) -> Beat:
    key = None if progress is None else f"{progress.get('unix_time')}:{progress.get('beat')}"
    return Beat(progress, store_ok, key, seen_at)


def verdict(a=None, now=T0 + 10, status=RUNNING, b=None, job_state="running", limits=LIMITS, error=None, dollars=0.0):
    b = b if b is not None else beat({"beat": 1}, seen_at=now - 1)
    return judge.judge(a or att(), job_state, limits, status, error, b, now, dollars)


# -- fine and started -------------------------------------------------------------------------------


def test_a_running_attempt_with_a_fresh_beat_is_fine():
    assert verdict() == Verdict(judge.FINE)


def test_a_pending_attempts_first_beat_starts_it():
    v = verdict(att(state="pending"), b=beat({"beat": 1, "host": "box"}, seen_at=T0 + 10))
    assert v == Verdict(judge.STARTED, reason="first heartbeat from box")
    assert v.state is None and not v.stop


def test_a_silent_platform_decides_alone():
    silent = Status(State.RUNNING, silent=True)
    # no beat can come: long past the start timeout it is not lost, and its platform's word starts it
    v = verdict(att(state="pending"), now=T0 + 600, status=silent, b=beat())
    assert v == Verdict(judge.STARTED, reason="running by its platform (it cannot heartbeat)")
    assert verdict(att(state="running"), now=T0 + 600, status=silent, b=beat()) == Verdict(judge.FINE)
    assert verdict(att(state="pending"), now=T0 + 5, status=Status(State.PENDING, silent=True), b=beat()).kind == judge.FINE


# -- lost and stalled -------------------------------------------------------------------------------


def test_no_heartbeat_within_the_start_timeout_is_lost():
    assert verdict(att(state="pending"), now=T0 + 60, b=beat()) == Verdict(judge.FINE)
    v = verdict(att(state="pending"), now=T0 + 61, b=beat())
    assert v == Verdict(judge.LOST, "lost", "no heartbeat within 60 s of launch", stop=True)


def test_a_stalled_heartbeat_is_lost():
    b = beat({"beat": 3}, seen_at=T0 + 100)
    assert verdict(now=T0 + 130, b=b).kind == judge.FINE
    v = verdict(now=T0 + 131, b=b)
    assert v == Verdict(judge.STALLED, "lost", "heartbeat stalled: none for 31 s (limit 30 s)", stop=True)


def test_an_unreachable_store_gives_no_verdict_on_silence():
    v = verdict(now=T0 + 10_000, b=beat(None, seen_at=T0 + 5, store_ok=False))
    assert v == Verdict(judge.FINE)
    assert verdict(att(state="pending"), now=T0 + 10_000, b=beat(store_ok=False)) == Verdict(judge.FINE)


def test_a_fatal_query_error_is_lost_and_any_other_leaves_it_to_the_heartbeat():
    fatal = PlatformError("a: instance vanished", "fatal")
    v = verdict(status=None, error=fatal)
    assert v == Verdict(judge.LOST, "lost", "platform query failed: a: instance vanished", stop=True)
    for kind in ("retryable", "auth"):
        assert verdict(status=None, error=PlatformError("a: hiccup", kind)) == Verdict(judge.FINE)
    # the platform cannot be asked and the beat stopped: the stall decides
    stalled = verdict(now=T0 + 200, status=None, error=PlatformError("a: reset", "retryable"), b=beat({"beat": 1}, T0))
    assert stalled.kind == judge.STALLED


def test_never_launched_within_the_start_timeout_is_lost_else_launched_again():
    a = att(handle=None, state="pending", last_error="a: rate limited")
    assert judge.unlaunched(a, LIMITS, T0 + 60) == Verdict(judge.RELAUNCH)
    assert judge.unlaunched(a, LIMITS, T0 + 61) == Verdict(judge.LOST, "lost", "not launched within 60 s (a: rate limited)")
    assert judge.unlaunched(att(handle=None), LIMITS, T0 + 61).reason == "not launched within 60 s (no handle)"


# -- done -------------------------------------------------------------------------------------------


def test_the_platforms_terminal_states():
    assert verdict(status=Status(State.SUCCEEDED, 0)) == Verdict(judge.DONE, "succeeded", "exited 0", 0)
    v = verdict(status=Status(State.FAILED, 1, "exit status 1: boom"))
    assert v == Verdict(judge.DONE, "failed", "exit status 1: boom", 1)
    assert verdict(status=Status(State.FAILED, 1)).reason == "failed"
    # a platform's lost: what it started may live on, so it is stopped
    lost = verdict(status=Status(State.LOST, None, "gone without an exit status"))
    assert lost == Verdict(judge.DONE, "lost", "gone without an exit status", None, stop=True)
    assert verdict(status=Status(State.CANCELLED, None, "cancelled")).state == "cancelled"


def test_the_processes_own_error_explains_a_platform_failure_once():
    b = beat({"beat": 4, "state": "failed", "error": "CUDA out of memory"}, seen_at=T0)
    assert verdict(status=Status(State.FAILED, 1, "exit status 1"), b=b).reason == "exit status 1 (CUDA out of memory)"
    assert verdict(status=Status(State.FAILED, 1, "CUDA out of memory"), b=b).reason == "CUDA out of memory"
    assert verdict(status=Status(State.SUCCEEDED, 0), b=b).reason == "exited 0"


def test_a_final_beat_is_believed_after_a_grace():
    done = beat({"beat": 9, "state": "succeeded"}, seen_at=T0 + 100)
    assert LIMITS.grace_s == 10.0  # 2 heartbeats, at least 10 s
    assert verdict(now=T0 + 110, status=None, b=done) == Verdict(judge.FINE)
    assert verdict(now=T0 + 111, status=None, b=done) == Verdict(judge.DONE, "succeeded", "finished (by its heartbeat)",
                                                                 stop=True)
    failed = beat({"beat": 9, "state": "failed", "error": "boom"}, seen_at=T0 + 100)
    assert verdict(now=T0 + 111, b=failed).reason == "failed (by its heartbeat): boom"
    # within the grace no stall is called either, however long the stall limit
    assert verdict(now=T0 + 110, b=done, limits=Limits(60, 5, 20)).kind == judge.FINE
    assert Limits(60, 120, 20).grace_s == 40.0


def test_a_job_cancelled_while_its_attempt_could_not_be_stopped():
    v = verdict(job_state="cancelled", status=Status(State.SUCCEEDED, 0))
    assert v == Verdict(judge.CANCELLED_BY_USER, "cancelled", "cancelled by user", stop=True)


# -- over limit -------------------------------------------------------------------------------------


def test_over_the_attempts_hours():
    a = att(hours_limit=1.0)
    assert verdict(a, now=T0 + 3600, b=beat({"beat": 1}, T0 + 3599)).kind == judge.FINE
    v = verdict(a, now=T0 + 1.4 * 3600, b=beat({"beat": 1}, T0 + 1.4 * 3600))
    assert v == Verdict(judge.OVER_LIMIT, "cancelled", "over budget: ran 1.40 h, limit 1 h", stop=True)


def test_over_the_jobs_dollars_on_a_paid_platform_only():
    limits = Limits(60, 30, 5, max_cost_usd=3)
    v = verdict(att(usd_per_hour=2.0), limits=limits, dollars=3.2)
    assert v == Verdict(judge.OVER_LIMIT, "cancelled", "over budget: $3.20 spent, limit $3", stop=True)
    assert verdict(att(usd_per_hour=2.0), limits=limits, dollars=3.0).kind == judge.FINE
    assert verdict(att(usd_per_hour=0.0), limits=limits, dollars=3.2).kind == judge.FINE


def test_a_lost_verdict_comes_before_over_limit():
    v = verdict(att(state="pending", hours_limit=0.001), now=T0 + 61, b=beat())
    assert v.kind == judge.LOST


# -- the beat's bookkeeping -------------------------------------------------------------------------


def test_beat_age_counts_from_when_a_new_beat_was_first_seen_here():
    a = att(beat_key="100.0:3", beat_seen_at=T0 + 5)
    same = judge.observe(a, {"unix_time": 100.0, "beat": 3}, True, T0 + 50)
    assert (same.key, same.seen_at) == ("100.0:3", T0 + 5)
    # a beat stamped long ago by a skewed clock is still new: seen now
    new = judge.observe(a, {"unix_time": 1.0, "beat": 4}, True, T0 + 50)
    assert (new.key, new.seen_at) == ("1.0:4", T0 + 50)
    none = judge.observe(a, None, False, T0 + 50)
    assert (none.key, none.seen_at, none.store_ok) == (None, T0 + 5, False)
    assert judge.observe(att(), None, True, T0).seen_at is None


def test_a_finished_epoch_is_worth_an_event():
    assert judge.progress_note(None, {"epoch": 1, "epochs": 3, "val_mae": 420.54}) == "epoch 1/3: val MAE 420.5 m/s"
    assert judge.progress_note({"epoch": 1}, {"epoch": 1, "val_mae": 400.0}) is None
    assert judge.progress_note({}, {"epoch": 2}) is None
    assert judge.progress_note({}, None) is None
    assert judge.progress_note({}, {"epoch": 2, "val_mae": 1.0}) == "epoch 2/?: val MAE 1.0 m/s"


def test_an_attempt_reads_from_its_recorded_row():
    row = {"id": "t.j.2", "job_id": "t/j", "n": 2, "platform": "b", "state": "running", "heartbeat_url": "u",
           "launched_at": T0, "handle": json.dumps({"pid": 7}), "started_at": None, "ended_at": None,
           "usd_per_hour": 0.0, "hours_limit": None, "progress": json.dumps({"step": 5}), "beat_key": None,
           "beat_seen_at": None, "resumed_from_step": 40, "last_error": None}
    a = Attempt.of(row)
    assert a.handle == {"pid": 7} and a.progress == {"step": 5} and a.last_error == "" and a["n"] == 2
