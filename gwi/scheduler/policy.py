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
