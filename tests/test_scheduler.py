"""Scheduler transitions against a scripted fake adapter and a fake clock (no processes, no sleeps)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from gwi.adapters.base import Adapter, PlatformError, Profile, State, Status
from gwi.errors import GwiError
from gwi.scheduler import SCHEMA_VERSION, LockBusy, Scheduler, open_view
from gwi.spec import load_spec
from gwi.store import open_store


class Clock:
    def __init__(self):
        self.t = 1_000_000.0

    def __call__(self):
        return self.t

    def advance(self, s):
        self.t += s


class Fake(Adapter):
    """A platform whose attempts do what the test says."""

    def __init__(self, profile):
        super().__init__(profile)
        self.launched, self.cancelled, self.states = [], [], {}
        self.launch_error: Exception | None = None
        self.unavailable: str | None = None

    def available(self):
        return self.unavailable

    def launch(self, req):
        if self.launch_error is not None:
            raise self.launch_error
        if req.attempt_id not in self.states:  # idempotent on the attempt id, like every adapter
            self.launched.append(req)
            self.states[req.attempt_id] = Status(State.RUNNING)
        return {"id": req.attempt_id}

    def query(self, handle):
        return self.states[handle["id"]]

    def cancel(self, handle):
        self.cancelled.append(handle["id"])
        self.states[handle["id"]] = Status(State.CANCELLED, None, "cancelled")

    def logs(self, handle, tail=None):
        return f"log of {handle['id']}\n"

    # test controls
    def finish(self, attempt_id, code=0, message=""):
        self.states[attempt_id] = Status(State.SUCCEEDED if code == 0 else State.FAILED, code, message)


def profile(name, **kw):
    return Profile(name=name, adapter="local", path=f"platforms/{name}.yaml", **kw)


@pytest.fixture
def env(tmp_path):
    clock = Clock()
    profiles = {"a": profile("a", start_timeout_s=60, capacity=3), "b": profile("b", start_timeout_s=60, capacity=3),
                "paid": profile("paid", usd_per_hour=2.0, start_timeout_s=60),
                "quota": profile("quota", quota_hours_per_week=1.0, start_timeout_s=60)}
    s = Scheduler(tmp_path / "home", profiles=profiles, clock=clock)
    fakes = {n: Fake(p) for n, p in profiles.items()}
    s._adapters.update(fakes)
    store = f"file://{tmp_path}/store"

    def spec(text, name="t"):
        p = tmp_path / f"{name}.yaml"
        p.write_text(f"name: {name}\nstore: {store}\n" + text)
        return load_spec(p, profiles=profiles)

    def beat(attempt_id, **kw):
        head, _, key = s.state.attempt(attempt_id)["heartbeat_url"].rpartition("/")
        beat.n += 1
        open_store(head).put_bytes(key, json.dumps({"state": "running", "beat": beat.n, "unix_time": clock(), **kw}).encode())

    beat.n = 0
    yield s, fakes, clock, spec, beat
    s.close()


def jobs(s):
    return {r["name"]: (r["state"], r["reason"]) for r in s.state.jobs()}


def attempts(s, job):
    return [(a["platform"], a["state"], a["end_reason"]) for a in s.state.attempts(f"t/{job}")]


SYNTH = """
jobs:
  - {name: data, kind: synth, backend: deepwave, dataset: d, families: [FlatVel_A], samples: 2, platforms: [a, b]}
  - {name: tr, kind: train, model: inversionnet, preset: tiny, dataset: d, platforms: [a, b], heartbeat_s: 5,
     limits: {stall_s: 30}}
"""


def test_happy_path_runs_dependencies_in_order(env):
    s, fakes, clock, spec, beat = env
    s.submit(spec(SYNTH))
    s.reconcile()
    assert jobs(s)["data"][0] == "running" and jobs(s)["tr"][0] == "waiting"  # implicit after: tr needs d
    assert [r.attempt_id for r in fakes["a"].launched] == ["t.data.1"]
    req = fakes["a"].launched[0]
    assert req.argv[:3] == ["gwi", "data", "synth"] and req.env["GWI_ATTEMPT"] == "t.data.1"
    assert req.heartbeat_url.endswith("/runs/t/data/attempts/1/progress.json")
    beat("t.data.1")
    s.reconcile()
    assert s.state.attempts("t/data")[0]["state"] == "running"
    fakes["a"].finish("t.data.1")
    s.reconcile()
    assert jobs(s)["data"][0] == "succeeded"
    assert jobs(s)["tr"][0] == "running" and fakes["a"].launched[-1].attempt_id == "t.tr.1"
    beat("t.tr.1", epoch=1, epochs=3, val_mae=420.5)
    s.reconcile()
    ev = [e["message"] for e in s.state.events("t/tr")]
    assert "epoch 1/3: val MAE 420.5 m/s" in ev
    fakes["a"].finish("t.tr.1")
    s.reconcile()
    assert jobs(s) == {"data": ("succeeded", ""), "tr": ("succeeded", "")}
    assert s.state.unfinished() == 0


def test_failure_moves_to_next_platform_and_exhaustion_fails_with_every_reason(env):
    s, fakes, clock, spec, beat = env
    s.submit(spec(SYNTH))
    s.reconcile()
    fakes["a"].finish("t.data.1", 1, "exit status 1: boom")
    s.reconcile()
    assert attempts(s, "data") == [("a", "failed", "exit status 1: boom"), ("b", "pending", "")]
    assert fakes["b"].launched[0].attempt_id == "t.data.2"
    fakes["b"].finish("t.data.2", 137, "killed by SIGKILL")
    s.reconcile()
    state, reason = jobs(s)["data"]
    assert state == "failed"
    assert reason == "no platform left: a: used: 1 attempt(s), retries 0; b: used: 1 attempt(s), retries 0"
    # the dependent job fails with its cause, and is never launched
    assert jobs(s)["tr"] == ("failed", "dependency data failed")
    assert len(fakes["a"].launched) == 1


def test_retries_stay_on_the_same_platform(env):
    s, fakes, clock, spec, beat = env
    s.submit(spec("""
jobs:
  - {name: data, kind: synth, backend: deepwave, dataset: d, families: [FlatVel_A], samples: 2, platforms: [a, b], limits: {retries: 1}}
"""))
    s.reconcile()
    fakes["a"].finish("t.data.1", 1)
    s.reconcile()
    # another try on the same platform waits a little: a crash loop does not use up its tries in seconds
    assert [a[0] for a in attempts(s, "data")] == ["a"]
    assert jobs(s)["data"][1].endswith("retrying on a in 10 s")
    clock.advance(10)
    s.reconcile()
    assert [a[0] for a in attempts(s, "data")] == ["a", "a"]
    fakes["a"].finish("t.data.2", 1)
    s.reconcile()  # a is used up: the next platform at once
    assert [a[0] for a in attempts(s, "data")] == ["a", "a", "b"]


def test_no_heartbeat_within_start_deadline_is_lost_and_cancelled(env):
    s, fakes, clock, spec, beat = env
    s.submit(spec(SYNTH))
    s.reconcile()
    clock.advance(59)
    s.reconcile()
    assert attempts(s, "data") == [("a", "pending", "")]
    clock.advance(2)
    s.reconcile()
    assert attempts(s, "data")[0] == ("a", "lost", "no heartbeat within 60 s of launch")
    assert fakes["a"].cancelled == ["t.data.1"]  # stopped there: a lost attempt may still be running
    assert attempts(s, "data")[1][:2] == ("b", "pending")


def test_stalled_heartbeat_is_lost_measured_from_when_a_new_beat_was_seen(env):
    s, fakes, clock, spec, beat = env
    s.submit(spec(SYNTH))
    s.reconcile()
    fakes["a"].finish("t.data.1")
    beat("t.data.1")
    s.reconcile()
    s.reconcile()
    beat("t.tr.1")
    s.reconcile()
    for _ in range(3):  # beats keep coming: alive, however long it runs
        clock.advance(25)
        beat("t.tr.1")
        s.reconcile()
    assert attempts(s, "tr") == [("a", "running", "")]
    clock.advance(29)
    s.reconcile()
    assert attempts(s, "tr") == [("a", "running", "")]
    clock.advance(2)
    s.reconcile()
    assert attempts(s, "tr")[0] == ("a", "lost", "heartbeat stalled: none for 31 s (limit 30 s)")
    assert "t.tr.1" in fakes["a"].cancelled
    assert attempts(s, "tr")[1][:2] == ("b", "pending")


def test_a_restarted_scheduler_does_not_call_a_live_attempt_lost(env, tmp_path):
    s, fakes, clock, spec, beat = env
    s.submit(spec(SYNTH))
    s.reconcile()
    beat("t.data.1")
    s.reconcile()
    clock.advance(3600)  # the scheduler was down for an hour; the attempt kept beating
    beat("t.data.1")
    s2 = Scheduler(s.home, profiles=s.profiles, clock=clock)
    s2._adapters.update(fakes)
    s2.reconcile()
    assert attempts(s2, "data") == [("a", "running", "")]
    s2.close()


def test_over_budget_hours_and_dollars(env):
    s, fakes, clock, spec, beat = env
    s.submit(spec("""
jobs:
  - {name: p, kind: synth, backend: deepwave, dataset: d, families: [FlatVel_A], samples: 2, platforms: [paid, a],
     limits: {max_cost_usd: 3, stall_s: 100000}}
  - {name: h, kind: synth, backend: deepwave, dataset: e, families: [FlatVel_A], samples: 2, platforms: [b, a], limits: {max_hours: 1, stall_s: 100000}}
"""))
    s.reconcile()
    beat("t.p.1")
    beat("t.h.1")
    s.reconcile()
    clock.advance(1.4 * 3600)  # $2.80 spent on paid; 1.4 h > 1 h on b
    beat("t.p.1")
    s.reconcile()
    assert attempts(s, "h")[0] == ("b", "cancelled", "over budget: ran 1.40 h, limit 1 h")
    assert "t.h.1" in fakes["b"].cancelled
    assert jobs(s)["h"] == ("failed", "no platform left: b: used: 1 attempt(s), retries 0; a: job hours spent (1.40 of 1 h)")
    assert attempts(s, "p") == [("paid", "running", "")]
    clock.advance(0.2 * 3600)  # $3.20 > $3
    beat("t.p.1")
    s.reconcile()
    assert attempts(s, "p")[0] == ("paid", "cancelled", "over budget: $3.20 spent, limit $3")
    assert attempts(s, "p")[1][:2] == ("a", "pending")  # the free platform may go on
    hours, cost = s.job_cost("t/p")
    assert cost == pytest.approx(3.2)


def test_quota_capacity_credentials_and_launch_errors_choose_the_platform(env):
    s, fakes, clock, spec, beat = env
    s.submit(spec("""
jobs:
  - {name: q1, kind: synth, backend: deepwave, dataset: d1, families: [FlatVel_A], samples: 2, platforms: [quota, a], limits: {stall_s: 100000}}
  - {name: q2, kind: synth, backend: deepwave, dataset: d2, families: [FlatVel_A], samples: 2, platforms: [quota, a], limits: {stall_s: 100000}}
  - {name: q3, kind: synth, backend: deepwave, dataset: d3, families: [FlatVel_A], samples: 2, platforms: [b], limits: {stall_s: 100000}}
"""))
    fakes["b"].unavailable = "credentials not set: B_KEY"
    s.reconcile()
    # q1 takes quota's only slot, q2 goes to a, q3's only platform is unusable
    assert attempts(s, "q1")[0][0] == "quota" and attempts(s, "q2")[0][0] == "a"
    assert jobs(s)["q3"] == ("failed", "no platform left: b: credentials not set: B_KEY")
    beat("t.q1.1")
    beat("t.q2.1")
    s.reconcile()
    clock.advance(1.5 * 3600)
    beat("t.q1.1")
    beat("t.q2.1")
    fakes["quota"].finish("t.q1.1")
    fakes["a"].finish("t.q2.1", 1)
    s.reconcile()
    # q2 failed on a; quota has a free slot but its weekly hour is used up: nothing left
    assert jobs(s)["q2"][0] == "failed" and "quota: weekly quota used (1.5 of 1 h)" in jobs(s)["q2"][1]
    assert s.usage("quota")["hours_week"] == pytest.approx(1.5)
    clock.advance(7 * 24 * 3600)  # a week later the quota is back
    assert s.usage("quota")["hours_week"] == 0


def test_launch_errors(env):
    s, fakes, clock, spec, beat = env
    s.submit(spec(SYNTH))
    fakes["a"].launch_error = PlatformError("a: rate limited", "retryable")
    s.reconcile()
    assert attempts(s, "data") == [("a", "pending", "")] and fakes["a"].launched == []
    for wait in (31, 32, 33):  # the same refusal pass after pass is one event, not one per pass
        fakes["a"].launch_error = PlatformError(f"a: rate limited, retry in {wait} s", "retryable")
        s.reconcile()
    retries = [e["message"] for e in s.state.events("t/data") if e["kind"] == "launch-retry"]
    assert retries == ["a: rate limited", "a: rate limited, retry in 31 s"]
    fakes["a"].launch_error = None
    s.reconcile()  # the same attempt is launched on the next pass
    assert [r.attempt_id for r in fakes["a"].launched] == ["t.data.1"]
    s.submit(spec(SYNTH.replace("name: data", "name: data2").replace("dataset: d,", "dataset: d2,"), name="u"))
    fakes["a"].launch_error = PlatformError("a: no capacity in any region", "capacity")
    s.reconcile()
    assert [(a["platform"], a["state"], a["end_reason"]) for a in s.state.attempts("u/data2")][:2] == [
        ("a", "failed", "launch failed (capacity): a: no capacity in any region"), ("b", "pending", "")]


def test_redispatch_is_idempotent_and_a_crash_before_launch_is_recovered(env):
    s, fakes, clock, spec, beat = env
    sp = spec(SYNTH)
    assert s.submit(sp) == ["data: new", "tr: new"]
    s.reconcile()
    assert s.submit(sp) == ["data: already running", "tr: already waiting"]
    s.reconcile()
    assert len(fakes["a"].launched) == 1 and len(s.state.attempts("t/data")) == 1
    # an attempt recorded but never launched (the scheduler died in between) is launched once, same id
    fakes["a"].finish("t.data.1", 1)
    s.reconcile()
    s.state.update_attempt("t.data.2", handle=None)
    fakes["b"].states.clear()
    fakes["b"].launched.clear()
    s.reconcile()
    s.reconcile()
    assert [r.attempt_id for r in fakes["b"].launched] == ["t.data.2"]
    # a failed job dispatched again is queued again
    fakes["b"].finish("t.data.2", 1)
    s.reconcile()
    assert jobs(s)["data"][0] == "failed"
    assert s.submit(sp)[0] == "data: failed before, queued again"


def test_cancel_stops_the_attempt_and_fails_dependents(env):
    s, fakes, clock, spec, beat = env
    s.submit(spec(SYNTH))
    s.reconcile()
    assert s.cancel("t/data") == "t/data cancelled; attempt 1 on a stopped"
    assert fakes["a"].cancelled == ["t.data.1"]
    s.reconcile()
    assert jobs(s) == {"data": ("cancelled", "cancelled by user"), "tr": ("failed", "dependency data cancelled")}
    assert s.cancel("t/data") == "t/data already cancelled"
    assert s.resolve("tr") == "t/tr"
    with pytest.raises(GwiError, match="no job 'nope'; known: t/data, t/tr"):
        s.resolve("nope")


def test_the_lock_keeps_a_second_scheduler_out(env):
    s, fakes, clock, spec, beat = env
    other = Scheduler(s.home, profiles=s.profiles)
    with s.lock():
        with pytest.raises(LockBusy, match=r"another gwi scheduler \(pid \d+\) holds"):
            with other.lock(wait=False):
                pass
    with other.lock(wait=False):
        pass
    other.close()


def test_a_newer_schema_is_refused(tmp_path):
    db = sqlite3.connect(tmp_path / "state.db")
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(GwiError, match=f"schema 99, this gwi knows {SCHEMA_VERSION}"):
        Scheduler(tmp_path, profiles={})


def test_logs_and_history(env):
    s, fakes, clock, spec, beat = env
    s.submit(spec(SYNTH))
    s.reconcile()
    att, text = s.logs("t/data")
    assert text == "log of t.data.1\n" and att["n"] == 1
    with pytest.raises(GwiError, match="t/tr has no attempt yet"):
        s.logs("t/tr")
    kinds = [e["kind"] for e in s.state.events("t/data")]
    assert kinds == ["dispatched", "queued", "assigned", "launched"]
    assert Path(s.home, "state.db").exists()


def test_unreachable_platform_defers_to_the_heartbeat(env):
    s, fakes, clock, spec, beat = env
    s.submit(spec(SYNTH))
    s.reconcile()
    beat("t.data.1")
    s.reconcile()
    fakes["a"].states["t.data.1"] = None  # querying it now raises (an SSH drop, an API hiccup)

    def flaky(handle):
        raise PlatformError("a: connection reset", "retryable")

    fakes["a"].query = flaky
    for _ in range(3):  # still beating: still running, whatever the platform says
        clock.advance(20)
        beat("t.data.1")
        s.reconcile()
    a = s.state.attempts("t/data")[0]
    assert (a["state"], a["last_error"]) == ("running", "a: connection reset")
    # the process reports its own end; after a grace for the platform to confirm, it is believed
    beat("t.data.1", state="succeeded")
    s.reconcile()
    clock.advance(39)  # grace: 2 heartbeats (20 s default)
    s.reconcile()
    assert s.state.attempts("t/data")[0]["state"] == "running"
    clock.advance(2)
    s.reconcile()
    assert attempts(s, "data")[0] == ("a", "succeeded", "finished (by its heartbeat)")
    assert fakes["a"].cancelled == ["t.data.1"]  # whatever the platform still holds is released


def test_unreachable_platform_and_silent_attempt_is_lost(env):
    s, fakes, clock, spec, beat = env
    s.submit(spec(SYNTH))
    s.reconcile()
    beat("t.data.1")
    s.reconcile()

    def flaky(handle):
        raise PlatformError("a: connection reset", "retryable")

    fakes["a"].query = flaky
    clock.advance(121)  # 6 x the default 20 s heartbeat
    s.reconcile()
    assert attempts(s, "data")[0] == ("a", "lost", "heartbeat stalled: none for 121 s (limit 120 s)")


def test_a_version_1_state_is_migrated(tmp_path):
    from gwi.scheduler.state import _SCHEMA

    db = sqlite3.connect(tmp_path / "state.db")
    db.executescript(_SCHEMA)
    db.execute("PRAGMA user_version=1")
    db.close()
    Scheduler(tmp_path, profiles={}).close()
    db = sqlite3.connect(tmp_path / "state.db")
    cols = {r[1] for r in db.execute("PRAGMA table_info(attempts)")}
    assert {"cleanup", "generation", "blameless"} <= cols
    assert {"deadline"} <= {r[1] for r in db.execute("PRAGMA table_info(specs)")}
    assert {"not_before", "budget_hours"} <= {r[1] for r in db.execute("PRAGMA table_info(jobs)")}
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    db.close()


def test_redispatch_after_failure_gets_fresh_tries(env):
    s, fakes, clock, spec, beat = env
    sp = spec(SYNTH)
    s.submit(sp)
    s.reconcile()
    fakes["a"].finish("t.data.1", 1)
    s.reconcile()
    fakes["b"].finish("t.data.2", 1)
    s.reconcile()
    assert jobs(s)["data"][0] == "failed"
    s.submit(sp)
    s.reconcile()
    assert jobs(s)["data"][0] == "running" and attempts(s, "data")[2][:2] == ("a", "pending")


def test_a_failed_stop_is_retried_until_it_works(env):
    s, fakes, clock, spec, beat = env
    s.submit(spec(SYNTH))
    s.reconcile()
    real_cancel = fakes["a"].cancel

    def down(handle):
        raise PlatformError("a: API down", "retryable")

    fakes["a"].cancel = down
    clock.advance(61)  # no heartbeat: lost, and the stop fails
    s.reconcile()
    a = s.state.attempts("t/data")[0]
    assert a["state"] == "lost" and a["cleanup"] == "a: API down"
    assert a["end_reason"].endswith("; stop failed: a: API down; gwi retries it at every pass")
    s.reconcile()
    assert s.state.attempts("t/data")[0]["cleanup"] == "a: API down"
    fakes["a"].cancel = real_cancel
    s.reconcile()
    assert s.state.attempts("t/data")[0]["cleanup"] is None and fakes["a"].cancelled == ["t.data.1"]
    assert "attempt 1 on a stopped on retry" in [e["message"] for e in s.state.events("t/data")]


def test_an_unreachable_store_is_not_a_stall_and_missing_credentials_are_not_a_verdict(env, monkeypatch):
    s, fakes, clock, spec, beat = env
    s.submit(spec(SYNTH))
    s.reconcile()
    beat("t.data.1")
    s.reconcile()
    from gwi.errors import StoreError

    monkeypatch.setattr(s, "_read_progress", lambda url: (None, False))  # the scheduler's network is down

    def no_key(handle):
        raise PlatformError("a: API key not set", "auth")

    fakes["a"].query = no_key
    clock.advance(500)
    s.reconcile()
    assert attempts(s, "data")[0] == ("a", "running", "")
    assert StoreError  # (imported for the reader: what _read_progress swallows)


def test_one_broken_platform_does_not_stop_the_others(env):
    s, fakes, clock, spec, beat = env
    s.submit(spec(SYNTH))
    s.submit(spec(SYNTH.replace("name: data,", "name: other,").replace("dataset: d,", "dataset: o,")
                  .replace("platforms: [a, b]}", "platforms: [b]}"), name="u"))
    s.reconcile()

    def broken(handle):
        raise RuntimeError("adapter bug")

    fakes["a"].query = broken
    fakes["b"].finish("u.other.1")
    s.reconcile()
    assert s.state.jobs("u")[0]["state"] == "succeeded"  # the other job went on
    assert any(e["kind"] == "error" or "adapter bug" in e["message"] for e in s.state.events("t/data"))


def test_a_read_only_view_reads_while_a_scheduler_holds_the_lock_and_writes(env):
    s, fakes, clock, spec, beat = env
    s.submit(spec(SYNTH))
    s.reconcile()
    v = open_view(s.home, profiles=s.profiles)
    with s.lock(), s.state.tx() as st:  # a pass under way: the lock held and a write transaction open
        st.event("t/data", "note", "not yet committed")
        assert [j["id"] for j in v.state.jobs()] == ["t/data", "t/tr"]
        assert v.state.events("t/data")[-1]["kind"] == "launched"
        assert v.resolve("data") == "t/data" and v.usage("a")["active"] == 1
    assert v.state.events("t/data")[-1]["message"] == "not yet committed"
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        v.state.db.execute("DELETE FROM events")
    v.close()


def test_no_state_yet_reads_as_nothing_dispatched(tmp_path):
    v = open_view(tmp_path / "home", profiles={})
    assert v.state.jobs() == [] and v.state.unfinished() == 0 and v.state.latest_attempts() == {} and v.state.last_reconcile() is None
    with pytest.raises(GwiError, match="no job 'x'; nothing dispatched yet"):
        v.resolve("x")
    v.close()
    assert not (tmp_path / "home").exists()  # reading created nothing


def test_a_read_only_view_refuses_a_newer_schema(tmp_path):
    db = sqlite3.connect(tmp_path / "state.db")
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(GwiError, match=f"schema 99, this gwi knows {SCHEMA_VERSION}"):
        open_view(tmp_path, profiles={})


# -- issue 12: hung platforms, the store's outage, steps going backwards, sticky finals ------------------


class Hung(Fake):
    """A platform whose API stops answering (its calls block until released)."""

    def __init__(self, profile):
        super().__init__(profile)
        self.hang = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def query(self, handle):
        self.calls += 1
        if self.hang.is_set():
            self.release.wait(30)
        return super().query(handle)


def test_a_hung_platform_api_does_not_hold_up_the_others(tmp_path):
    clock = Clock()
    profiles = {"a": profile("a", start_timeout_s=60, capacity=3), "hung": profile("hung", start_timeout_s=60)}
    s = Scheduler(tmp_path / "home", profiles=profiles, clock=clock, call_timeout_s=0.5)
    fakes = {"a": Fake(profiles["a"]), "hung": Hung(profiles["hung"])}
    s._adapters.update(fakes)
    p = tmp_path / "h.yaml"
    p.write_text(f"name: h\nstore: file://{tmp_path}/store\njobs:\n"
                 "  - {name: x, kind: synth, backend: deepwave, dataset: x, families: [FlatVel_A], samples: 2, platforms: [hung]}\n"
                 "  - {name: y, kind: synth, backend: deepwave, dataset: y, families: [FlatVel_A], samples: 2, platforms: [a]}\n")
    s.submit(load_spec(p, profiles=profiles))
    s.reconcile()
    fakes["hung"].hang.set()
    fakes["a"].finish("h.y.1")
    try:
        errors = []
        for n in range(3):
            t0 = time.monotonic()
            s.reconcile()
            assert time.monotonic() - t0 < 1.5  # one call timeout, not the hang
            errors.append(s.state.attempt("h.x.1")["last_error"])
        assert s.state.job("h/y")["state"] == "succeeded"  # judged and finished while the other platform hangs
        assert fakes["hung"].calls == 1  # the hung call; none piled onto it
        assert errors[0] == "hung API did not answer within 0.5 s"
        assert errors[1].startswith("hung API has not answered a call for") and errors[2].startswith("hung API has not")
        assert s.state.attempt("h.x.1")["state"] == "pending"  # a transient error: the heartbeat decides
    finally:
        fakes["hung"].release.set()
    time.sleep(0.2)
    fakes["hung"].hang.clear()
    s.reconcile()  # it answered: asked again as usual
    assert fakes["hung"].calls == 2 and s.state.attempt("h.x.1")["last_error"] == ""
    s.close()


ONE_TRAIN = """
jobs:
  - {name: tr, kind: train, model: inversionnet, preset: tiny, dataset: d, platforms: [a, b], heartbeat_s: 5,
     limits: {stall_s: 30}}
"""


def test_an_attempt_the_stores_outage_ended_counts_no_try_and_waits_before_the_next(tmp_path):
    clock = Clock()
    profiles = {"a": profile("a", start_timeout_s=60, capacity=3), "b": profile("b", start_timeout_s=60)}
    s = Scheduler(tmp_path / "home", profiles=profiles, clock=clock, store_backoff_s=30)
    fakes = {n: Fake(p) for n, p in profiles.items()}
    s._adapters.update(fakes)
    p = tmp_path / "t.yaml"
    p.write_text(f"name: t\nstore: file://{tmp_path}/store\n" + SYNTH.split("  - {name: tr")[0])
    s.submit(load_spec(p, profiles=profiles))
    s.reconcile()
    fakes["a"].finish("t.data.1", 75, "exit status 75")  # gwi's "the store was unreachable"
    s.reconcile()
    a1 = s.state.attempt("t.data.1")
    assert (a1["state"], a1["blameless"]) == ("failed", 1)
    assert a1["end_reason"].startswith("the store was unreachable (not the platform's fault)")
    job = s.state.job("t/data")
    assert job["state"] == "queued" and job["reason"].endswith("next try in 30 s")
    assert s.state.tries("t/data", "a", 0) == 0  # a is not used up: retries 0, and it is still first in line
    clock.advance(29)
    s.reconcile()
    assert len(s.state.attempts("t/data")) == 1  # backing off
    clock.advance(2)
    s.reconcile()
    assert [a["platform"] for a in s.state.attempts("t/data")] == ["a", "a"]
    fakes["a"].finish("t.data.2", 75, "exit status 75")
    s.reconcile()
    assert s.state.job("t/data")["reason"].endswith("next try in 60 s")  # doubling
    clock.advance(61)
    s.reconcile()
    fakes["a"].finish("t.data.3", 1, "exit status 1: boom")  # a real failure counts as before
    s.reconcile()
    assert [a["platform"] for a in s.state.attempts("t/data")] == ["a", "a", "a", "b"]
    s.close()


def test_a_resume_from_before_the_published_step_is_stopped_and_requeued_without_blame(env, tmp_path):
    from gwi.runs import LATEST

    s, fakes, clock, spec, beat = env
    open_store(f"file://{tmp_path}/store/runs/t/tr").put_bytes(LATEST, json.dumps({"latest": {"step": 120}}).encode())
    s.submit(spec(ONE_TRAIN))
    s.reconcile()
    assert s.state.attempt("t.tr.1")["resumed_from_step"] == 120
    beat("t.tr.1", resumed_from=0)  # it could not read the checkpoint and started over
    s.reconcile()
    a1 = s.state.attempt("t.tr.1")
    assert (a1["state"], a1["blameless"]) == ("failed", 1) and fakes["a"].cancelled == ["t.tr.1"]
    msg = "refusing to go backwards: resumed from step 0, step 120 is published"
    assert a1["end_reason"] == msg and any(msg in e["message"] for e in s.state.events("t/tr"))
    assert s.state.job("t/tr")["state"] == "queued" and s.state.tries("t/tr", "a", 0) == 0


def test_a_late_beat_after_the_final_one_does_not_revive_the_attempt(env):
    s, fakes, clock, spec, beat = env
    s.submit(spec(SYNTH))
    s.reconcile()
    fakes["a"].states["t.data.1"] = Status(State.RUNNING, silent=False)
    beat("t.data.1", state="succeeded", final=True)
    s.reconcile()
    beat("t.data.1", state="running")  # the heartbeat thread's last write lands after the final one
    clock.advance(5)
    s.reconcile()
    assert json.loads(s.state.attempt("t.data.1")["progress"])["state"] == "succeeded"
    clock.advance(40)  # the platform never confirms: its own final word is believed after the grace (40 s)
    s.reconcile()
    assert attempts(s, "data")[0] == ("a", "succeeded", "finished (by its heartbeat)")


def test_the_store_unreadable_from_here_is_said_in_the_jobs_status(env, tmp_path):
    import shutil

    s, fakes, clock, spec, beat = env
    s.submit(spec(SYNTH))
    s.reconcile()
    beat("t.data.1")
    s.reconcile()
    hb = tmp_path / "store/runs/t/data/attempts/1/progress.json"
    hb.unlink()
    hb.mkdir()  # the heartbeat cannot be read (a folder where the file was): not "missing"
    clock.advance(500)
    s.reconcile()
    job = s.state.job("t/data")
    assert job["state"] == "running" and job["reason"].startswith("on a; heartbeat unreadable here, not judged: ")
    shutil.rmtree(hb)
    beat("t.data.1")  # readable again, and beating
    s.reconcile()
    assert s.state.job("t/data")["reason"] == "on a"


def test_a_deadline_that_cannot_hold_drops_the_lowest_priority_job_and_cuts_a_budget(env, capsys):
    """Three budgeted trainings share one paid slot; the plan's deadline is 4 h away. The least
    important is dropped, the next one's budget is cut to what fits after the most important, and
    its attempt's time limit (GWI_TIME_LIMIT_S, which gwi train sizes its schedule to) says so."""
    import datetime as dt

    s, fakes, clock, spec, beat = env
    clock.t = time.time()  # a deadline is checked against the real time
    deadline = dt.datetime.fromtimestamp(clock.t + 4 * 3600, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    train = "{kind: train, model: inversionnet, preset: tiny, dataset: file:///d, platforms: [paid]}"
    sp = spec(f"deadline: {deadline}\njobs:\n"
              f"  - {{name: main, priority: 9, config: {{time_budget: 3h}}, {train[1:]}\n"
              f"  - {{name: extra, priority: 1, config: {{time_budget: 2h}}, {train[1:]}\n"
              f"  - {{name: bonus, priority: 0, config: {{time_budget: 2h}}, {train[1:]}\n")
    s.submit(sp)
    s.reconcile()
    assert jobs(s)["bonus"] == ("cancelled", "dropped to meet the deadline (priority 0, the lowest left)")
    assert any(e["kind"] == "dropped" for e in s.state.events("t/bonus"))
    cut = s.state.job("t/extra")["budget_hours"]
    # main needs 3 h and its start-up margin (3 / 0.95 h); extra gets exactly what is left of the 4 h
    assert 0.75 < cut < 4 - 3 * 3600 / 0.95 / 3600 + 1e-6
    assert [r.attempt_id for r in fakes["paid"].launched] == ["t.main.1"]
    assert "GWI_TIME_LIMIT_S" not in fakes["paid"].launched[0].env
    # main runs 3.2 h and ends; extra gets the 0.8 h that are left, as its attempt's time limit
    clock.advance(3.2 * 3600)
    fakes["paid"].finish("t.main.1")
    s.reconcile()
    assert jobs(s)["extra"][0] == "running"
    limit = float(fakes["paid"].launched[-1].env["GWI_TIME_LIMIT_S"])
    assert 0.7 * 3600 < limit <= 0.8 * 3600 + 1
    assert s.state.attempts("t/extra")[0]["hours_limit"] == pytest.approx(limit / 3600, abs=1e-3)
