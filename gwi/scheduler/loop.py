"""The scheduler: which job runs where, every attempt, and moving on when a platform lets us down.

It wires the parts: :mod:`.state` (what is recorded), :mod:`.policy` (where a job goes next),
:mod:`.judge` (what an attempt's platform and heartbeat say about it) and the adapters (which act).

One ``reconcile`` pass, under an exclusive file lock so two watchers never act at once:

1. every active attempt is asked for its platform state (``adapter.query``) and its heartbeat is
   read from the store; the judge's verdict is recorded. A lost or over-limit attempt is cancelled
   on its platform so nothing keeps running (or billing); a stop that failed is retried every pass.
2. a job whose attempt ended badly goes back in the queue; the platform that failed it counts one
   more try, and with ``retries`` used up the job moves to the next platform in its list. A job
   with a run resumes there from the run's latest checkpoint: the run URL is the job's, not the
   attempt's.
3. jobs whose ``after`` jobs all succeeded are queued; queued jobs are launched on the first platform
   in their list that can take them. When every platform is used up the job fails with each
   platform's reason.

Launches are made idempotent by attempt id: the attempt row is committed before the adapter is
asked, and an attempt without a handle is launched again with the same id, which adapters answer
with the launch they already made. One job's error (a broken profile, an adapter bug) is recorded
on that job and the pass goes on with the others.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sqlite3
import time
from concurrent.futures import Future
from pathlib import Path
from urllib.parse import urlsplit

from ..adapters.base import LaunchRequest, PlatformError, Profile, State
from ..budget import ENV_LIMIT
from ..config import ENV_CACHE_LIMIT
from ..errors import GwiError, StoreError
from ..progress import ENV_ATTEMPT, ENV_INTERVAL, ENV_URL
from ..redact import Redactor
from ..runs import CANCEL, LATEST, Run
from ..spec import Job, Spec
from ..store import split_url
from . import controllers, judge, policy
from .. import kinds
from .calls import Calls
from .judge import Attempt
from .lifecycle import (
    CANCELLED,
    FAILED,
    JOB_TERMINAL,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    WAITING,
)
from .state import BACKUP_SUFFIX, StateDB, gwi_home, secure_home
from .view import View, env_float

STORE_BACKOFF_S = 30.0  # the first wait after an attempt the store's outage ended; doubles, capped
STORE_BACKOFF_CAP_S = 600.0
RETRY_BACKOFF_S = 10.0  # the first wait before another try on the platform an attempt failed on; doubles
RETRY_BACKOFF_CAP_S = 300.0
BACKUP_EVERY_S = 600.0  # the online backup of state.db beside it


def _gist(message: str) -> str:
    """A message without its numbers ("not answered for 89 s" ~ "... 90 s"): what repeats, once."""
    return re.sub(r"\d+(\.\d+)?", "N", message)


def quick_split(url: str):
    """(store, name) for the scheduler's own reads: patience 0, an outage is an answer, not a wait."""
    return split_url(url, patience=0)


def store_lane(url: str) -> str:
    """One lane per store endpoint: a hung bucket does not hold up another's reads."""
    parts = urlsplit(url)
    return f"store {parts.scheme}://{parts.netloc}"


class LockBusy(GwiError):
    """Another scheduler process holds the lock."""


class Scheduler(View):
    """``call_timeout_s`` (env ``GWI_CALL_TIMEOUT_S``): the longest a pass waits for one platform or store
    answer. ``store_backoff_s`` (env ``GWI_STORE_BACKOFF_S``): the first wait before relaunching a job
    whose attempt the store's outage ended. ``retry_backoff_s`` (env ``GWI_RETRY_BACKOFF_S``): the first
    wait before another try on the platform that just failed the job. ``backup_every_s`` (env ``GWI_STATE_BACKUP_S``): how often
    a pass refreshes ``state.db.bak``."""

    def __init__(self, home: str | Path | None = None, profiles: dict[str, Profile] | None = None,
                 clock=time.time, *, call_timeout_s: float | None = None, store_backoff_s: float | None = None,
                 backup_every_s: float | None = None, retry_backoff_s: float | None = None):
        home = Path(home).resolve() if home else gwi_home()
        secure_home(home)
        super().__init__(StateDB.open(home / "state.db", clock), home, profiles, clock,
                         calls=Calls(call_timeout_s or env_float("GWI_CALL_TIMEOUT_S", 30.0)))
        self.store_backoff_s = store_backoff_s if store_backoff_s is not None else env_float(
            "GWI_STORE_BACKOFF_S", STORE_BACKOFF_S)
        self.retry_backoff_s = retry_backoff_s if retry_backoff_s is not None else env_float(
            "GWI_RETRY_BACKOFF_S", RETRY_BACKOFF_S)
        self.backup_every_s = backup_every_s if backup_every_s is not None else env_float(
            "GWI_STATE_BACKUP_S", BACKUP_EVERY_S)
        self._stores: dict = {}
        self._lock_fd: int | None = None
        self._redactor: Redactor | None = None
        self.state.redact = self.redact

    def redact(self, text: str) -> str:
        """``text`` with the secrets this scheduler hands to jobs masked (every text it records passes
        here): each platform's secret variables, the store's, and any variable named like a secret."""
        if self._redactor is None:
            self._redactor = Redactor.from_environ(set().union(*self._secret_vars().values()))
        return self._redactor(text)

    # -- the lock ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, wait: bool = True):
        """The scheduler lock (one reconcile at a time across processes). ``wait=False`` raises LockBusy."""
        if self._lock_fd is not None:  # re-entrant within a process
            yield
            return
        path = self.home / "scheduler.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                raise LockBusy(f"another gwi scheduler (pid {holder}) holds {path}") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            self._lock_fd = fd
            yield
        finally:
            self._lock_fd = None
            os.close(fd)  # closing drops the flock

    # -- dispatch ---------------------------------------------------------------------------------

    def submit(self, spec: Spec) -> list[str]:
        """Record a spec's jobs. Idempotent: a job already known with the same definition is left as
        it is (running, done or waiting); a failed or cancelled one is queued again."""
        now = self.clock()
        with self.state.tx() as st:
            st.save_spec(spec.name, spec.path, spec.sha256, spec.store, now, spec.deadline)
            lines = [self._submit_job(spec, pos, job, now) for pos, job in enumerate(spec.jobs)]
        self._backup_if_due(force=True)  # a restore must never bring back a state without this plan
        return lines

    def _submit_job(self, spec: Spec, pos: int, job: Job, now: float) -> str:
        st = self.state
        jid = f"{spec.name}/{job.name}"
        definition = json.dumps(job.to_dict(), sort_keys=True)
        row = st.job(jid)
        if row is None:
            st.insert_job(jid, spec.name, job.name, job.kind, pos, definition, WAITING, now)
            st.event(jid, "dispatched", f"from {spec.path}")
            return f"{job.name}: new"
        changed = row["definition"] != definition
        if row["state"] in (FAILED, CANCELLED):
            # a new generation: the platforms' tries and the hour limit start again
            st.new_generation(jid, WAITING, definition, pos, now)
            st.event(jid, "requeued", f"re-dispatched after it {row['state']}" + (" (definition changed)" if changed else ""))
            return f"{job.name}: {row['state']} before, queued again"
        if changed and row["state"] in (WAITING, QUEUED):
            st.update_job(jid, definition=definition, position=pos, updated_at=now)
            st.event(jid, "updated", "definition changed before launch")
            return f"{job.name}: definition updated"
        if changed:
            return (f"{job.name}: {row['state']} with an earlier definition; left as it is "
                    f"(gwi cancel {jid} and dispatch again to rerun)")
        return f"{job.name}: already {row['state']}"

    # -- the reconcile pass -------------------------------------------------------------------------

    def reconcile(self, launch: bool = True) -> None:
        with self.lock():
            rows = self.state.active_attempts()
            looks = self._look(rows)
            for row in rows:
                self._isolated(row["job_id"], row["id"], self._check_attempt, row, looks.get(row["id"]))
            for row in self.state.attempts_to_clean():
                self._isolated(row["job_id"], row["id"], self._retry_cleanup, row)
            self._promote()
            self._meet_deadlines()
            for row in self.state.jobs_in(QUEUED) + self.state.jobs_in(RUNNING):
                if kinds.get(row["kind"]).controller:  # a sweep or a cycle: run here, its jobs are ordinary ones
                    self._isolated(row["id"], None, controllers.BY_KIND[row["kind"]].advance, self, row)
            if launch:
                for row in self.state.jobs_in(QUEUED):
                    if not kinds.get(row["kind"]).controller:
                        self._place(row)
                self._promote()  # jobs that just failed for want of a platform fail their dependents now
            self.state.set_last_reconcile(self.clock())
            self.state.checkpoint()
            self._backup_if_due()

    def _isolated(self, job_id: str, attempt_id: str | None, fn, *args):
        """Run one job's step; an error is recorded on the job and the pass goes on with the others."""
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001 - one bad platform or profile must not stop every job
            self.state.note_error(job_id, attempt_id, f"{type(e).__name__}: {e}"[:500])
            return None

    def _look(self, rows) -> dict[str, tuple[Future, Future]]:
        """Ask every platform about its attempts and read every heartbeat, all at once, on the lanes'
        threads: the pass waits at most one call timeout for all of them together."""
        looks = {}
        for row in rows:
            if not row["handle"]:
                continue
            att = Attempt.of(row)
            try:
                query = self.calls.submit(self.lane(att.platform), att.id, self.adapter(att.platform).query, att.handle)
            except Exception as e:  # noqa: BLE001 - a broken profile: recorded when the attempt is checked
                query = Future()
                query.set_exception(e)
            beat = self.calls.submit(store_lane(att.heartbeat_url), ("beat", att.id), self._read_progress,
                                     att.heartbeat_url)
            looks[att.id] = (query, beat)
        self.calls.wait(f for pair in looks.values() for f in pair)
        return looks

    def _check_attempt(self, row, look: tuple[Future, Future] | None) -> None:
        now = self.clock()
        att = Attempt.of(row)
        job_row = self.state.job(att.job_id)
        job = self.job_def(job_row)
        limits = self._limits(job, att.platform)
        if att.handle is None:  # died between recording and launching, or a retryable launch error
            verdict = judge.unlaunched(att, limits, now)
            if verdict.kind == judge.RELAUNCH:
                self._launch(job_row, job, att)
            else:
                with self.state.tx():
                    self._end_attempt(job_row, att, verdict.state, verdict.reason, None)
            return
        status, query_error = self._answer(att, look[0])
        progress, store_ok, why = self._beat_answer(att, look[1])
        self._note_store(job_row, att, why)
        beat = judge.observe(att, progress, store_ok, now)
        note = judge.progress_note(att.progress, beat.progress)
        if note:
            self.state.event(att.job_id, "progress", note, att.id)
        _, dollars = self.job_cost(att.job_id)
        verdict = judge.judge(att, job_row["state"], limits, status, query_error, beat, now, dollars)
        self._record_verdict(job_row, att, verdict, self._beat_columns(att, beat, now))

    def _answer(self, att: Attempt, fut: Future) -> tuple:
        """(the platform's Status, None) or (None, the translated error of asking it, or of its silence)."""
        try:
            status = self.calls.outcome(self.lane(att.platform), fut)
        except Exception as e:  # noqa: BLE001 - one bad platform must not stop the pass
            err = self._translate(att.platform, e)
            self.state.update_attempt(att.id, last_error=str(err))
            return None, err
        if att.last_error:  # it answers again
            self.state.update_attempt(att.id, last_error="")
        return status, None

    def _beat_answer(self, att: Attempt, fut: Future) -> tuple[dict | None, bool, str | None]:
        """(the heartbeat, whether the store answered, why not)."""
        try:
            progress, ok = self.calls.outcome(store_lane(att.heartbeat_url), fut)
        except Exception as e:  # noqa: BLE001 - the store failed or did not answer in time: no verdict on silence
            return None, False, str(e)
        return progress, ok, None if ok else "the store did not answer"

    def _note_store(self, job_row, att: Attempt, why: str | None) -> None:
        """Say in the job's status line when its heartbeat cannot be read from here (and stop saying it)."""
        base = f"on {att.platform}"
        reason = base if why is None else f"{base}; heartbeat unreadable here, not judged: {why}"[:300]
        if job_row["state"] == RUNNING and job_row["reason"] != reason and (why or job_row["reason"].startswith(base + ";")):
            self.state.update_job(att.job_id, reason=reason)

    def _record_verdict(self, job_row, att: Attempt, verdict: judge.Verdict, updates: dict) -> None:
        reason = verdict.reason
        if verdict.kind == judge.STARTED:
            updates["state"] = State.RUNNING.value
            self.state.event(att.job_id, "running", verdict.reason, att.id)
        if verdict.stop:
            err, updates["cleanup"] = self._stop(att)
            if err is not None:
                reason += f"; stop failed: {self._stop_note(err)}"
        with self.state.tx() as st:
            st.update_attempt(att.id, **updates)
            if verdict.state is not None:
                self._end_attempt(job_row, att, verdict.state, reason, verdict.exit_code, verdict.blameless)

    def _limits(self, job: Job, platform: str) -> judge.Limits:
        return judge.Limits(start_timeout_s=job.limits.start_timeout_s or self.profiles[platform].start_timeout_s,
                            stall_s=job.limits.stall_s, heartbeat_s=job.heartbeat_s, max_cost_usd=job.limits.max_cost_usd,
                            progress_s=job.limits.progress_stall_s)

    @staticmethod
    def _beat_columns(att: Attempt, beat: judge.Beat, now: float) -> dict:
        cols = {"beat_seen_at": beat.seen_at}
        if beat.progress is not None:
            cols.update(progress=json.dumps(beat.progress), beat_key=beat.key)
            if att.started_at is None:
                cols["started_at"] = now
        return cols

    def _store_for(self, url: str):
        head, _, name = url.rpartition("/")
        store = self._stores.get(head)
        if store is None:
            store, _ = quick_split(url)
            self._stores[head] = store
        return store, name

    def _read_progress(self, url: str) -> tuple[dict | None, bool]:
        """(the heartbeat, True) or (None, True) when there is none yet; the store's error when it did
        not answer (an unreachable store is not a stalled job). Runs on a lane's thread: no SQLite."""
        store, name = self._store_for(url)
        try:
            prog = json.loads(store.get_bytes(name))
        except StoreError as e:
            if "no such object" in str(e):
                return None, True
            raise
        except ValueError:
            return None, True  # caught mid-write on a store without atomic puts; the next look will do
        return (prog, True) if isinstance(prog, dict) else (None, True)

    def _end_attempt(self, job_row, att: Attempt, state: str, reason: str, exit_code: int | None,
                     blameless: bool = False) -> None:
        now = self.clock()
        st = self.state
        st.update_attempt(att.id, state=state, ended_at=now, end_reason=reason, exit_code=exit_code,
                          blameless=int(blameless))
        jid = job_row["id"]
        if state == State.SUCCEEDED.value:
            st.update_job(jid, state=SUCCEEDED, reason="", updated_at=now, finished_at=now)
            st.event(jid, "succeeded", f"on {att.platform} (attempt {att.n})", att.id)
            return
        st.event(jid, state, f"attempt {att.n} on {att.platform}: {reason}", att.id)
        if job_row["state"] == CANCELLED:
            return
        why, not_before = f"attempt {att.n} {state}: {reason}", None
        if blameless:  # no platform's try was used; wait for the store before trying again
            wait = policy.backoff(st.blameless_streak(jid, job_row["generation"]), self.store_backoff_s,
                                        STORE_BACKOFF_CAP_S)
            why, not_before = f"{why}; next try in {wait:.0f} s", now + wait
        else:
            # another try on the same platform waits a little (a full disk or a blip there passes; a
            # crash loop must not use up every try in seconds); moving to the next platform does not
            tries = st.tries(jid, att.platform, job_row["generation"])
            if policy.has_tries(tries, self.job_def(job_row).limits.retries):
                wait = policy.backoff(tries, self.retry_backoff_s, RETRY_BACKOFF_CAP_S)
                why, not_before = f"{why}; retrying on {att.platform} in {wait:.0f} s", now + wait
        st.update_job(jid, state=QUEUED, reason=why[:500], updated_at=now, not_before=not_before)

    def _backup_if_due(self, force: bool = False) -> None:
        """Refresh ``state.db.bak`` when it is older than ``backup_every_s``, or at once after the plan
        changed (``force``: dispatch, cancel). Online: the pass goes on; a failure is kept in the
        state's meta for gwi doctor."""
        dest = self.state.path.with_name(self.state.path.name + BACKUP_SUFFIX)
        try:
            if not force and dest.exists() and time.time() - dest.stat().st_mtime < self.backup_every_s:
                return
            self.state.backup(dest)
        except (OSError, sqlite3.Error, GwiError) as e:
            self.state.set_meta("backup_error", f"{time.time():.0f} {dest}: {e}"[:500])

    # -- stopping ---------------------------------------------------------------------------------

    def _stop(self, att: Attempt) -> tuple[PlatformError | None, str | None]:
        """Cancel an attempt on its platform: (the error if that failed, what to keep in ``cleanup``
        so every pass retries it: only a retryable error; any other needs a person)."""
        if not att.handle:
            return None, None
        try:
            self.ask(att.platform, att.id, "cancel", att.handle)
        except Exception as e:  # noqa: BLE001
            err = self._translate(att.platform, e)
            return err, (str(err)[:500] if err.retryable else None)
        return None, None

    @staticmethod
    def _stop_note(err: PlatformError) -> str:
        return f"{err}; " + ("gwi retries it at every pass" if err.retryable else "stop it by hand")

    def _retry_cleanup(self, row) -> None:
        """Stop again what an earlier stop failed to stop (a paid instance must not be forgotten)."""
        att = Attempt.of(row)
        err, cleanup = self._stop(att)
        if err is None:
            self.state.event(att.job_id, "stopped", f"attempt {att.n} on {att.platform} stopped on retry", att.id)
        elif not err.retryable:
            self.state.event(att.job_id, "error", f"could not stop attempt {att.n} on {att.platform}: "
                                                  f"{self._stop_note(err)}", att.id)
        self.state.update_attempt(att.id, cleanup=cleanup)

    # -- queueing and launching ---------------------------------------------------------------------

    def _promote(self) -> None:
        """Waiting jobs whose ``after`` jobs all succeeded are queued; a failed dependency fails them."""
        with self.state.tx() as st:
            waiting = st.jobs_in(WAITING)
            states = st.job_states() if waiting else {}
            for row in waiting:
                job = self.job_def(row)
                state, why = policy.dependencies(job.after, {d: states.get(f"{row['spec']}/{d}") for d in job.after})
                now = self.clock()
                if state == FAILED:
                    st.update_job(row["id"], state=FAILED, reason=why, updated_at=now, finished_at=now)
                    st.event(row["id"], "failed", why)
                elif state == QUEUED:
                    st.update_job(row["id"], state=QUEUED, updated_at=now)
                    st.event(row["id"], "queued", why)

    def _meet_deadlines(self) -> None:
        """Plans with a deadline that cannot hold: shrink the budgets of their least important jobs, then
        drop the least important (``policy.meet_deadline``). Only jobs not yet launched are changed; a
        budget goes back to none when it is no longer needed."""
        for spec, deadline in self.state.deadlines():
            rows = {r["name"]: r for r in self.state.jobs(spec)}
            _, plan = self.deadline_plan(spec, [self.job_def(r) for r in rows.values()], deadline)
            now = self.clock()
            with self.state.tx() as st:
                for name, why in plan.dropped.items():
                    r = rows[name]
                    if r["state"] in (WAITING, QUEUED):
                        st.update_job(r["id"], state=CANCELLED, reason=why, updated_at=now, finished_at=now)
                        st.event(r["id"], "dropped", why)
                for name, r in rows.items():
                    if r["state"] not in (WAITING, QUEUED) or name in plan.dropped:
                        continue
                    new, old = plan.budgets.get(name), r["budget_hours"]
                    if new is None and old is not None:
                        st.update_job(r["id"], budget_hours=None)
                        st.event(r["id"], "budget", "the deadline holds again: its own time budget")
                    elif new is not None and (old is None or abs(new - old) > 0.01 * old):
                        st.update_job(r["id"], budget_hours=new)
                        st.event(r["id"], "budget", f"time budget cut to {new:.2f} h so the plan ends by its "
                                                    f"deadline (priority {self.job_def(r).priority})")

    def _place(self, row) -> None:
        # a launch refused at once (no capacity there) moves on to the next platform now
        for _ in range(len(self.job_def(row).platforms) * 4):
            if self._isolated(row["id"], None, self._assign, row) is None:
                break
            row = self.state.job(row["id"])
            if row["state"] != QUEUED:
                break

    def _assign(self, row) -> str | None:
        """Launch a queued job on its best platform now; the attempt id, or None when nothing launched."""
        if row["not_before"] is not None and self.clock() < row["not_before"]:
            return None  # backing off after the store's outage ended its last attempt
        job = self.job_def(row)
        published, why_not = self._published_step(job)
        if why_not:
            reason = f"waiting for the store to launch: {why_not}"[:500]
            if row["reason"] != reason:
                self.state.update_job(row["id"], reason=reason)
            return None
        choices = self.choices(row["id"], job)
        pick = policy.pick(choices)
        if pick is None:
            wait, why = policy.no_pick(choices)
            if not wait:
                with self.state.tx() as st:
                    st.update_job(row["id"], state=FAILED, reason=why, updated_at=self.clock(), finished_at=self.clock())
                    st.event(row["id"], "failed", why)
            elif row["reason"] != why:
                self.state.update_job(row["id"], reason=why)
            return None
        att = self._record_attempt(row, job, pick, published)
        try:  # a heartbeat or cancel flag at this path from an earlier state (a reset GWI_HOME) is not this attempt's
            self.calls.run(store_lane(att.heartbeat_url), ("clear", att.id), self._clear_beat, att.heartbeat_url)
        except (PlatformError, StoreError):
            pass
        self._launch(self.state.job(row["id"]), job, att)
        return att.id

    def _clear_beat(self, url: str) -> None:
        store, name = self._store_for(url)
        for key in (name, CANCEL):
            store.delete(key)

    def _record_attempt(self, row, job: Job, pick: policy.Choice, resume: int | None) -> Attempt:
        """The attempt, committed before its platform is asked (so a restart launches it, not another)."""
        prof = self.profiles[pick.platform]
        with self.state.tx() as st:
            n = st.attempt_count(row["id"]) + 1
            aid = f"{row['spec']}.{row['name']}.{n}"
            hours_used, dollars_used = self.job_cost(row["id"])
            week = self.usage(pick.platform)["hours_week"] if prof.quota_hours_per_week is not None else 0.0
            st.insert_attempt(aid, job_id=row["id"], n=n, platform=pick.platform, state=State.PENDING.value,
                              heartbeat_url=Run(self.run_url(row, job)).attempt_heartbeat_url(n),
                              launched_at=self.clock(), usd_per_hour=prof.usd_per_hour,
                              hours_limit=_cap(policy.hours_limit(prof, job.limits.max_hours, hours_used, week,
                                                                 job.limits.max_cost_usd, dollars_used),
                                               row["budget_hours"]),
                              resumed_from_step=resume, generation=row["generation"])
            st.update_job(row["id"], state=RUNNING, reason=f"on {pick.platform}", updated_at=self.clock())
            st.event(row["id"], "assigned", f"attempt {n} -> {pick.platform} ({pick.why})", aid)
        return Attempt.of(self.state.attempt(aid))

    def _published_step(self, job: Job) -> tuple[int | None, str | None]:
        """(the step of the run's newest published checkpoint, or None: no run or no checkpoint yet;
        why it cannot be known now). A new attempt must resume from there, never from earlier, so a
        training job is not launched while the store cannot say."""
        if "run" not in job.outputs:
            return None, None
        url = Run(job.outputs["run"]).key_url(LATEST)
        try:
            return self.calls.run(store_lane(url), ("latest", url), self._read_step, url), None
        except (StoreError, PlatformError) as e:
            return None, str(e)

    def _read_step(self, url: str) -> int | None:
        store, name = quick_split(url)
        try:
            return int(json.loads(store.get_bytes(name))["latest"]["step"])
        except StoreError as e:
            if "no such object" in str(e):
                return None
            raise
        except (KeyError, TypeError, ValueError):
            return None  # an unreadable pointer: the worker falls back for itself

    def _secret_vars(self) -> dict[str, set[str]]:
        """Per platform, the variables that hold its secrets."""
        out = {}
        for name, profile in self.profiles.items():
            try:
                out[name] = set(self.ask(name, "secret_vars", "secret_vars"))
            except Exception:  # noqa: BLE001 - a broken profile or a hung one: its declared credentials
                out[name] = set(profile.credentials)
        return out

    def _other_secrets(self, platform: str) -> set[str]:
        """Variables holding other platforms' secrets: a job here never sees them."""
        return set().union(*self._secret_vars().values()) - set(self.profiles[platform].credentials)

    def _launch(self, job_row, job: Job, att: Attempt) -> None:
        req = LaunchRequest(
            attempt_id=att.id, job=job_row["id"], kind=job.kind, argv=list(job.argv),
            env={ENV_ATTEMPT: att.id, ENV_URL: att.heartbeat_url, ENV_INTERVAL: str(job.heartbeat_s),
                 # a train job's time_budget fits inside the attempt's limit (gwi.budget)
                 **({ENV_LIMIT: f"{att.hours_limit * 3600:.0f}"} if att.hours_limit is not None else {}),
                 # the platform's disk for datasets (gwi train's default --cache-limit)
                 **({ENV_CACHE_LIMIT: limit} if (limit := self.profiles[att.platform].cache_limit) else {})},
            store_url=self.state.spec_store(job_row["spec"]), heartbeat_url=att.heartbeat_url,
            workdir=str(self.home / "attempts" / att.id), gpus=job.resources.gpus, hours_limit=att.hours_limit,
            scrub_env=tuple(sorted(self._other_secrets(att.platform))))
        try:
            handle = self.ask(att.platform, att.id, "launch", req)
        except Exception as e:  # noqa: BLE001 - translated and recorded; the pass goes on
            err = self._translate(att.platform, e)
            with self.state.tx() as st:
                if err.retryable:
                    st.update_attempt(att.id, last_error=str(err))
                    if _gist(str(err)) != _gist(att.last_error):  # one event per kind of refusal, not per pass
                        st.event(job_row["id"], "launch-retry", str(err), att.id)
                else:
                    self._end_attempt(job_row, att, State.FAILED.value, f"launch failed ({err.kind}): {err}", None)
            return
        with self.state.tx() as st:
            st.update_attempt(att.id, handle=json.dumps(handle))
            resumed = f", resuming from step {att.resumed_from_step}" if att.resumed_from_step else ""
            note = f": {handle['note']}" if handle.get("note") else ""  # what a person must do (Colab)
            st.event(job_row["id"], "launched", f"attempt {att.n} on {att.platform}{resumed}{note}", att.id)

    # -- user actions -------------------------------------------------------------------------------

    def cancel(self, job_id: str, reason: str = "cancelled by user") -> str:
        with self.lock():
            row = self.state.job(job_id)
            if row["state"] in JOB_TERMINAL:
                return f"{job_id} already {row['state']}"
            with self.state.tx() as st:
                st.update_job(job_id, state=CANCELLED, reason=reason, updated_at=self.clock(),
                              finished_at=self.clock())
                st.event(job_id, "cancelled", reason.removeprefix("cancelled "))
            msgs = [f"{job_id} cancelled"]
            if kinds.get(row["kind"]).controller:  # a sweep's trials (a cycle's rounds) go with it
                ctl = controllers.BY_KIND[row["kind"]]
                msgs += [self.cancel(r["id"], reason=f"cancelled with {row['kind']} {row['name']}")
                         for r in self.state.jobs(row["spec"])
                         if ctl.is_child(r["name"], row["name"]) and r["state"] not in JOB_TERMINAL]
            for att in map(Attempt.of, self.state.active_attempts(job_id)):
                err, cleanup = self._stop(att)
                with self.state.tx() as st:
                    st.update_attempt(att.id, state=State.CANCELLED.value, ended_at=self.clock(),
                                      end_reason=reason, cleanup=cleanup)
                msgs.append(f"attempt {att.n} on {att.platform} stopped" if err is None else
                            f"stopping attempt {att.n} on {att.platform} failed: {self._stop_note(err)}")
            self._backup_if_due(force=True)
            return "; ".join(msgs)

    def logs(self, job_id: str, attempt: int | None = None, tail: int | None = None) -> tuple[dict, str]:
        a = self.state.latest_attempt(job_id, attempt)
        if a is None:
            raise GwiError(f"{job_id} has no attempt{f' {attempt}' if attempt else ''} yet")
        if not a["handle"]:
            return dict(a), ""
        return dict(a), self.redact(self.ask(a["platform"], ("logs", a["id"]), "logs", json.loads(a["handle"]), tail))


def _cap(limit: float | None, budget_hours: float | None) -> float | None:
    """An attempt's hour limit, no more than the budget a deadline left its job."""
    return limit if budget_hours is None else budget_hours if limit is None else min(limit, budget_hours)
