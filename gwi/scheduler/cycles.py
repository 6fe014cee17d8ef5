"""Cycles: the scheduler runs a cycle job's rounds (:mod:`gwi.kinds.cycle`), adding each round's
jobs to the plan as the loop goes on.

Each reconcile pass, for each cycle job:

1. its jobs (``<cycle>-r<R>-...``) are read from the state; with none yet, round 0's evaluation and
   round 1's jobs are added, waiting on each other as :func:`gwi.kinds.cycle.round_steps` says;
2. a job of it that failed or was cancelled fails the cycle; when the cycle is queued again (a
   dispatch after it failed), those jobs are queued again first: the round goes on where it stopped,
   a train job from its run's last checkpoint;
3. once the evaluations of rounds 0..R have succeeded (R the newest round), the cycle ends when R is
   the last round or round R's validation MAE is not ``min_gain`` below the best before it, naming
   the best round; otherwise round R+1's jobs are added.

An evaluation's MAE is its attempt's last heartbeat's ``val_mae`` (``gwi evaluate`` reports it), as a
sweep reads its trials'. Nothing is kept beside the state: a restarted scheduler reads the same rows
and goes on. The cycle's ``reason`` is what ``gwi status`` shows: the round, what runs, the MAEs.
"""

from __future__ import annotations

import json
import math
import re

from ..kinds.cycle import model_of, round_steps
from ..runs import Run, run_url
from ..spec import Job
from . import policy
from .lifecycle import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, WAITING

_CHILD = re.compile(r"r(\d+)-(predict|pseudo|train|evaluate)(-s\d+)?")


def is_child(name: str, cycle: str) -> bool:
    return name.startswith(f"{cycle}-") and _CHILD.fullmatch(name[len(cycle) + 1:]) is not None


def round_of(name: str, cycle: str) -> int:
    return int(_CHILD.fullmatch(name[len(cycle) + 1:])[1])


def hours(job: Job) -> tuple[float, bool, bool]:
    """(hours the whole cycle may take, shrinkable, a guess): every round, none stopped early."""
    tb = job.params["train"]["config"].get("time_budget") or 0.0
    sized = 0 < tb < math.inf
    g = policy.GUESS_HOURS
    per_round = (tb / 3600 if sized else g["train"]) + g["predict"] * 2 + g["evaluate"]
    return g["evaluate"] + job.params["rounds"] * per_round, False, True


def round_jobs(cycle: Job, spec: str, store: str, r: int) -> list[Job]:
    """Round ``r``'s jobs, as the scheduler adds them: the cycle's platforms, limits and resources."""
    from .. import kinds

    out = []
    for step in round_steps(cycle.params, run_url(store, spec, cycle.name), r):
        kind, run = kinds.get(step.kind), Run(step.run)
        out.append(Job(name=f"{cycle.name}-{step.name}", kind=step.kind, platforms=list(cycle.platforms),
                       after=[f"{cycle.name}-{a}" for a in step.after], resources=cycle.resources,
                       limits=cycle.limits, heartbeat_s=cycle.heartbeat_s, params=step.params, line=cycle.line,
                       argv=kind.argv(step.params, run, cycle.heartbeat_s), outputs=kind.outputs(step.params, run),
                       priority=cycle.priority))
    return out


def advance(s, row) -> None:
    """One pass of a cycle job (``s``: the Scheduler, holding its lock)."""
    cycle = s.job_def(row)
    p = cycle.params
    spec = row["spec"]
    if row["state"] == QUEUED:
        _start(s, row, cycle)
    kids = {k["name"]: k for k in s.state.jobs(spec) if is_child(k["name"], cycle.name)}
    if not kids:
        _add(s, row, cycle, [0, 1])
        return
    r = max(round_of(n, cycle.name) for n in kids)
    bad = next((k for k in kids.values() if k["state"] in (FAILED, CANCELLED)), None)
    if bad is not None:
        _end(s, row, FAILED, f"round {round_of(bad['name'], cycle.name)}: {bad['name']} {bad['state']} "
                             f"({bad['reason']}); gwi dispatch again to go on from there")
        return
    maes, missing = _maes(s, spec, cycle.name, r)
    if missing:
        _end(s, row, FAILED, f"{missing} succeeded without a validation MAE")
        return
    if len(maes) == r + 1:  # every evaluation up to the newest round is in
        why = stop(maes, p["rounds"], p["min_gain"])
        if why is None:
            _add(s, row, cycle, [r + 1])
            return
        best = min(maes, key=maes.get)
        _end(s, row, SUCCEEDED, f"{_maes_text(maes)}; best round {best} "
                                f"({model_of(p, run_url(s.state.spec_store(spec), spec, cycle.name), best)}); {why}")
        return
    now_running = [k["name"].removeprefix(f"{cycle.name}-") + f" {k['state']}" for k in kids.values()
                   if k["state"] not in (SUCCEEDED, WAITING)]
    why = f"round {r}/{p['rounds']}: {', '.join(now_running) or 'waiting'}" + (f"; {_maes_text(maes)}" if maes else "")
    if s.state.job(row["id"])["reason"] != why[:500]:
        s.state.update_job(row["id"], reason=why[:500], updated_at=s.clock())


def stop(maes: dict[int, float], rounds: int, min_gain: float | None) -> str | None:
    """Why the cycle ends after its newest evaluated round (``maes``: round -> val MAE, rounds 0..R),
    or None: round R+1 runs. Before round 1 there is nothing to compare: it always runs."""
    r = max(maes)
    if r >= rounds:
        return "all rounds done"
    if r == 0 or min_gain is None:
        return None
    gain = min(maes[k] for k in range(r)) - maes[r]
    if gain < min_gain:
        return f"stopped: round {r} gained {gain:.1f} m/s over the best before it, less than min_gain {min_gain:g}"
    return None


def _start(s, row, cycle: Job) -> None:
    """QUEUED -> RUNNING; a cycle queued again takes its failed or cancelled jobs with it."""
    now = s.clock()
    kids = [k for k in s.state.jobs(row["spec"]) if is_child(k["name"], cycle.name)]
    again = [k for k in kids if k["state"] in (FAILED, CANCELLED)]
    with s.state.tx() as st:
        for k in again:
            st.new_generation(k["id"], WAITING, k["definition"], k["position"], now)
            st.event(k["id"], "requeued", f"with cycle {cycle.name}")
        st.update_job(row["id"], state=RUNNING, reason=f"cycle: {cycle.params['rounds']} round(s)", updated_at=now)
        st.event(row["id"], "cycle", f"resumed: {len(again)} job(s) queued again" if kids else
                 f"started: up to {cycle.params['rounds']} round(s) from {cycle.params['start']}")


def _add(s, row, cycle: Job, rounds: list[int]) -> None:
    store = s.state.spec_store(row["spec"])
    jobs = [j for r in rounds for j in round_jobs(cycle, row["spec"], store, r)]
    now = s.clock()
    with s.state.tx() as st:
        for j in jobs:
            jid = f"{row['spec']}/{j.name}"
            st.insert_job(jid, row["spec"], j.name, j.kind, row["position"], json.dumps(j.to_dict(), sort_keys=True),
                          WAITING, now)
            st.event(jid, "dispatched", f"round {round_of(j.name, cycle.name)} of cycle {cycle.name}")
        st.update_job(row["id"], reason=f"round {rounds[-1]}/{cycle.params['rounds']}: added", updated_at=now)
        st.event(row["id"], "round", f"round {rounds[-1]}: {len(jobs)} job(s) added")


def _maes(s, spec: str, cycle: str, r: int) -> tuple[dict[int, float], str | None]:
    """{round: val MAE} of the rounds evaluated so far, and an evaluation that succeeded without one."""
    latest = s.state.latest_attempts()
    out = {}
    for k in range(r + 1):
        jid = f"{spec}/{cycle}-r{k}-evaluate"
        row = s.state.job(jid)
        if row is None or row["state"] != SUCCEEDED:
            continue
        a = latest.get(jid)
        prog = json.loads(a["progress"]) if a is not None and a["progress"] else {}
        if prog.get("val_mae") is None:
            return out, jid
        out[k] = float(prog["val_mae"])
    return out, None


def _maes_text(maes: dict[int, float]) -> str:
    return "val MAE " + ", ".join(f"r{k} {v:.1f}" for k, v in sorted(maes.items()))


def _end(s, row, state: str, why: str) -> None:
    now = s.clock()
    with s.state.tx() as st:
        st.update_job(row["id"], state=state, reason=why[:500], updated_at=now, finished_at=now)
        st.event(row["id"], "cycle", why)
