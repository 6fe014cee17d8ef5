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
    # the store did not answer: the silence is not the attempt's, its beat age starts again now
    none = judge.observe(a, None, False, T0 + 50)
    assert (none.key, none.seen_at, none.store_ok) == ("100.0:3", T0 + 50, False)
    assert judge.observe(att(), None, True, T0).seen_at is None


def test_a_store_outage_longer_than_stall_s_does_not_stall_the_attempt():
    # beats stopped landing because the store was down, for longer than stall_s (30 s here)...
    a = att(beat_key="100.0:3", beat_seen_at=T0, progress={"unix_time": 100.0, "beat": 3})
    down = judge.observe(a, None, False, T0 + 40)
    assert verdict(now=T0 + 40, b=down).kind == judge.FINE  # no verdict while the store is unreadable
    # ...it is back, and the newest beat is still the one from before the outage: not stalled yet
    a = att(beat_key="100.0:3", beat_seen_at=down.seen_at, progress=a.progress)
    back = judge.observe(a, {"unix_time": 100.0, "beat": 3}, True, T0 + 41)
    assert verdict(a, now=T0 + 41, b=back).kind == judge.FINE
    # a whole stall_s after the store came back with still no new beat, it is
    assert verdict(a, now=T0 + 40 + LIMITS.stall_s + 1, b=back).kind == judge.STALLED


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


# -- progress, not pulse (issue 12 #4) ---------------------------------------------------------------


def working(age, **kw):
    return {"beat": 7, "state": "running", "step": 40, "progress_seq": 12, "progress_age_s": age, **kw}


def test_a_beating_attempt_without_progress_is_stalled_after_the_default_limit():
    # the pulse is fresh (seen 1 s ago) but the step has not moved for 10 minutes: stalled
    assert verdict(now=T0 + 10, b=beat(working(600), seen_at=T0 + 9)).kind == judge.FINE
    v = verdict(now=T0 + 10, b=beat(working(601), seen_at=T0 + 9))
    assert v == Verdict(judge.STALLED, "lost", "no progress for 601 s at step 40 (limit 600 s) while its heartbeat "
                                               "goes on", stop=True)


def test_the_default_progress_limit_grows_with_the_measured_step_time():
    assert LIMITS.progress_limit(None) == 600 and LIMITS.progress_limit(45.0) == 900
    slow = working(800, step_time_s=45.0)  # 20 steps of 45 s: 900 s
    assert verdict(now=T0 + 10, b=beat(slow, seen_at=T0 + 10)).kind == judge.FINE
    assert verdict(now=T0 + 10, b=beat({**slow, "progress_age_s": 901}, seen_at=T0 + 10)).kind == judge.STALLED


def test_a_plans_explicit_stall_s_bounds_progress_too():
    limits = Limits(start_timeout_s=60, stall_s=30, heartbeat_s=5, progress_s=30)
    timed = {"step_time_s": 0.5}  # the loop has a measured rhythm
    assert verdict(now=T0 + 10, b=beat(working(29, **timed), seen_at=T0 + 10), limits=limits).kind == judge.FINE
    v = verdict(now=T0 + 10, b=beat(working(31, **timed), seen_at=T0 + 10), limits=limits)
    assert v.kind == judge.STALLED and v.reason.startswith("no progress for 31 s at step 40 (limit 30 s)")
    # before any step is timed (a first slow batch, a compile, a pull) slow is not stuck: the floor holds
    assert verdict(now=T0 + 10, b=beat(working(300), seen_at=T0 + 10), limits=limits).kind == judge.FINE
    assert verdict(now=T0 + 10, b=beat(working(601), seen_at=T0 + 10), limits=limits).kind == judge.STALLED


def test_waiting_on_the_store_is_not_a_progress_stall_and_old_beats_have_no_progress_age():
    waiting = working(5000, waiting="store unreachable since 10:00:00Z")
    assert verdict(now=T0 + 10, b=beat(waiting, seen_at=T0 + 10)) == Verdict(judge.FINE)
    assert verdict(now=T0 + 10, b=beat({"beat": 3, "step": 4}, seen_at=T0 + 10)) == Verdict(judge.FINE)


# -- the final beat is sticky (issue 12 #6) ------------------------------------------------------------


def test_a_late_non_final_beat_does_not_replace_the_recorded_final_one():
    final = {"beat": 9, "state": "succeeded", "final": True, "unix_time": T0 + 50}
    a = att(progress=final, beat_key=f"{T0 + 50}:9", beat_seen_at=T0 + 50)
    late = {"beat": 10, "state": "running", "unix_time": T0 + 51}
    b = judge.observe(a, late, True, T0 + 60)
    assert b.progress == final and b.key == f"{T0 + 50}:9" and b.seen_at == T0 + 50 and b.final == "succeeded"
    # so the end by its own word still comes after the grace, as if the late beat had never landed
    assert judge.judge(a, "running", LIMITS, None, None, b, T0 + 61, 0.0) == Verdict(
        judge.DONE, "succeeded", "finished (by its heartbeat)", stop=True)
    # a first final beat replaces a running one as before
    assert judge.observe(att(progress=late), final, True, T0 + 60).progress == final


# -- a run's step never goes backwards (issue 12 #3) ---------------------------------------------------


def test_resuming_before_the_published_step_is_refused_without_blame():
    a = att(resumed_from_step=120)
    v = verdict(a, b=beat({"beat": 2, "resumed_from": 0}, seen_at=T0 + 9))
    assert v == Verdict(judge.BACKWARDS, "failed", "refusing to go backwards: resumed from step 0, step 120 is "
                                                   "published", stop=True, blameless=True)
    # from the published step or later, or back to an older one because the newer was corrupt: fine
    assert verdict(a, b=beat({"beat": 2, "resumed_from": 120}, seen_at=T0 + 9)).kind == judge.FINE
    fallback = {"beat": 2, "resumed_from": 100, "resume_fallback": "step-120.pt: sha256 mismatch"}
    assert verdict(a, b=beat(fallback, seen_at=T0 + 9)).kind == judge.FINE
    assert verdict(att(), b=beat({"beat": 2, "resumed_from": 0}, seen_at=T0 + 9)).kind == judge.FINE


# -- the store's outage is no platform's fault (issue 12 #10) -------------------------------------------


def test_exit_75_or_a_retryable_final_beat_ends_the_attempt_blameless():
    down = verdict(status=Status(State.FAILED, 75, "exit status 75"),
                   b=beat({"beat": 5, "state": "failed", "final": True, "retryable": True,
                           "error": "StoreUnavailable: cannot reach s3"}, seen_at=T0))
    assert down == Verdict(judge.DONE, "failed", "the store was unreachable (not the platform's fault): "
                                                 "StoreUnavailable: cannot reach s3", 75, blameless=True)
    assert verdict(status=Status(State.FAILED, 75, "exit status 75"), b=beat()).blameless
    # by its own last word, the platform not yet saying anything
    said = beat({"beat": 5, "state": "failed", "final": True, "retryable": True, "error": "store down"}, seen_at=T0)
    v = verdict(now=T0 + 11, status=None, b=said)
    assert v.blameless and v.state == "failed" and v.reason.startswith("the store was unreachable")
    # any other failure is the platform's try
    assert not verdict(status=Status(State.FAILED, 1, "exit status 1"), b=beat()).blameless
