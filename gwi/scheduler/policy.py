"""Placement: which platform a job goes to next, and how long it may run there.

Pure functions over plain data: the loop gathers the facts (the job's tries per platform, each
platform's answer to "can you take jobs", its usage), these decide. No database, no adapter, no
clock: ``now`` is an argument.

A job's platforms are tried in the order its spec lists them. A platform is skipped (``ok`` false)
when it has no profile, the job used its ``1 + retries`` tries there, the platform cannot take
jobs (credentials, a store it cannot reach), its weekly quota is used, the job's dollar budget is
spent (paid platforms only) or its hour budget is; it is *busy* when only a full slot is in the
way, which is worth waiting for. The first ``ok`` platform takes the job.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .lifecycle import CANCELLED, FAILED, QUEUED, SUCCEEDED

if TYPE_CHECKING:  # types only: placement reads a few fields of each
    from ..adapters.base import Profile
    from ..spec import Limits

WEEK_S = 7 * 24 * 3600  # the quota window


@dataclass
class Choice:
    platform: str
    ok: bool
    busy: bool  # only a full slot is in the way: worth waiting for
    why: str


@dataclass(frozen=True)
class Platform:
    """One platform of a job, as placement sees it now."""

    name: str
    profile: Profile | None  # None: no profile of that name
    tries: int = 0  # the job's attempts there since it was last dispatched
    unavailable: str | None = None  # why it cannot take jobs now (credentials, store), None when it can
    hours_week: float = 0.0  # hours used in the quota window, every job's
    active: int = 0  # attempts running there now, every job's
    transient: bool = False  # ``unavailable`` will pass (its API did not answer): wait, do not move on for good
    unfit: str | None = None  # why its machines cannot run the job (its resources), None when they can


# -- accounting -------------------------------------------------------------------------------------


def attempt_hours(a: Mapping, now: float, since: float | None = None) -> float:
    """Hours an attempt ran (is running) up to ``now``, counted from ``since`` if later than its launch.
    A paid instance bills from its launch, boot and image pull included."""
    start = a["launched_at"]
    end = a["ended_at"] or now
    if since is not None:
        start = max(start, since)
    return max(0.0, end - start) / 3600


def week_hours(attempts: Iterable[Mapping], now: float) -> float:
    """Hours a platform's attempts used in the last 7 days (the quota window)."""
    return sum(attempt_hours(a, now, now - WEEK_S) for a in attempts)


def spend(attempts: Iterable[Mapping], now: float) -> tuple[float, float]:
    """(hours, dollars) over some attempts."""
    hours = dollars = 0.0
    for a in attempts:
        h = attempt_hours(a, now)
        hours += h
        dollars += h * a["usd_per_hour"]
    return hours, dollars


# -- placement -------------------------------------------------------------------------------------


def has_tries(tries: int, retries: int) -> bool:
    """Whether a platform has tries left for a job (one, plus its retries); the loop asks a platform
    whether it can take jobs only then."""
    return tries < 1 + retries


def choose(platforms: list[Platform], limits: Limits, hours_used: float, dollars_used: float) -> list[Choice]:
    """Each platform of a job, in its preference order, with whether it can take the job now and why.
    ``hours_used``/``dollars_used``: the job's spend since it was last dispatched."""
    return [choice(p, limits, hours_used, dollars_used) for p in platforms]


def choice(p: Platform, limits: Limits, hours_used: float, dollars_used: float) -> Choice:
    prof = p.profile
    if prof is None:
        return Choice(p.name, False, False, "no profile")
    if p.unfit:
        return Choice(p.name, False, False, p.unfit)
    if not has_tries(p.tries, limits.retries):
        return Choice(p.name, False, False, f"used: {p.tries} attempt(s), retries {limits.retries}")
    if p.unavailable:
        return Choice(p.name, False, p.transient, p.unavailable)
    notes = []
    if prof.quota_hours_per_week is not None:
        left = prof.quota_hours_per_week - p.hours_week
        if left <= 0:
            return Choice(p.name, False, False, f"weekly quota used ({p.hours_week:.1f} of {prof.quota_hours_per_week:g} h)")
        notes.append(f"{left:.1f} h quota left")
    if prof.usd_per_hour > 0:
        if limits.max_cost_usd is not None and dollars_used >= limits.max_cost_usd:
            return Choice(p.name, False, False, f"job budget spent (${dollars_used:.2f} of ${limits.max_cost_usd:g})")
        notes.append(f"${prof.usd_per_hour:g}/h")
    else:
        notes.append("free")
    if limits.max_hours is not None and hours_used >= limits.max_hours:
        return Choice(p.name, False, False, f"job hours spent ({hours_used:.2f} of {limits.max_hours:g} h)")
    if p.active >= prof.capacity:
        return Choice(p.name, False, True, f"busy ({p.active}/{prof.capacity} running)")
    notes.append(f"{prof.capacity - p.active}/{prof.capacity} slot(s) free")
    return Choice(p.name, True, False, ", ".join(notes))


def pick(choices: list[Choice]) -> Choice | None:
    """The platform that takes the job now: the first that can."""
    return next((c for c in choices if c.ok), None)


def no_pick(choices: list[Choice]) -> tuple[bool, str]:
    """When no platform can take the job: (whether to wait, because a slot will free up; why)."""
    busy = [c for c in choices if c.busy]
    if busy:
        slots = [f"{c.platform} {c.why}" for c in busy if c.why.startswith("busy")]
        answers = [c.why for c in busy if not c.why.startswith("busy")]
        return True, "; ".join((["waiting for a slot: " + "; ".join(slots)] if slots else [])
                               + (["waiting for an answer: " + "; ".join(answers)] if answers else []))
    return False, "no platform left: " + "; ".join(f"{c.platform}: {c.why}" for c in choices)


def fallback_order(choices: list[Choice]) -> tuple[Choice | None, list[Choice]]:
    """The platform a job would go to first (one that can take it, or will when a slot frees up) and
    the others in the order they would be tried."""
    first = next((c for c in choices if c.ok or c.busy), None)
    return first, [c for c in choices if c is not first]


def hours_limit(profile: Profile, max_hours: float | None, hours_used: float, hours_week: float,
                max_cost_usd: float | None = None, dollars_used: float = 0.0) -> float | None:
    """The new attempt's hour limit: the tightest of the platform's session cap, what is left of
    the job's hours, what is left of the platform's weekly quota, and the hours the job's dollars
    left buy at this platform's price; None when nothing limits it. The far side enforces it too
    (the wrapper's timeout, Lambda's watchdog), so the budget holds when no scheduler runs."""
    limits = [x for x in (profile.session_hours, None if max_hours is None else max_hours - hours_used) if x is not None]
    if profile.quota_hours_per_week is not None:
        limits.append(profile.quota_hours_per_week - hours_week)
    if max_cost_usd is not None and profile.usd_per_hour > 0:
        limits.append((max_cost_usd - dollars_used) / profile.usd_per_hour)
    return min(limits) if limits else None


def backoff(streak: int, base_s: float, cap_s: float) -> float:
    """How long a job waits before its next attempt after ``streak`` attempts in a row ended by the
    store's outage (or ``streak`` failed tries on the platform it retries on): ``base_s``, doubling,
    at most ``cap_s``."""
    return min(cap_s, base_s * 2 ** max(0, streak - 1))


def dependencies(after: list[str], states: Mapping[str, str | None]) -> tuple[str | None, str]:
    """A waiting job's next state from its ``after`` jobs' states (None: unknown): ``failed`` when one
    failed, was cancelled or is unknown; ``queued`` when all succeeded; None while it waits."""
    deps = [(d, states.get(d)) for d in after]
    bad = [f"{d} {st}" for d, st in deps if st in (FAILED, CANCELLED)]
    missing = [d for d, st in deps if st is None]
    if bad or missing:
        return FAILED, "dependency " + ", ".join(bad + [f"{m} unknown" for m in missing])
    if all(st == SUCCEEDED for _, st in deps):
        return QUEUED, "ready" + (f" ({', '.join(after)} done)" if after else "")
    return None, ""


# -- a plan against its deadline ------------------------------------------------------------------
#
# The loop estimates each unfinished job's hours (measured rates when it has run, its time budget,
# else a guess per kind), these place the jobs on the platforms' slots in time, and, when the
# plan's deadline cannot hold, shrink the time budgets of the least important jobs, then drop the
# least important ones (and what depends on them) until it holds.

# a budgeted job is never shrunk below this fraction of its budget: a model trained for much less
# is rarely worth its slot, and dropping says so more honestly
MIN_BUDGET_FRACTION = 0.25
# hours of a job that has never run and has no budget: a guess per kind, said to be one
GUESS_HOURS = {"train": 4.0, "synth": 1.0, "ensemble": 0.5, "predict": 0.5, "evaluate": 0.25}


@dataclass(frozen=True)
class Work:
    """An unfinished job as the deadline planner sees it."""

    name: str
    priority: int  # higher: more important
    platforms: tuple[str, ...]  # the platforms it may run on, in preference order
    hours: float  # hours left to run
    after: tuple[str, ...] = ()  # unfinished jobs it waits for (finished ones are left out)
    shrinkable: bool = False  # a time budget that may shrink (a train job sized by time, not started)
    running_on: str | None = None  # running now: it stays there and keeps its hours
    guessed: bool = False  # ``hours`` is a guess, not a measurement or a budget


@dataclass(frozen=True)
class Capacity:
    """A platform's slots and what is left of its weekly quota."""

    name: str
    slots: int
    quota_hours: float | None = None  # left this week; None: unlimited


@dataclass(frozen=True)
class Placed:
    job: str
    platform: str | None  # None: nowhere to run (no platform, or no quota left anywhere)
    start_h: float  # hours from now
    end_h: float


def timeline(work: list[Work], capacity: Mapping[str, Capacity]) -> dict[str, Placed]:
    """Where and when each job would run, as the loop places them: in dependency order (then higher
    priority first, then the plan's order), each on the first of its platforms with a free slot when
    it is ready, else on the one whose slot frees first; a platform whose weekly quota cannot hold
    the job is passed over. Running jobs hold their slots first."""
    lanes = {n: [0.0] * max(1, c.slots) for n, c in capacity.items()}
    quota = {n: c.quota_hours for n, c in capacity.items()}
    out: dict[str, Placed] = {}

    def take(platform: str, start: float, job: Work) -> None:
        lane = lanes[platform]
        i = min(range(len(lane)), key=lambda k: lane[k])
        lane[i] = start + job.hours
        if quota[platform] is not None:
            quota[platform] -= job.hours
        out[job.name] = Placed(job.name, platform, start, start + job.hours)

    for w in work:
        if w.running_on is not None and w.running_on in lanes:
            take(w.running_on, 0.0, w)
    order = {w.name: i for i, w in enumerate(work)}
    left = [w for w in work if w.name not in out]
    while left:
        ready = [w for w in left if all(a in out for a in w.after)]
        if not ready:  # a cycle or a dependency on an unknown job: nothing of it can be placed
            for w in left:
                out[w.name] = Placed(w.name, None, math.inf, math.inf)
            break
        w = min(ready, key=lambda j: (-j.priority, order[j.name]))
        left.remove(w)
        at = max([out[a].end_h for a in w.after], default=0.0)
        fits = [p for p in w.platforms if p in lanes and (quota[p] is None or quota[p] >= w.hours)]
        if not fits or math.isinf(at):
            out[w.name] = Placed(w.name, None, math.inf, math.inf)
            continue
        free = [p for p in fits if min(lanes[p]) <= at]
        p = free[0] if free else min(fits, key=lambda q: (min(lanes[q]), fits.index(q)))
        take(p, max(at, min(lanes[p])), w)
    return out


@dataclass
class DeadlinePlan:
    """What meeting the deadline takes: new budgets (hours) of some jobs, jobs dropped (with why),
    and the timeline that results."""

    holds: bool
    budgets: dict[str, float]
    dropped: dict[str, str]
    placed: dict[str, Placed]
    end_h: float  # when the last kept job ends, hours from now


def meet_deadline(work: list[Work], capacity: Mapping[str, Capacity], hours_left: float) -> DeadlinePlan:
    """Shrink, then drop, until the plan ends within ``hours_left``.

    1. Shrink the budgets of shrinkable jobs below the most important level (all of them once only
       that level is left), least important first (the plan's later jobs first among equals), each
       as little as needed (a bisection) and never below MIN_BUDGET_FRACTION.
    2. When that is not enough, drop the least important job that is not running (with the jobs that
       wait for it), restore the budgets and start again.
    Running jobs are neither shrunk nor dropped: their budget was fixed at launch."""
    dropped: dict[str, str] = {}
    order = {w.name: i for i, w in enumerate(work)}

    def least_first(jobs):
        return sorted(jobs, key=lambda j: (j.priority, -order[j.name]))

    while True:
        kept = [replace_after(w, dropped) for w in work if w.name not in dropped]
        budgets: dict[str, float] = {}
        plan = _end(kept, capacity, budgets)
        if plan[1] <= hours_left:
            return DeadlinePlan(True, budgets, dropped, plan[0], plan[1])
        idle = [w for w in kept if w.running_on is None]
        top = max((w.priority for w in idle), default=0)
        below_top = any(w.priority < top for w in idle)
        for w in least_first(w for w in idle if w.shrinkable and (w.priority < top or not below_top)):
            floor = w.hours * MIN_BUDGET_FRACTION
            budgets[w.name] = floor
            if _end(kept, capacity, budgets)[1] > hours_left:
                continue  # even at its floor the plan is late: keep it there, shrink the next
            lo, hi = floor, w.hours  # lo holds, hi does not: the largest budget that holds
            for _ in range(30):
                mid = (lo + hi) / 2
                budgets[w.name] = mid
                if _end(kept, capacity, budgets)[1] <= hours_left:
                    lo = mid
                else:
                    hi = mid
            budgets[w.name] = lo
            plan = _end(kept, capacity, budgets)
            return DeadlinePlan(True, budgets, dropped, plan[0], plan[1])
        if not idle:
            plan = _end(kept, capacity, budgets)
            return DeadlinePlan(False, budgets, dropped, plan[0], plan[1])
        v = least_first(idle)[0]
        dropped[v.name] = f"dropped to meet the deadline (priority {v.priority}, the lowest left)"
        for w in work:  # what waits for it cannot run either
            if w.name not in dropped and _depends(w.name, v.name, work):
                dropped[w.name] = f"dropped: it needs {v.name}, dropped to meet the deadline"


def replace_after(w: Work, dropped: Mapping[str, str]) -> Work:
    return w if not any(a in dropped for a in w.after) else Work(**{**w.__dict__, "after": tuple(
        a for a in w.after if a not in dropped)})


def _depends(job: str, on: str, work: list[Work]) -> bool:
    by = {w.name: w for w in work}
    seen, todo = set(), list(by[job].after) if job in by else []
    while todo:
        a = todo.pop()
        if a == on:
            return True
        if a not in seen and a in by:
            seen.add(a)
            todo += by[a].after
    return False


def _end(work: list[Work], capacity: Mapping[str, Capacity], budgets: Mapping[str, float]):
    """(the timeline, its end in hours) with ``budgets`` replacing some jobs' hours. Jobs with nowhere
    to run do not count: the loop reports them as such, and dropping others would not help them."""
    sized = [w if w.name not in budgets else Work(**{**w.__dict__, "hours": budgets[w.name]}) for w in work]
    placed = timeline(sized, capacity)
    return placed, max((p.end_h for p in placed.values() if p.platform is not None), default=0.0)
