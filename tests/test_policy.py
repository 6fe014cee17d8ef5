"""Placement as pure functions: plain data in, choices out. No database, no adapters, no clock."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from gwi.adapters.base import Profile
from gwi.scheduler import policy
from gwi.scheduler.policy import Choice, Platform
from gwi.spec import Limits

HOUR = 3600.0
NOW = 1_000_000.0


def prof(name="a", **kw):
    return Profile(name=name, adapter="local", path=f"platforms/{name}.yaml", **kw)


def one(p: Platform, limits: Limits | None = None, hours=0.0, dollars=0.0) -> Choice:
    [c] = policy.choose([p], limits or Limits(), hours, dollars)
    return c


# -- which platform --------------------------------------------------------------------------------


def test_the_first_platform_that_can_take_the_job_wins_in_the_job_order():
    plats = [Platform("gone", None), Platform("a", prof("a", capacity=3), active=1), Platform("b", prof("b"))]
    ch = policy.choose(plats, Limits(), 0.0, 0.0)
    assert [c.platform for c in ch] == ["gone", "a", "b"]
    assert ch[0] == Choice("gone", False, False, "no profile")
    assert ch[1] == Choice("a", True, False, "free, 2/3 slot(s) free")
    assert policy.pick(ch).platform == "a"


def test_fallback_order_puts_a_busy_platform_first_and_keeps_the_rest_in_order():
    ch = [Choice("x", False, False, "no profile"), Choice("a", False, True, "busy (1/1 running)"),
          Choice("b", True, False, "free, 1/1 slot(s) free")]
    first, rest = policy.fallback_order(ch)
    assert first.platform == "a" and [c.platform for c in rest] == ["x", "b"]
    assert policy.fallback_order([Choice("x", False, False, "no profile")]) == (None, ch[:1])


def test_retries_exhausted_skips_the_platform():
    assert one(Platform("a", prof(), tries=1)) == Choice("a", False, False, "used: 1 attempt(s), retries 0")
    assert one(Platform("a", prof(), tries=1), Limits(retries=1)).ok
    assert one(Platform("a", prof(), tries=2), Limits(retries=1)).why == "used: 2 attempt(s), retries 1"
    assert policy.has_tries(0, 0) and not policy.has_tries(1, 0) and policy.has_tries(1, 1)


def test_an_unavailable_platform_says_why():
    c = one(Platform("a", prof(), unavailable="credentials not set: A_KEY"))
    assert c == Choice("a", False, False, "credentials not set: A_KEY")


def test_weekly_quota_used_and_left():
    q = prof("q", quota_hours_per_week=1.0)
    assert one(Platform("q", q, hours_week=1.5)) == Choice("q", False, False, "weekly quota used (1.5 of 1 h)")
    assert one(Platform("q", q, hours_week=1.0)).why == "weekly quota used (1.0 of 1 h)"
    assert one(Platform("q", q, hours_week=0.25)) == Choice("q", True, False, "0.8 h quota left, free, 1/1 slot(s) free")


def test_job_budget_spent_counts_on_paid_platforms_only():
    limits = Limits(max_cost_usd=3)
    paid = Platform("paid", prof("paid", usd_per_hour=2.0))
    assert one(paid, limits, dollars=3.2) == Choice("paid", False, False, "job budget spent ($3.20 of $3)")
    assert one(paid, limits, dollars=2.0) == Choice("paid", True, False, "$2/h, 1/1 slot(s) free")
    assert one(Platform("free", prof("free")), limits, dollars=3.2).ok


def test_job_hours_spent():
    c = one(Platform("a", prof()), Limits(max_hours=1), hours=1.4)
    assert c == Choice("a", False, False, "job hours spent (1.40 of 1 h)")


def test_busy_slots_are_worth_waiting_for():
    ch = policy.choose([Platform("a", prof(capacity=3), active=3), Platform("b", prof("b"), tries=1)], Limits(), 0, 0)
    assert ch[0] == Choice("a", False, True, "busy (3/3 running)")
    assert policy.pick(ch) is None
    assert policy.no_pick(ch) == (True, "waiting for a slot: a busy (3/3 running)")


def test_nothing_left_names_every_platform_and_its_reason():
    ch = policy.choose([Platform("a", prof(), tries=1), Platform("b", prof("b"), unavailable="no key")], Limits(), 0, 0)
    assert policy.no_pick(ch) == (False, "no platform left: a: used: 1 attempt(s), retries 0; b: no key")


# -- limits and accounting ----------------------------------------------------------------------------


def test_an_attempts_hour_limit_is_the_tightest_of_session_job_hours_and_quota():
    assert policy.hours_limit(prof(), None, 0.0, 0.0) is None
    assert policy.hours_limit(prof(session_hours=12.0), None, 0.0, 0.0) == 12.0
    assert policy.hours_limit(prof(session_hours=12.0), 5.0, 1.5, 0.0) == 3.5
    assert policy.hours_limit(prof(session_hours=12.0, quota_hours_per_week=30.0), 50.0, 0.0, 28.0) == 2.0


def test_the_dollars_left_bound_a_paid_attempts_hours_so_its_machine_enforces_the_budget():
    paid = prof(usd_per_hour=2.0, session_hours=24.0)
    assert policy.hours_limit(paid, None, 0.0, 0.0, max_cost_usd=10.0, dollars_used=4.0) == 3.0
    assert policy.hours_limit(paid, 2.0, 0.0, 0.0, max_cost_usd=10.0) == 2.0  # the job's hours are tighter
    assert policy.hours_limit(prof(session_hours=12.0), None, 0.0, 0.0, max_cost_usd=10.0) == 12.0  # free: no bound


def test_attempt_hours_run_from_launch_to_end_or_now():
    assert policy.attempt_hours({"launched_at": NOW - 2 * HOUR, "ended_at": None}, NOW) == 2.0
    assert policy.attempt_hours({"launched_at": NOW - 2 * HOUR, "ended_at": NOW - HOUR}, NOW) == 1.0
    assert policy.attempt_hours({"launched_at": NOW - 2 * HOUR, "ended_at": None}, NOW, since=NOW - HOUR / 2) == 0.5
    assert policy.attempt_hours({"launched_at": NOW, "ended_at": NOW - 5}, NOW) == 0.0


def test_the_quota_window_is_the_last_seven_days():
    week_ago = NOW - policy.WEEK_S
    atts = [{"launched_at": week_ago - 2 * HOUR, "ended_at": week_ago + HOUR},  # half in the window
            {"launched_at": NOW - HOUR, "ended_at": None},
            {"launched_at": week_ago - 9 * HOUR, "ended_at": week_ago - 8 * HOUR}]  # before it
    assert policy.week_hours(atts, NOW) == pytest.approx(2.0)


def test_spend_sums_hours_and_dollars():
    atts = [{"launched_at": NOW - 1.4 * HOUR, "ended_at": None, "usd_per_hour": 2.0},
            {"launched_at": NOW - 3 * HOUR, "ended_at": NOW - 2 * HOUR, "usd_per_hour": 0.0}]
    hours, dollars = policy.spend(atts, NOW)
    assert hours == pytest.approx(2.4) and dollars == pytest.approx(2.8)
    assert policy.spend([], NOW) == (0.0, 0.0)


# -- dependencies -----------------------------------------------------------------------------------


def test_dependencies_queue_fail_or_wait():
    assert policy.dependencies([], {}) == ("queued", "ready")
    assert policy.dependencies(["a", "b"], {"a": "succeeded", "b": "succeeded"}) == ("queued", "ready (a, b done)")
    assert policy.dependencies(["a", "b"], {"a": "succeeded", "b": "running"}) == (None, "")
    assert policy.dependencies(["a", "b", "c"], {"a": "failed", "b": "cancelled", "c": None}) == (
        "failed", "dependency a failed, b cancelled, c unknown")


def test_policy_and_judge_are_pure():
    """No database, store, run layout, clock or process in the modules that decide."""
    root = Path(__file__).resolve().parents[1] / "gwi" / "scheduler"
    banned = {"sqlite3", "time", "os", "subprocess", "state", "loop", "view", "store", "runs", "progress"}
    for name in ("policy.py", "judge.py"):
        tree = ast.parse((root / name).read_text())
        mods = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        mods |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        used = {m.split(".")[-1] for m in mods} | {m.split(".")[0] for m in mods}
        assert not used & banned, f"{name} imports {sorted(used & banned)}"


def test_the_wait_after_the_stores_outage_doubles_up_to_a_cap():
    assert [policy.backoff(n, 30, 600) for n in (1, 2, 3, 5, 9)] == [30, 60, 120, 480, 600]


def test_a_platform_whose_api_did_not_answer_is_waited_for_not_used_up():
    hung = policy.Platform("lam", prof("lam"), unavailable="lam API did not answer within 30 s", transient=True)
    ch = policy.choose([hung], Limits(), 0, 0)
    assert ch[0].busy and not ch[0].ok
    assert policy.no_pick(ch) == (True, "waiting for an answer: lam API did not answer within 30 s")
    # with a fallback the job goes there now, and lam keeps its tries
    assert policy.pick(policy.choose([hung, policy.Platform("b", prof("b"))], Limits(), 0, 0)).platform == "b"


# -- a plan against its deadline -------------------------------------------------------------------

from gwi.scheduler.policy import Capacity, Work, meet_deadline, timeline  # noqa: E402

CAP = {"kaggle": Capacity("kaggle", 1, quota_hours=30.0), "lambda": Capacity("lambda", 2)}


def test_timeline_places_like_the_loop():
    work = [Work("a", 0, ("kaggle", "lambda"), 10.0),
            Work("b", 0, ("kaggle", "lambda"), 4.0),
            Work("c", 0, ("lambda",), 2.0, after=("a",)),
            Work("d", 5, ("kaggle",), 1.0, after=("b",))]
    t = timeline(work, CAP)
    # a takes kaggle's one slot; b finds it taken and goes to lambda; c waits for a; d for b, then
    # kaggle is busy until 10 h
    assert (t["a"].platform, t["a"].start_h, t["a"].end_h) == ("kaggle", 0, 10)
    assert (t["b"].platform, t["b"].end_h) == ("lambda", 4)
    assert (t["c"].platform, t["c"].start_h, t["c"].end_h) == ("lambda", 10, 12)
    assert (t["d"].platform, t["d"].start_h) == ("kaggle", 10)


def test_timeline_respects_quotas_running_jobs_and_missing_platforms():
    work = [Work("run", 0, ("kaggle",), 3.0, running_on="kaggle"),
            Work("big", 9, ("kaggle", "lambda"), 28.0),  # 27 h of kaggle's quota left after "run"
            Work("nowhere", 0, ("colab",), 1.0)]
    t = timeline(work, CAP)
    assert t["run"].start_h == 0 and t["big"].platform == "lambda" and t["big"].start_h == 0
    assert t["nowhere"].platform is None


def test_a_late_plan_shrinks_the_least_important_budget_just_enough():
    work = [Work("main", 9, ("lambda",), 10.0, shrinkable=True),
            Work("extra", 1, ("lambda",), 8.0, shrinkable=True, after=("main",))]
    d = meet_deadline(work, {"lambda": Capacity("lambda", 1)}, hours_left=15.0)
    assert d.holds and not d.dropped and set(d.budgets) == {"extra"}
    assert d.budgets["extra"] == pytest.approx(5.0, abs=1e-6) and d.end_h <= 15.0
    # all of one priority: the plan's later job gives first
    same = [Work("a", 0, ("lambda",), 10.0, shrinkable=True), Work("b", 0, ("lambda",), 8.0, shrinkable=True)]
    d = meet_deadline(same, {"lambda": Capacity("lambda", 1)}, hours_left=15.0)
    assert d.budgets == {"b": pytest.approx(5.0, abs=1e-6)} and not d.dropped
    on_time = meet_deadline(work, {"lambda": Capacity("lambda", 1)}, hours_left=18.0)
    assert on_time.holds and not on_time.budgets and on_time.end_h == 18


def test_a_plan_that_cannot_hold_drops_the_lowest_priority_and_its_dependents():
    work = [Work("main", 9, ("lambda",), 10.0, shrinkable=True),
            Work("side", 0, ("lambda",), 6.0),
            Work("after-side", 5, ("lambda",), 2.0, after=("side",)),
            Work("keep", 3, ("lambda",), 1.0),
            Work("running", -5, ("lambda",), 3.0, running_on="lambda")]
    d = meet_deadline(work, {"lambda": Capacity("lambda", 1)}, hours_left=12.0)
    # running (lowest priority) is never dropped; side goes and takes after-side with it; main, the
    # most important, is not shrunk while a less important job (keep) can go; then it is: 12 - 3 = 9 h
    assert d.holds and set(d.dropped) == {"side", "after-side", "keep"}
    assert "priority 0" in d.dropped["side"] and "needs side" in d.dropped["after-side"]
    assert d.budgets == {"main": pytest.approx(9.0, abs=1e-6)}
    hopeless = meet_deadline(work, {"lambda": Capacity("lambda", 1)}, hours_left=1.0)
    assert not hopeless.holds and set(hopeless.dropped) == {"main", "side", "after-side", "keep"}


def test_dozens_of_jobs_on_several_platforms_meet_the_deadline_by_priority():
    import random

    rng = random.Random(7)
    cap = {"kaggle": Capacity("kaggle", 1, quota_hours=30.0), "colab": Capacity("colab", 1),
           "lambda": Capacity("lambda", 2), "local": Capacity("local", 1)}
    names = list(cap)
    work = []
    for i in range(48):
        after = tuple(f"j{k}" for k in rng.sample(range(i), k=min(i, rng.choice([0, 0, 1, 2]))))
        work.append(Work(f"j{i}", rng.randint(0, 5), tuple(rng.sample(names, k=rng.randint(1, 3))),
                         rng.uniform(0.5, 12.0), after=after, shrinkable=rng.random() < 0.6))
    full = meet_deadline(work, cap, hours_left=1e9)
    assert full.holds and not full.dropped and not full.budgets
    d = meet_deadline(work, cap, hours_left=full.end_h * 0.5)
    assert d.holds and d.end_h <= full.end_h * 0.5 + 1e-9
    by = {w.name: w for w in work}
    for name, hours in d.budgets.items():
        assert by[name].shrinkable and by[name].hours * policy.MIN_BUDGET_FRACTION - 1e-9 <= hours <= by[name].hours
    victims = [n for n, why in d.dropped.items() if why.startswith("dropped to meet")]
    kept = [w for w in work if w.name not in d.dropped]
    assert victims, "half the time cannot hold without dropping"
    # nothing kept is less important than a job dropped for the deadline
    assert min(w.priority for w in kept) >= max(by[v].priority for v in victims)
    for w in kept:
        assert d.placed[w.name].platform is None or d.placed[w.name].end_h <= full.end_h * 0.5 + 1e-9


def test_resources_are_matched_against_what_a_platform_has():
    from gwi.adapters.base import Offer
    from gwi.spec import Resources

    t4x2 = Offer(gpus=2, gpu="T4", cpus=4, memory_gb=29)
    assert t4x2.lacks(Resources(gpus=2, gpu="t4")) is None  # the type, case-insensitively
    assert t4x2.lacks(Resources(gpus=4)) == "needs 4 GPUs, has 2x T4, 4 CPUs, 29 GB"
    assert t4x2.lacks(Resources(gpus=1, gpu="A100")) == "needs GPU type A100, has 2x T4, 4 CPUs, 29 GB"
    assert t4x2.lacks(Resources(memory_gb=40)) == "needs 40 GB of memory, has 2x T4, 4 CPUs, 29 GB"
    assert t4x2.lacks(Resources(cpus=8)) == "needs 8 CPUs, has 2x T4, 4 CPUs, 29 GB"
    assert Offer(gpus=1, gpu="NVIDIA A100-SXM4-80GB").lacks(Resources(gpu="A100")) is None
    assert Offer().lacks(Resources(gpus=1)) == "needs 1 GPU, has no GPU"
    assert Offer(gpus=1).lacks(Resources(memory_gb=500, cpus=64)) is None  # not said: not held against the job
    # a platform whose machines cannot run the job is skipped for good, before anything else is asked
    c = one(Platform("a", prof(), unfit="needs 1 GPU, has no GPU", unavailable="credentials not set: A_KEY"))
    assert c == Choice("a", False, False, "needs 1 GPU, has no GPU")
