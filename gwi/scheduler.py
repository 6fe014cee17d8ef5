"""The scheduler: which job runs where, every attempt, and moving on when a platform lets us down.

State lives in SQLite (WAL) at ``$GWI_HOME/state.db``: specs, jobs, attempts, events, with a
schema version in ``PRAGMA user_version``. Nothing is held in memory between commands, so the
scheduler can be killed at any moment: the next ``reconcile`` picks up where the last one stopped.

One ``reconcile`` pass, under an exclusive file lock so two watchers never act at once:

1. every active attempt is asked for its platform state (``adapter.query``) and its heartbeat
   (``progress.json`` in the store) is read. It is *lost* when no beat came within the start
   deadline, or the last new beat is older than the job's ``stall_s``; *failed* when the platform
   says so or it exits non-zero; *over budget* when its hours or the job's dollars pass a limit.
   A lost or over-budget attempt is cancelled on its platform so nothing keeps running (or billing).
2. a job whose attempt ended badly goes back in the queue; the platform that failed it counts one
   more attempt, and with ``retries`` used up it is skipped, so the job moves to the next platform
   in its list. A training job resumes there from its run's ``latest.json``: the run URL is the job's,
   not the attempt's.
3. jobs whose ``after`` jobs all succeeded are queued; queued jobs are launched on the first platform
   in their list that has credentials, quota, budget and a free slot. When every platform is used
   up the job fails with each platform's reason.

Beat age is measured on this machine's clock from when a *new* beat was first seen, so remote clock
skew does not matter and a scheduler restarted after a long pause does not declare live attempts
lost: their beat has changed since it last looked.

Launches are made idempotent by attempt id: the attempt row is committed before the adapter is
asked, and an attempt without a handle is launched again with the same id, which adapters answer
with the launch they already made.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from .adapters.base import Adapter, LaunchRequest, PlatformError, Profile, State, get_adapter, load_profiles
from .errors import GwiError, StoreError
from .progress import ENV_ATTEMPT, ENV_INTERVAL, ENV_URL
from .spec import Job, Spec
from .store import split_url

SCHEMA_VERSION = 2
# what each version adds to the one before (v1 is _SCHEMA without these columns)
_MIGRATIONS = {
    2: ["ALTER TABLE attempts ADD COLUMN cleanup TEXT",  # a stop that failed: retried every pass
        "ALTER TABLE attempts ADD COLUMN generation INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE jobs ADD COLUMN generation INTEGER NOT NULL DEFAULT 0"],
}
WEEK_S = 7 * 24 * 3600

# job states
WAITING, QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "waiting", "queued", "running", "succeeded", "failed", "cancelled"
JOB_TERMINAL = (SUCCEEDED, FAILED, CANCELLED)
ACTIVE = (State.PENDING.value, State.RUNNING.value)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS specs (
    name TEXT PRIMARY KEY, path TEXT NOT NULL, sha256 TEXT NOT NULL, store TEXT NOT NULL, dispatched_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,            -- spec/job
    spec TEXT NOT NULL, name TEXT NOT NULL, kind TEXT NOT NULL, position INTEGER NOT NULL,
    definition TEXT NOT NULL,       -- Job.to_dict() as JSON
    state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL, updated_at REAL NOT NULL, finished_at REAL);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS attempts (
    id TEXT PRIMARY KEY,            -- spec.job.n
    job_id TEXT NOT NULL REFERENCES jobs(id), n INTEGER NOT NULL, platform TEXT NOT NULL,
    state TEXT NOT NULL, handle TEXT, heartbeat_url TEXT NOT NULL,
    launched_at REAL NOT NULL, started_at REAL, ended_at REAL, end_reason TEXT NOT NULL DEFAULT '', exit_code INTEGER,
    usd_per_hour REAL NOT NULL DEFAULT 0, hours_limit REAL, cost_limit REAL,
    progress TEXT, beat_key TEXT, beat_seen_at REAL, resumed_from_step INTEGER, last_error TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS attempts_job ON attempts(job_id);
CREATE INDEX IF NOT EXISTS attempts_state ON attempts(state);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, job_id TEXT NOT NULL, attempt_id TEXT,
    kind TEXT NOT NULL, message TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_job ON events(job_id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def gwi_home() -> Path:
    return Path(os.environ.get("GWI_HOME", ".gwi")).resolve()


@dataclass
class Choice:
    platform: str
    ok: bool
    busy: bool  # only a full slot is in the way: worth waiting for
    why: str


class LockBusy(GwiError):
    """Another scheduler process holds the lock."""


class Scheduler:
    def __init__(self, home: str | Path | None = None, profiles: dict[str, Profile] | None = None,
                 clock=time.time):
        self.home = Path(home).resolve() if home else gwi_home()
        self.home.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self._profiles = profiles
        self._adapters: dict[str, Adapter] = {}
        self._stores: dict = {}
        self.db = self._connect(self.home / "state.db")
        self._lock_fd: int | None = None

    # -- storage ----------------------------------------------------------------------------------

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        # switching to WAL needs the database to itself for a moment: a second gwi starting at the
        # same time (gwi status beside gwi dispatch) gets SQLITE_BUSY without waiting, so retry
        deadline = time.monotonic() + 30
        while db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            try:
                db.execute("PRAGMA journal_mode=WAL")
            except sqlite3.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=30000")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise GwiError(f"{path}: state written by a newer gwi (schema {version}, this gwi knows {SCHEMA_VERSION}); "
                           "upgrade gwi or point GWI_HOME elsewhere")
        if version < SCHEMA_VERSION:
            db.execute("BEGIN IMMEDIATE")
            try:
                version = db.execute("PRAGMA user_version").fetchone()[0]  # another process may have migrated
                if version == 0:
                    for stmt in _SCHEMA.split(";"):
                        if stmt.strip():
                            db.execute(stmt)
                    version = 1
                for v in range(version + 1, SCHEMA_VERSION + 1):
                    for stmt in _MIGRATIONS[v]:
                        db.execute(stmt)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return db

    @contextlib.contextmanager
    def tx(self):
        """One write transaction (BEGIN IMMEDIATE: writers queue instead of failing)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def event(self, job_id: str, kind: str, message: str, attempt_id: str | None = None) -> None:
        self.db.execute("INSERT INTO events(time, job_id, attempt_id, kind, message) VALUES (?,?,?,?,?)",
                        (self.clock(), job_id, attempt_id, kind, message))

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

    # -- the lock ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, wait: bool = True):
        """The scheduler lock (one reconcile at a time across processes). ``wait=False`` raises LockBusy."""
        if self._lock_fd is not None:  # re-entrant within a process
            yield
            return
        path = self.home / "scheduler.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
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
        out = []
        with self.tx() as db:
            db.execute("INSERT INTO specs(name, path, sha256, store, dispatched_at) VALUES (?,?,?,?,?) "
                       "ON CONFLICT(name) DO UPDATE SET path=excluded.path, sha256=excluded.sha256, "
                       "store=excluded.store, dispatched_at=excluded.dispatched_at",
                       (spec.name, spec.path, spec.sha256, spec.store, now))
            for pos, job in enumerate(spec.jobs):
                jid = f"{spec.name}/{job.name}"
                definition = json.dumps(job.to_dict(), sort_keys=True)
                row = db.execute("SELECT state, definition FROM jobs WHERE id=?", (jid,)).fetchone()
                if row is None:
                    db.execute("INSERT INTO jobs(id, spec, name, kind, position, definition, state, created_at, updated_at) "
                               "VALUES (?,?,?,?,?,?,?,?,?)", (jid, spec.name, job.name, job.kind, pos, definition,
                                                              WAITING, now, now))
                    self.event(jid, "dispatched", f"from {spec.path}")
                    out.append(f"{job.name}: new")
                    continue
                changed = row["definition"] != definition
                if row["state"] in (FAILED, CANCELLED):
                    # a new generation: the platforms' tries and the hour limit start again
                    db.execute("UPDATE jobs SET state=?, reason='', definition=?, position=?, updated_at=?, "
                               "finished_at=NULL, generation=generation+1 WHERE id=?", (WAITING, definition, pos, now, jid))
                    self.event(jid, "requeued", f"re-dispatched after it {row['state']}"
                                                + (" (definition changed)" if changed else ""))
                    out.append(f"{job.name}: {row['state']} before, queued again")
                elif changed and row["state"] in (WAITING, QUEUED):
                    db.execute("UPDATE jobs SET definition=?, position=?, updated_at=? WHERE id=?",
                               (definition, pos, now, jid))
                    self.event(jid, "updated", "definition changed before launch")
                    out.append(f"{job.name}: definition updated")
                elif changed:
                    out.append(f"{job.name}: {row['state']} with an earlier definition; left as it is "
                               f"(gwi cancel {jid} and dispatch again to rerun)")
                else:
                    out.append(f"{job.name}: already {row['state']}")
        return out

    def job_def(self, row) -> Job:
        return Job.from_dict(json.loads(row["definition"]))

    # -- accounting -------------------------------------------------------------------------------

    def attempt_hours(self, a, now: float | None = None, since: float | None = None) -> float:
        now = self.clock() if now is None else now
        start = a["launched_at"]  # a paid instance bills from its launch, boot and image pull included
        end = a["ended_at"] or now
        if since is not None:
            start = max(start, since)
        return max(0.0, end - start) / 3600

    def usage(self, platform: str) -> dict:
        """Hours used in the last 7 days (the quota window), dollars in total, attempts running now."""
        now = self.clock()
        since = now - WEEK_S
        hours = cost = 0.0
        for a in self.db.execute("SELECT * FROM attempts WHERE platform=? AND (ended_at IS NULL OR ended_at>?)",
                                 (platform, since)):
            hours += self.attempt_hours(a, now, since)
        for a in self.db.execute("SELECT * FROM attempts WHERE platform=? AND usd_per_hour>0", (platform,)):
            cost += self.attempt_hours(a, now) * a["usd_per_hour"]
        active = self.db.execute("SELECT COUNT(*) FROM attempts WHERE platform=? AND state IN (?,?)",
                                 (platform, *ACTIVE)).fetchone()[0]
        return {"hours_week": hours, "cost_usd": cost, "active": active}

    def _generation(self, job_id: str) -> int:
        r = self.db.execute("SELECT generation FROM jobs WHERE id=?", (job_id,)).fetchone()
        return r["generation"] if r else 0

    def job_cost(self, job_id: str) -> tuple[float, float]:
        """(hours, dollars) over the attempts of a job since it was last dispatched."""
        hours = cost = 0.0
        for a in self.db.execute("SELECT * FROM attempts WHERE job_id=? AND generation=?",
                                 (job_id, self._generation(job_id))):
            h = self.attempt_hours(a)
            hours += h
            cost += h * a["usd_per_hour"]
        return hours, cost

    def choices(self, job_id: str, job: Job, spec_store: str | None = None) -> list[Choice]:
        """Each platform of the job, in preference order, with whether it can take the job now and why."""
        out = []
        hours_used, cost_used = self.job_cost(job_id) if job_id else (0.0, 0.0)
        row = self.db.execute("SELECT store FROM specs WHERE name=?", (job_id.split("/")[0],)).fetchone()
        store = row["store"] if row else spec_store
        for name in job.platforms:
            prof = self.profiles.get(name)
            if prof is None:
                out.append(Choice(name, False, False, "no profile"))
                continue
            tries = self.db.execute("SELECT COUNT(*) FROM attempts WHERE job_id=? AND platform=? AND generation=?",
                                    (job_id, name, self._generation(job_id))).fetchone()[0]
            if tries >= 1 + job.limits.retries:
                out.append(Choice(name, False, False, f"used: {tries} attempt(s), retries {job.limits.retries}"))
                continue
            try:
                adapter = self.adapter(name)
                why_not = adapter.available() or (adapter.reachable_store(store) if store else None)
            except (GwiError, PlatformError) as e:
                why_not = str(e)
            if why_not:
                out.append(Choice(name, False, False, why_not))
                continue
            use = self.usage(name)
            notes = []
            if prof.quota_hours_per_week is not None:
                left = prof.quota_hours_per_week - use["hours_week"]
                if left <= 0:
                    out.append(Choice(name, False, False, f"weekly quota used ({use['hours_week']:.1f} of "
                                                          f"{prof.quota_hours_per_week:g} h)"))
                    continue
                notes.append(f"{left:.1f} h quota left")
            if prof.usd_per_hour > 0:
                if job.limits.max_cost_usd is not None and cost_used >= job.limits.max_cost_usd:
                    out.append(Choice(name, False, False, f"job budget spent (${cost_used:.2f} of "
                                                          f"${job.limits.max_cost_usd:g})"))
                    continue
                notes.append(f"${prof.usd_per_hour:g}/h")
            else:
                notes.append("free")
            if job.limits.max_hours is not None and hours_used >= job.limits.max_hours:
                out.append(Choice(name, False, False, f"job hours spent ({hours_used:.2f} of {job.limits.max_hours:g} h)"))
                continue
            if use["active"] >= prof.capacity:
                out.append(Choice(name, False, True, f"busy ({use['active']}/{prof.capacity} running)"))
                continue
            notes.append(f"{prof.capacity - use['active']}/{prof.capacity} slot(s) free")
            out.append(Choice(name, True, False, ", ".join(notes)))
        return out

    # -- the reconcile pass -------------------------------------------------------------------------

    def reconcile(self, launch: bool = True) -> None:
        with self.lock():
            for a in self.db.execute("SELECT * FROM attempts WHERE state IN (?,?) ORDER BY launched_at",
                                     ACTIVE).fetchall():
                self._isolated(a["job_id"], a["id"], self._check_attempt, a)
            for a in self.db.execute("SELECT * FROM attempts WHERE cleanup IS NOT NULL").fetchall():
                self._isolated(a["job_id"], a["id"], self._retry_cleanup, a)
            self._promote()
            if launch:
                for row in self.db.execute("SELECT * FROM jobs WHERE state=? ORDER BY created_at, position",
                                           (QUEUED,)).fetchall():
                    # a launch refused at once (no capacity there) moves on to the next platform now
                    for _ in range(len(self.job_def(row).platforms) * 4):
                        if self._isolated(row["id"], None, self._assign, row) is None:
                            break
                        row = self.db.execute("SELECT * FROM jobs WHERE id=?", (row["id"],)).fetchone()
                        if row["state"] != QUEUED:
                            break
                self._promote()  # jobs that just failed for want of a platform fail their dependents now
            self.db.execute("INSERT INTO meta(key, value) VALUES ('last_reconcile', ?) "
                            "ON CONFLICT(key) DO UPDATE SET value=excluded.value", (str(self.clock()),))

    def _isolated(self, job_id: str, attempt_id: str | None, fn, *args):
        """Run one job's step; an error is recorded on the job and the pass goes on with the others."""
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001 - one bad platform or profile must not stop every job
            msg = f"{type(e).__name__}: {e}"[:500]
            try:
                if attempt_id:
                    self.db.execute("UPDATE attempts SET last_error=? WHERE id=?", (msg, attempt_id))
                last = self.db.execute("SELECT message FROM events WHERE job_id=? ORDER BY id DESC LIMIT 1",
                                       (job_id,)).fetchone()
                if last is None or last["message"] != msg:
                    self.event(job_id, "error", msg, attempt_id)
            except sqlite3.Error:
                pass
            return None

    def _store_for(self, url: str):
        head, _, name = url.rpartition("/")
        store = self._stores.get(head)
        if store is None:
            store, _ = split_url(url)
            self._stores[head] = store
        return store, name

    def _read_progress(self, url: str) -> tuple[dict | None, bool]:
        """(the heartbeat, whether the store answered). An unreachable store is not a stalled job."""
        store, name = self._store_for(url)
        try:
            prog = json.loads(store.get_bytes(name))
        except StoreError as e:
            return None, "no such object" in str(e)
        except ValueError:
            return None, True  # caught mid-write on a store without atomic puts; the next look will do
        return (prog, True) if isinstance(prog, dict) else (None, True)

    def _stop(self, a) -> tuple[PlatformError | None, str | None]:
        """Cancel an attempt on its platform: (the error if that failed, what to keep in ``cleanup``
        so every pass retries it: only a retryable error; any other needs a person)."""
        if not a["handle"]:
            return None, None
        adapter = self.adapter(a["platform"])
        try:
            adapter.cancel(json.loads(a["handle"]))
        except Exception as e:  # noqa: BLE001
            err = adapter.translate(e)
            return err, (str(err)[:500] if err.retryable else None)
        return None, None

    @staticmethod
    def _stop_note(err: PlatformError) -> str:
        return f"{err}; " + ("gwi retries it at every pass" if err.retryable else "stop it by hand")

    def _retry_cleanup(self, a) -> None:
        """Stop again what an earlier stop failed to stop (a paid instance must not be forgotten)."""
        err, cleanup = self._stop(a)
        if err is None:
            self.event(a["job_id"], "stopped", f"attempt {a['n']} on {a['platform']} stopped on retry", a["id"])
        elif not err.retryable:
            self.event(a["job_id"], "error", f"could not stop attempt {a['n']} on {a['platform']}: "
                                             f"{self._stop_note(err)}", a["id"])
        self.db.execute("UPDATE attempts SET cleanup=? WHERE id=?", (cleanup, a["id"]))

    def _check_attempt(self, a) -> None:
        now = self.clock()
        job_row = self.db.execute("SELECT * FROM jobs WHERE id=?", (a["job_id"],)).fetchone()
        job = self.job_def(job_row)
        adapter = self.adapter(a["platform"])
        if a["handle"] is None:  # died between recording and launching, or a retryable launch error
            limit = job.limits.start_timeout_s or self.profiles[a["platform"]].start_timeout_s
            if now - a["launched_at"] > limit:
                with self.tx():
                    self._end_attempt(job_row, job, a, State.LOST.value,
                                      f"not launched within {limit:g} s ({a['last_error'] or 'no handle'})", None)
            else:
                self._launch(job_row, job, a)
            return
        handle = json.loads(a["handle"])
        status, reason = None, None
        try:
            status = adapter.query(handle)
        except Exception as e:  # noqa: BLE001 - one bad platform must not stop the pass
            err = adapter.translate(e)
            self.db.execute("UPDATE attempts SET last_error=? WHERE id=?", (str(err), a["id"]))
            # a transient failure (an SSH drop, an API hiccup) or missing credentials in this shell
            # leave the platform's view unknown: the heartbeat still decides; 'fatal' is a verdict
            if err.kind == "fatal":
                reason = f"platform query failed: {err}"
        prog, store_ok = self._read_progress(a["heartbeat_url"])
        beat_key = None if prog is None else f"{prog.get('unix_time')}:{prog.get('beat')}"
        seen_at = a["beat_seen_at"]
        if beat_key is not None and beat_key != a["beat_key"]:
            seen_at = now
        updates = {"progress": json.dumps(prog) if prog is not None else a["progress"], "beat_key": beat_key or a["beat_key"],
                   "beat_seen_at": seen_at}
        if prog is not None and a["started_at"] is None:
            updates["started_at"] = now
        self._progress_events(a, prog)

        end_state = end_reason = None
        exit_code = None
        # the process's own last word; some platforms (Colab) can say nothing else, and on others
        # it covers a platform that cannot be asked right now
        final = prog.get("state") if prog and prog.get("state") in ("succeeded", "failed") else None
        grace = max(2 * job.heartbeat_s, 10.0)
        stop_it = False  # ended by our verdict, not the platform's: stop it there
        if reason is not None:
            end_state, end_reason, stop_it = State.LOST.value, reason, True
        elif job_row["state"] == CANCELLED:  # cancelled while the scheduler could not stop it
            end_state, end_reason, stop_it = State.CANCELLED.value, "cancelled by user", True
        elif status is not None and status.state.terminal:
            end_state, exit_code = status.state.value, status.exit_code
            stop_it = status.state == State.LOST  # e.g. its wrapper died; what it started may live on
            end_reason = status.message or ("exited 0" if status.state == State.SUCCEEDED else status.state.value)
            err_text = str(prog.get("error") or "") if prog else ""
            if status.state != State.SUCCEEDED and err_text and err_text not in end_reason:
                end_reason += f" ({err_text[:300]})"
        else:
            limit = job.limits.start_timeout_s or self.profiles[a["platform"]].start_timeout_s
            hours = self.attempt_hours(a, now)
            _, cost = self.job_cost(a["job_id"])
            if status is not None and status.silent:
                pass  # no heartbeat can come: its platform's state and the hour limit decide
            elif not store_ok:
                pass  # the store is unreachable from here: no verdict on silence this pass
            elif final and seen_at is not None:
                # it said it finished (so silence is expected now); once the platform has had a grace
                # to report the end and has not, believe it, and release what the platform still holds
                if now - seen_at > grace:
                    end_state = final
                    end_reason = "finished (by its heartbeat)" if final == "succeeded" else \
                        f"failed (by its heartbeat): {str(prog.get('error', '?'))[:300]}"
            elif seen_at is None and now - a["launched_at"] > limit:
                end_state, end_reason = State.LOST.value, f"no heartbeat within {limit:g} s of launch"
            elif seen_at is not None and now - seen_at > job.limits.stall_s:
                end_state, end_reason = State.LOST.value, (f"heartbeat stalled: none for {now - seen_at:.0f} s "
                                                           f"(limit {job.limits.stall_s:g} s)")
            if end_state is not None:
                pass
            elif a["hours_limit"] is not None and hours > a["hours_limit"]:
                end_state, end_reason = "over_budget", f"over budget: ran {hours:.2f} h, limit {a['hours_limit']:g} h"
            elif job.limits.max_cost_usd is not None and a["usd_per_hour"] > 0 and cost > job.limits.max_cost_usd:
                end_state, end_reason = "over_budget", f"over budget: ${cost:.2f} spent, limit ${job.limits.max_cost_usd:g}"
            elif a["state"] == State.PENDING.value and prog is not None:
                updates["state"] = State.RUNNING.value
                self.event(a["job_id"], "running", f"first heartbeat from {prog.get('host', '?')}", a["id"])
            elif a["state"] == State.PENDING.value and status is not None and status.silent \
                    and status.state == State.RUNNING:
                updates["state"] = State.RUNNING.value
                self.event(a["job_id"], "running", "running by its platform (it cannot heartbeat)", a["id"])
            stop_it = end_state is not None
        if stop_it:
            err, updates["cleanup"] = self._stop(a)  # a lost attempt may still run, and bill
            if err is not None:
                end_reason += f"; stop failed: {self._stop_note(err)}"
            if end_state == "over_budget":
                end_state = State.CANCELLED.value
        with self.tx():
            sets = ", ".join(f"{k}=?" for k in updates)
            self.db.execute(f"UPDATE attempts SET {sets} WHERE id=?", (*updates.values(), a["id"]))
            if end_state is not None:
                self._end_attempt(job_row, job, a, end_state, end_reason, exit_code)

    def _progress_events(self, a, prog: dict | None) -> None:
        if not prog:
            return
        old = json.loads(a["progress"]) if a["progress"] else {}
        if prog.get("epoch") != old.get("epoch") and isinstance(prog.get("val_mae"), (int, float)) and prog.get("epoch"):
            self.event(a["job_id"], "progress", f"epoch {prog['epoch']}/{prog.get('epochs', '?')}: "
                                                f"val MAE {prog['val_mae']:.1f} m/s", a["id"])

    def _end_attempt(self, job_row, job: Job, a, state: str, reason: str, exit_code: int | None) -> None:
        now = self.clock()
        self.db.execute("UPDATE attempts SET state=?, ended_at=?, end_reason=?, exit_code=? WHERE id=?",
                        (state, now, reason, exit_code, a["id"]))
        jid = job_row["id"]
        if state == State.SUCCEEDED.value:
            self.db.execute("UPDATE jobs SET state=?, reason=?, updated_at=?, finished_at=? WHERE id=?",
                            (SUCCEEDED, "", now, now, jid))
            self.event(jid, "succeeded", f"on {a['platform']} (attempt {a['n']})", a["id"])
            return
        self.event(jid, state, f"attempt {a['n']} on {a['platform']}: {reason}", a["id"])
        if job_row["state"] == CANCELLED:
            return
        self.db.execute("UPDATE jobs SET state=?, reason=?, updated_at=? WHERE id=?",
                        (QUEUED, f"attempt {a['n']} {state}: {reason}", now, jid))

    def _promote(self) -> None:
        """Waiting jobs whose ``after`` jobs all succeeded are queued; a failed dependency fails them."""
        with self.tx():
            waiting = self.db.execute("SELECT * FROM jobs WHERE state=?", (WAITING,)).fetchall()
            states = dict(self.db.execute("SELECT id, state FROM jobs").fetchall()) if waiting else {}
            for row in waiting:
                job = self.job_def(row)
                deps = [(d, states.get(f"{row['spec']}/{d}")) for d in job.after]
                bad = [f"{d} {st}" for d, st in deps if st in (FAILED, CANCELLED)]
                missing = [d for d, st in deps if st is None]
                if bad or missing:
                    why = "dependency " + ", ".join(bad + [f"{m} unknown" for m in missing])
                    self.db.execute("UPDATE jobs SET state=?, reason=?, updated_at=?, finished_at=? WHERE id=?",
                                    (FAILED, why, self.clock(), self.clock(), row["id"]))
                    self.event(row["id"], "failed", why)
                elif all(st == SUCCEEDED for _, st in deps):
                    self.db.execute("UPDATE jobs SET state=?, updated_at=? WHERE id=?", (QUEUED, self.clock(), row["id"]))
                    self.event(row["id"], "queued", "ready" + (f" ({', '.join(job.after)} done)" if job.after else ""))

    def _assign(self, row) -> str | None:
        """Launch a queued job on its best platform now; the attempt id, or None when nothing launched."""
        job = self.job_def(row)
        choices = self.choices(row["id"], job)
        pick = next((c for c in choices if c.ok), None)
        if pick is None:
            if any(c.busy for c in choices):
                why = "waiting for a slot: " + "; ".join(f"{c.platform} {c.why}" for c in choices if c.busy)
                if row["reason"] != why:
                    self.db.execute("UPDATE jobs SET reason=? WHERE id=?", (why, row["id"]))
                return None
            why = "no platform left: " + "; ".join(f"{c.platform}: {c.why}" for c in choices)
            with self.tx():
                self.db.execute("UPDATE jobs SET state=?, reason=?, updated_at=?, finished_at=? WHERE id=?",
                                (FAILED, why, self.clock(), self.clock(), row["id"]))
                self.event(row["id"], "failed", why)
            return None
        prof = self.profiles[pick.platform]
        with self.tx() as db:
            n = db.execute("SELECT COUNT(*) FROM attempts WHERE job_id=?", (row["id"],)).fetchone()[0] + 1
            aid = f"{row['spec']}.{row['name']}.{n}"
            hb = f"{self._run_prefix(row, job)}/attempts/{n}/progress.json"
            hours_used, _ = self.job_cost(row["id"])
            limits = [x for x in (prof.session_hours,
                                  None if job.limits.max_hours is None else job.limits.max_hours - hours_used) if x is not None]
            if prof.quota_hours_per_week is not None:
                limits.append(prof.quota_hours_per_week - self.usage(pick.platform)["hours_week"])
            db.execute("INSERT INTO attempts(id, job_id, n, platform, state, heartbeat_url, launched_at, usd_per_hour, "
                       "hours_limit, resumed_from_step, generation) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                       (aid, row["id"], n, pick.platform, State.PENDING.value, hb, self.clock(), prof.usd_per_hour,
                        min(limits) if limits else None, self._resume_step(row, job), row["generation"]))
            db.execute("UPDATE jobs SET state=?, reason=?, updated_at=? WHERE id=?",
                       (RUNNING, f"on {pick.platform}", self.clock(), row["id"]))
            self.event(row["id"], "assigned", f"attempt {n} -> {pick.platform} ({pick.why})", aid)
        a = self.db.execute("SELECT * FROM attempts WHERE id=?", (aid,)).fetchone()
        # a heartbeat or cancel flag at this path from an earlier state (a reset GWI_HOME) is not this attempt's
        store, name = self._store_for(hb)
        for key in (name, "cancel"):
            try:
                store.delete(key)
            except StoreError:
                pass
        self._launch(self.db.execute("SELECT * FROM jobs WHERE id=?", (row["id"],)).fetchone(), job, a)
        return aid

    def _run_prefix(self, row, job: Job) -> str:
        spec = self.db.execute("SELECT store FROM specs WHERE name=?", (row["spec"],)).fetchone()
        return job.outputs.get("run") or f"{spec['store'].rstrip('/')}/runs/{row['spec']}/{row['name']}"

    def _resume_step(self, row, job: Job) -> int | None:
        if job.kind != "train":
            return None
        try:
            store, _ = split_url(job.outputs["run"] + "/checkpoints/latest.json")
            ptr = json.loads(store.get_bytes("latest.json"))
            return int(ptr["latest"]["step"])
        except (StoreError, ValueError, KeyError, TypeError):
            return None

    def _other_secrets(self, platform: str) -> set[str]:
        """Variables holding other platforms' secrets: a job here never sees them."""
        names = set()
        for name in self.profiles:
            try:
                names |= self.adapter(name).secret_vars()
            except Exception:  # noqa: BLE001 - a broken profile: its declared credentials at least
                names |= set(self.profiles[name].credentials)
        return names - set(self.profiles[platform].credentials)

    def _launch(self, job_row, job: Job, a) -> None:
        spec = self.db.execute("SELECT store FROM specs WHERE name=?", (job_row["spec"],)).fetchone()
        req = LaunchRequest(
            attempt_id=a["id"], job=job_row["id"], kind=job.kind, argv=list(job.argv),
            env={ENV_ATTEMPT: a["id"], ENV_URL: a["heartbeat_url"], ENV_INTERVAL: str(job.heartbeat_s)},
            store_url=spec["store"], heartbeat_url=a["heartbeat_url"], workdir=str(self.home / "attempts" / a["id"]),
            gpus=job.resources.gpus, hours_limit=a["hours_limit"],
            scrub_env=tuple(sorted(self._other_secrets(a["platform"]))))
        adapter = self.adapter(a["platform"])
        try:
            handle = adapter.launch(req)
        except Exception as e:  # noqa: BLE001 - translated and recorded; the pass goes on
            err = adapter.translate(e)
            with self.tx():
                if err.retryable:
                    self.db.execute("UPDATE attempts SET last_error=? WHERE id=?", (str(err), a["id"]))
                    self.event(job_row["id"], "launch-retry", str(err), a["id"])
                else:
                    self._end_attempt(job_row, job, a, State.FAILED.value, f"launch failed ({err.kind}): {err}", None)
            return
        with self.tx():
            self.db.execute("UPDATE attempts SET handle=? WHERE id=?", (json.dumps(handle), a["id"]))
            resumed = f", resuming from step {a['resumed_from_step']}" if a["resumed_from_step"] else ""
            note = f": {handle['note']}" if handle.get("note") else ""  # what a person must do (Colab)
            self.event(job_row["id"], "launched", f"attempt {a['n']} on {a['platform']}{resumed}{note}", a["id"])

    # -- user actions -------------------------------------------------------------------------------

    def resolve(self, name: str) -> str:
        """``spec/job`` or an unambiguous ``job`` -> the job id."""
        if self.db.execute("SELECT 1 FROM jobs WHERE id=?", (name,)).fetchone():
            return name
        rows = [r["id"] for r in self.db.execute("SELECT id FROM jobs WHERE name=?", (name,))]
        if len(rows) == 1:
            return rows[0]
        if rows:
            raise GwiError(f"job name {name!r} is in several specs: {', '.join(rows)}; give SPEC/JOB")
        known = [r["id"] for r in self.db.execute("SELECT id FROM jobs ORDER BY created_at, position LIMIT 30")]
        raise GwiError(f"no job {name!r}" + (f"; known: {', '.join(known)}" if known else "; nothing dispatched yet"))

    def cancel(self, job_id: str) -> str:
        with self.lock():
            row = self.db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row["state"] in JOB_TERMINAL:
                return f"{job_id} already {row['state']}"
            with self.tx():
                self.db.execute("UPDATE jobs SET state=?, reason=?, updated_at=?, finished_at=? WHERE id=?",
                                (CANCELLED, "cancelled by user", self.clock(), self.clock(), job_id))
                self.event(job_id, "cancelled", "by user")
            msgs = [f"{job_id} cancelled"]
            for a in self.db.execute("SELECT * FROM attempts WHERE job_id=? AND state IN (?,?)", (job_id, *ACTIVE)).fetchall():
                err, cleanup = self._stop(a)
                with self.tx():
                    self.db.execute("UPDATE attempts SET state=?, ended_at=?, end_reason=?, cleanup=? WHERE id=?",
                                    (State.CANCELLED.value, self.clock(), "cancelled by user", cleanup, a["id"]))
                msgs.append(f"attempt {a['n']} on {a['platform']} stopped" if err is None else
                            f"stopping attempt {a['n']} on {a['platform']} failed: {self._stop_note(err)}")
            return "; ".join(msgs)

    def logs(self, job_id: str, attempt: int | None = None, tail: int | None = None) -> tuple[dict, str]:
        q = "SELECT * FROM attempts WHERE job_id=?" + (" AND n=?" if attempt else "") + " ORDER BY n DESC LIMIT 1"
        a = self.db.execute(q, (job_id, attempt) if attempt else (job_id,)).fetchone()
        if a is None:
            raise GwiError(f"{job_id} has no attempt{f' {attempt}' if attempt else ''} yet")
        if not a["handle"]:
            return dict(a), ""
        return dict(a), self.adapter(a["platform"]).logs(json.loads(a["handle"]), tail)

    # -- reading ------------------------------------------------------------------------------------

    def jobs(self, spec: str | None = None) -> list[sqlite3.Row]:
        if spec:
            return self.db.execute("SELECT * FROM jobs WHERE spec=? ORDER BY created_at, position", (spec,)).fetchall()
        return self.db.execute("SELECT * FROM jobs ORDER BY created_at, position").fetchall()

    def attempts(self, job_id: str) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM attempts WHERE job_id=? ORDER BY n", (job_id,)).fetchall()

    def events(self, job_id: str | None = None, after_id: int = 0) -> list[sqlite3.Row]:
        if job_id:
            return self.db.execute("SELECT * FROM events WHERE job_id=? AND id>? ORDER BY id", (job_id, after_id)).fetchall()
        return self.db.execute("SELECT * FROM events WHERE id>? ORDER BY id", (after_id,)).fetchall()

    def latest_attempts(self) -> dict[str, sqlite3.Row]:
        rows = self.db.execute("SELECT a.* FROM attempts a JOIN (SELECT job_id, MAX(n) AS n FROM attempts GROUP BY job_id) m "
                               "ON a.job_id=m.job_id AND a.n=m.n").fetchall()
        return {r["job_id"]: r for r in rows}

    def costs(self) -> dict[str, tuple[float, float]]:
        """job id -> (hours, dollars) for every job, in one query."""
        now = self.clock()
        out: dict[str, list[float]] = {}
        for a in self.db.execute("SELECT job_id, launched_at, started_at, ended_at, usd_per_hour FROM attempts"):
            h = self.attempt_hours(a, now)
            acc = out.setdefault(a["job_id"], [0.0, 0.0])
            acc[0] += h
            acc[1] += h * a["usd_per_hour"]
        return {k: (v[0], v[1]) for k, v in out.items()}

    def last_reconcile(self) -> float | None:
        r = self.db.execute("SELECT value FROM meta WHERE key='last_reconcile'").fetchone()
        return float(r["value"]) if r else None

    def unfinished(self, spec: str | None = None) -> int:
        q = "SELECT COUNT(*) FROM jobs WHERE state NOT IN (?,?,?)" + (" AND spec=?" if spec else "")
        return self.db.execute(q, (*JOB_TERMINAL, spec) if spec else JOB_TERMINAL).fetchone()[0]

    def close(self) -> None:
        self.db.close()
