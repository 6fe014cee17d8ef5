"""Reading the scheduler's state: what ``gwi status``, ``gwi history`` and ``dispatch --dry-run`` show.

A :class:`View` reads the state and does the accounting (hours, dollars, quota use) and placement
answers (which platform a job would go to) on top of it, without changing anything: opened with
:func:`open_view` it holds a read-only connection and never takes the scheduler's lock, so it can
look while a dispatcher works. The :class:`~gwi.scheduler.loop.Scheduler` is a View that also writes.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from ..adapters.base import Adapter, PlatformError, Profile, get_adapter, load_profiles
from ..errors import GwiError
from ..runs import run_url
from ..spec import Job
from . import controllers, policy
from .calls import Calls
from .lifecycle import ACTIVE
from .state import StateDB, gwi_home


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return float(value)
    except ValueError:
        raise GwiError(f"{name}: expected a number of seconds, got {value!r}") from None


class View:
    def __init__(self, state: StateDB, home: Path, profiles: dict[str, Profile] | None = None, clock=time.time,
                 calls: Calls | None = None):
        self.state = state
        self.home = home
        self.clock = clock
        self._profiles = profiles
        self._adapters: dict[str, Adapter] = {}
        # every adapter call has a deadline, here as in the loop: a hung API must not hang `gwi status`
        self.calls = calls or Calls(env_float("GWI_CALL_TIMEOUT_S", 30.0))

    def close(self) -> None:
        self.state.close()

    # -- platforms ----------------------------------------------------------------------------------

    @property
    def profiles(self) -> dict[str, Profile]:
        if self._profiles is None:
            self._profiles = load_profiles()
        return self._profiles

    def adapter(self, platform: str) -> Adapter:
        if platform not in self._adapters:
            if platform not in self.profiles:
                raise GwiError(f"platform {platform!r} has no profile (known: {', '.join(sorted(self.profiles))})")
            self._adapters[platform] = get_adapter(self.profiles[platform])
        return self._adapters[platform]

    @staticmethod
    def lane(platform: str) -> str:
        return f"{platform} API"

    def ask(self, platform: str, key, method: str, *args):
        """``adapter.<method>(*args)`` on the platform's lane, waited for at most the call timeout; one
        that does not answer raises a transient PlatformError ("lam API did not answer within 30 s")."""
        return self.calls.run(self.lane(platform), key, getattr(self.adapter(platform), method), *args)

    def _translate(self, platform: str, exc: Exception) -> PlatformError:
        try:
            return self.adapter(platform).translate(exc)
        except Exception:  # noqa: BLE001 - no adapter to translate with (a broken profile)
            return exc if isinstance(exc, PlatformError) else PlatformError(f"{platform}: {type(exc).__name__}: {exc}")

    # -- jobs, attempts, events -------------------------------------------------------------------

    # the rows themselves (jobs, attempts, events) are read from ``self.state``; a View adds what is
    # computed over them

    def job_def(self, row) -> Job:
        return Job.from_dict(json.loads(row["definition"]))

    def resolve(self, name: str) -> str:
        """``spec/job`` or an unambiguous ``job`` -> the job id."""
        if self.state.job(name) is not None:
            return name
        rows = self.state.job_ids_named(name)
        if len(rows) == 1:
            return rows[0]
        if rows:
            raise GwiError(f"job name {name!r} is in several specs: {', '.join(rows)}; give SPEC/JOB")
        known = self.state.first_job_ids(30)
        raise GwiError(f"no job {name!r}" + (f"; known: {', '.join(known)}" if known else "; nothing dispatched yet"))

    def run_url(self, row, job: Job | None = None) -> str:
        """The run folder of a job row: its ``outputs.run``, else the plan store's ``runs/<spec>/<job>``."""
        job = job or self.job_def(row)
        return job.outputs.get("run") or run_url(self.state.spec_store(row["spec"]), row["spec"], row["name"])

    def status_records(self, spec: str | None = None) -> list[dict]:
        """One dict per job (its latest attempt, progress, hours and dollars): what ``gwi status``,
        its ``--json`` and the dashboard show."""
        now = time.time()
        latest = self.state.latest_attempts()
        costs = self.costs()
        out = []
        for j in self.state.jobs(spec):
            a = latest.get(j["id"])
            prog = json.loads(a["progress"]) if a is not None and a["progress"] else {}
            hours, cost = costs.get(j["id"], (0.0, 0.0))
            active = a is not None and a["state"] in ACTIVE
            starting = j["state"] == "running" and a is not None and a["state"] == "pending"
            out.append({
                "job": j["id"], "spec": j["spec"], "kind": j["kind"], "state": j["state"], "reason": j["reason"],
                "shown_state": "starting" if starting else j["state"],  # launched, no heartbeat yet
                "platform": a["platform"] if a is not None else None, "attempt": a["n"] if a is not None else 0,
                "attempt_state": a["state"] if a is not None else None,
                "epoch": prog.get("epoch"), "epochs": prog.get("epochs"), "step": prog.get("step"),
                "total_steps": prog.get("total_steps"), "val_mae": prog.get("val_mae"),
                "best_val_mae": prog.get("best_val_mae"),
                "eta_s": prog.get("eta_s") if active else None,
                "heartbeat_age_s": (now - a["beat_seen_at"]) if active and a["beat_seen_at"] else None,
                "hours": hours, "cost_usd": cost, "progress_state": prog.get("state"),
            })
        return out

    # -- accounting -------------------------------------------------------------------------------

    def attempt_hours(self, a, now: float | None = None, since: float | None = None) -> float:
        return policy.attempt_hours(a, self.clock() if now is None else now, since)

    def usage(self, platform: str) -> dict:
        """Hours used in the last 7 days (the quota window), dollars in total, attempts running now."""
        now = self.clock()
        hours = policy.week_hours(self.state.platform_attempts(platform, ended_after=now - policy.WEEK_S), now)
        _, cost = policy.spend(self.state.platform_attempts(platform, paid=True), now)
        return {"hours_week": hours, "cost_usd": cost, "active": self.state.active_count(platform)}

    def platform_records(self) -> list[dict]:
        """One dict per profile (its settings, its usage, the credentials it lacks): what
        ``gwi platforms --json`` and the dashboard show."""
        fields = ("adapter", "path", "description", "gpu", "gpus", "cpus", "memory_gb", "quota_hours_per_week",
                  "session_hours", "usd_per_hour", "capacity", "credentials", "start_timeout_s")
        return [{"name": name, **{k: getattr(p, k) for k in fields}, "usage": self.usage(name),
                 "missing_credentials": p.missing_credentials()} for name, p in sorted(self.profiles.items())]

    def job_cost(self, job_id: str) -> tuple[float, float]:
        """(hours, dollars) over the attempts of a job since it was last dispatched."""
        rows = self.state.generation_attempts(job_id, self.state.generation(job_id))
        return policy.spend(rows, self.clock())

    def costs(self) -> dict[str, tuple[float, float]]:
        """job id -> (hours, dollars) for every job, in one query."""
        by_job: dict[str, list] = {}
        for a in self.state.billing_rows():
            by_job.setdefault(a["job_id"], []).append(a)
        now = self.clock()
        return {job_id: policy.spend(rows, now) for job_id, rows in by_job.items()}

    # -- the deadline -------------------------------------------------------------------------------

    def deadline_work(self, spec: str, jobs: list[Job]) -> list[policy.Work]:
        """A spec's unfinished jobs as the deadline planner sees them (see ``policy.meet_deadline``);
        platforms without a profile or with credentials missing are left out."""
        now = self.clock()
        latest = self.state.latest_attempts()
        states = {j.name: (r["state"] if (r := self.state.job(f"{spec}/{j.name}")) is not None else None)
                  for j in jobs}
        done = {n for n, st in states.items() if st in ("succeeded", "failed", "cancelled")}
        out = []
        for job in jobs:
            if job.name in done or controllers.owner(job.name, jobs):
                continue  # a sweep's trials (a cycle's rounds) are in its own estimate, and only it starts them
            a = latest.get(f"{spec}/{job.name}")
            running = a is not None and a["state"] in ("pending", "running")
            hours, shrinkable, guessed = _hours_left(job, a, running, now, self.profiles)
            usable = tuple(p for p in job.platforms
                           if p in self.profiles and not self.profiles[p].missing_credentials())
            out.append(policy.Work(job.name, job.priority, usable, hours,
                                   after=tuple(x for x in job.after if x not in done), shrinkable=shrinkable,
                                   running_on=a["platform"] if running else None, guessed=guessed))
        return out

    def capacity(self) -> dict[str, policy.Capacity]:
        out = {}
        for name, p in self.profiles.items():
            left = None
            if p.quota_hours_per_week is not None:
                left = max(0.0, p.quota_hours_per_week - self.usage(name)["hours_week"])
            out[name] = policy.Capacity(name, p.capacity, left)
        return out

    def deadline_plan(self, spec: str, jobs: list[Job], deadline: float) -> tuple[list[policy.Work], policy.DeadlinePlan]:
        work = self.deadline_work(spec, jobs)
        return work, policy.meet_deadline(work, self.capacity(), (deadline - self.clock()) / 3600)

    # -- placement --------------------------------------------------------------------------------

    def choices(self, job_id: str, job: Job, spec_store: str | None = None) -> list[policy.Choice]:
        """Each platform of the job, in preference order, with whether it can take the job now and why."""
        hours_used, dollars_used = self.job_cost(job_id) if job_id else (0.0, 0.0)
        store = self.state.spec_store(job_id.split("/")[0]) or spec_store
        generation = self.state.generation(job_id)
        facts = [self._platform(name, job, job_id, generation, store) for name in job.platforms]
        return policy.choose(facts, job.limits, hours_used, dollars_used)

    def _platform(self, name: str, job: Job, job_id: str, generation: int, store: str | None) -> policy.Platform:
        """What placement needs to know of one platform; its adapter is asked only while it has tries left."""
        prof = self.profiles.get(name)
        if prof is None:
            return policy.Platform(name, None)
        retries = job.limits.retries
        try:
            unfit = self.adapter(name).offers().lacks(job.resources)
        except GwiError as e:
            unfit = str(e)
        if unfit:
            return policy.Platform(name, prof, unfit=unfit)
        tries = self.state.tries(job_id, name, generation)
        if not policy.has_tries(tries, retries):
            return policy.Platform(name, prof, tries)
        try:
            why_not = self.ask(name, "available", "available") or (
                self.ask(name, "reachable_store", "reachable_store", store) if store else None)
        except PlatformError as e:
            # a platform that did not answer (or is still stuck on an earlier call) is waited for, not used up
            return policy.Platform(name, prof, tries, str(e), transient=e.retryable)
        except GwiError as e:
            why_not = str(e)
        if why_not:
            return policy.Platform(name, prof, tries, why_not)
        use = self.usage(name)
        return policy.Platform(name, prof, tries, None, use["hours_week"], use["active"])


# -- the deadline -----------------------------------------------------------------------------------

def _hours_left(job: Job, latest, running: bool, now: float, profiles: dict) -> tuple[float, bool, bool]:
    """(hours a job still needs, whether its budget may shrink, whether that is a guess): a running
    attempt's ETA or what its hour limit leaves; a time budget (with the attempt's start-up margin);
    an earlier attempt's ETA; else a guess per kind, never over the job's max_hours."""
    prog = json.loads(latest["progress"]) if latest is not None and latest["progress"] else {}
    if job.kind in controllers.BY_KIND:
        return controllers.BY_KIND[job.kind].hours(job)
    budget = (job.params.get("config") or {}).get("time_budget") if job.kind == "train" else None
    # the attempt's limit that leaves a budget inside it (budget.attempt_budget_s's inverse)
    budget_h = max(budget + 120.0, budget / 0.95) / 3600 if budget and not math.isinf(budget) else None
    if running:
        elapsed = (now - latest["launched_at"]) / 3600
        if prog.get("eta_s") is not None:
            return prog["eta_s"] / 3600, False, False
        if latest["hours_limit"] is not None or budget_h is not None:
            return max(0.0, min(h for h in (latest["hours_limit"], budget_h) if h is not None) - elapsed), False, False
        return max(0.1, policy.GUESS_HOURS.get(job.kind, 1.0) - elapsed), False, True
    if budget_h is not None:
        return budget_h, True, False
    caps = [h for h in (job.limits.max_hours, *[getattr(profiles.get(p), "session_hours", None) for p in job.platforms[:1]])
            if h is not None]
    if budget:  # auto: the attempt's limit
        return (min(caps) if caps else policy.GUESS_HOURS["train"]), True, not caps
    if prog.get("eta_s") is not None:
        return prog["eta_s"] / 3600, False, False
    guess = policy.GUESS_HOURS.get(job.kind, 1.0)
    return (guess if job.limits.max_hours is None else min(guess, job.limits.max_hours)), False, True


def open_view(home: str | Path | None = None, profiles: dict[str, Profile] | None = None) -> View:
    """The state as it is now, read-only: no lock, no writes, nothing created (no state yet: empty)."""
    home = Path(home).resolve() if home else gwi_home()
    return View(StateDB.open_readonly(home / "state.db"), home, profiles)
