"""The scheduler's state: SQLite (WAL) at ``$GWI_HOME/state.db``, and the only module that speaks SQL.

Tables: specs, jobs, attempts, events, meta; the schema version is ``PRAGMA user_version``.
Nothing is held in memory between commands, so a scheduler killed at any moment loses nothing:
the next pass reads where the last one stopped.

Two ways in:

- :meth:`StateDB.open` (the scheduler, ``gwi dispatch``, ``gwi cancel``): read-write, creating and
  migrating the schema.
- :meth:`StateDB.open_readonly` (``gwi status``, ``gwi history``, ``--dry-run``): a ``mode=ro``
  connection that never writes, never migrates, and reads while a dispatcher holds the scheduler
  lock and writes (WAL readers do not block writers). No ``state.db`` yet means nothing was
  dispatched: an empty state, not an error.

Rows come back as :class:`sqlite3.Row` (``row["state"]``, ``dict(row)``).

State you can trust: the home folder is 0700 and ``state.db`` (with its ``-wal``/``-shm`` and backups)
0600; the file carries gwi's ``application_id``; both openers check it before use, so a corrupt file,
another program's database or a newer gwi's schema is one :class:`GwiError` line naming the file and
the fix, never a traceback mid-pass. The scheduler keeps an online backup beside it
(``state.db.bak``, :meth:`StateDB.backup`), refreshed every few minutes and before a migration;
``gwi doctor --fix`` restores it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import GwiError
from ..paths import gwi_home  # noqa: F401 - re-exported: the scheduler's callers find the home here
from .lifecycle import ACTIVE, JOB_TERMINAL

SCHEMA_VERSION = 4
APPLICATION_ID = 0x67776901  # "gw", "i", 1: marks the file as gwi's state (PRAGMA application_id)
BACKUP_SUFFIX = ".bak"
# what each version adds to the one before (v1 is _SCHEMA without these columns)
_MIGRATIONS = {
    2: ["ALTER TABLE attempts ADD COLUMN cleanup TEXT",  # a stop that failed: retried every pass
        "ALTER TABLE attempts ADD COLUMN generation INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE jobs ADD COLUMN generation INTEGER NOT NULL DEFAULT 0"],
    # an attempt ended by the store's outage counts no try; its job waits until not_before
    3: ["ALTER TABLE attempts ADD COLUMN blameless INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE jobs ADD COLUMN not_before REAL"],
    # a plan's deadline; the hours a job may take, shrunk to meet it (caps its attempts' hour limit)
    4: ["ALTER TABLE specs ADD COLUMN deadline REAL",
        "ALTER TABLE jobs ADD COLUMN budget_hours REAL"],
}

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

# the columns an update may set: names are spliced into SQL, so only these are accepted
_JOB_COLUMNS = frozenset({"state", "reason", "definition", "position", "updated_at", "finished_at", "not_before",
                          "budget_hours"})
_ATTEMPT_COLUMNS = frozenset({
    "job_id", "n", "platform", "state", "handle", "heartbeat_url", "launched_at", "started_at", "ended_at",
    "end_reason", "exit_code", "usd_per_hour", "hours_limit", "cost_limit", "progress", "beat_key", "beat_seen_at",
    "resumed_from_step", "last_error", "cleanup", "generation", "blameless"})


class StateUnreadable(GwiError):
    """state.db is corrupt, truncated, or not gwi's: the message says which file and what to run."""


def secure_home(home: Path) -> None:
    """The home folder, created 0700 (it holds the state and the attempts' files)."""
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    _private(home, 0o700)


def _private(path: Path, mode: int) -> None:
    """Tighten ``path`` to ``mode`` if it is ours and looser (a shared folder is left as it is)."""
    try:
        st = path.stat()
        if st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) & ~mode:
            os.chmod(path, mode)
    except OSError:
        pass


def backup_path(path: Path) -> Path:
    return path.with_name(path.name + BACKUP_SUFFIX)


def fix_hint(path: Path) -> str:
    """What ``gwi doctor --fix`` would do about ``path``: restore the backup (from when), or start empty."""
    bak = backup_path(path)
    if bak.exists():
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(bak.stat().st_mtime))
        return f"run `gwi doctor --fix` to move it aside and restore the backup from {when}"
    return "run `gwi doctor --fix` to move it aside and start an empty state (there is no backup)"


def _newer_schema(path, version: int) -> GwiError:
    return GwiError(f"{path}: state written by a newer gwi (schema {version}, this gwi knows {SCHEMA_VERSION}); "
                    "upgrade gwi or point GWI_HOME elsewhere")


def verify(db: sqlite3.Connection, path: Path) -> int:
    """The schema version of an opened state file; :class:`StateUnreadable` (corrupt, truncated, another
    program's) or the newer-schema error otherwise. 0: a new, empty file."""
    try:
        app = db.execute("PRAGMA application_id").fetchone()[0]
        version = db.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        check = db.execute("PRAGMA quick_check(1)").fetchone()[0]
    except sqlite3.DatabaseError as e:
        raise StateUnreadable(f"{path}: the scheduler's state is unreadable ({e}); {fix_hint(path)}") from None
    if check != "ok":
        check = " ".join(str(check).split())  # SQLite's report may span lines: one line here
        raise StateUnreadable(f"{path}: the scheduler's state is corrupt (integrity check: {check}); {fix_hint(path)}")
    if app not in (0, APPLICATION_ID) or (tables and not {"jobs", "attempts"} <= tables):
        what = f"application_id {app:#x}" if app not in (0, APPLICATION_ID) else f"tables {', '.join(sorted(tables))}"
        raise StateUnreadable(f"{path}: not a gwi state file ({what}); point GWI_HOME elsewhere, or "
                              f"{fix_hint(path)}")
    if version > SCHEMA_VERSION:
        raise _newer_schema(path, version)
    return version


def check_file(path: Path) -> None:
    """Refuse, in one line, a state file that would read as "no jobs yet" while jobs were recorded:
    a folder, or an empty file beside a backup that holds jobs (dispatch would relaunch jobs that
    already succeeded). An empty file with no backup is a new state."""
    if path.is_dir():
        raise StateUnreadable(f"{path}: is a folder, expected gwi's state file; move it aside or point GWI_HOME "
                              "elsewhere")
    try:
        empty = path.stat().st_size == 0
    except FileNotFoundError:
        return
    wal = path.with_name(path.name + "-wal")
    if empty and not (wal.exists() and wal.stat().st_size) and (n := count_jobs(backup_path(path))):
        raise StateUnreadable(f"{path}: empty, but its backup holds {n} job(s); {fix_hint(path)}")


def count_jobs(path: Path) -> int | None:
    """How many jobs the state at ``path`` records; None when it cannot be read (missing, not gwi's)."""
    if not path.is_file() or path.stat().st_size == 0:
        return None
    # without a WAL beside it (a backup) read it as immutable: a read-only look creates no -wal/-shm
    wal = path.with_name(path.name + "-wal").exists()
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro{'' if wal else '&immutable=1'}", uri=True, timeout=5)
        try:
            return db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return None


def write_backup(db: sqlite3.Connection, dest: Path) -> None:
    """An online copy of ``db`` (sqlite3's backup API: consistent while others write, and it reads
    the WAL too), checked, then moved into place: ``dest`` is always a whole, readable state or the
    one before. A copy that records fewer jobs than the backup it would replace is refused: jobs are
    never deleted, so the state it came from lost some (an emptied file, a restore gone wrong)."""
    tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")
    os.close(os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600))
    try:
        target = sqlite3.connect(tmp)
        try:
            db.backup(target)
            target.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
            check = target.execute("PRAGMA quick_check(1)").fetchone()[0]
            has = target.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] if check == "ok" else 0
        finally:
            target.close()
        if check != "ok":
            raise StateUnreadable(f"{dest}: not written: the copy failed its integrity check ({check})")
        had = count_jobs(dest)
        if had is not None and has < had:
            raise StateUnreadable(f"{dest}: not replaced: it holds {had} job(s) and the state only {has}; "
                                  "gwi doctor says more")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _columns(table: str, allowed: frozenset, cols: dict) -> str:
    bad = sorted(set(cols) - allowed)
    if bad:
        raise ValueError(f"{table}: expected columns among {', '.join(sorted(allowed))}, got {', '.join(bad)}")
    return ", ".join(f"{k}=?" for k in cols)


class StateDB:
    """One connection to the state; every query and update the scheduler and the CLI make."""

    def __init__(self, db: sqlite3.Connection, path: Path, clock=time.time, readonly: bool = False):
        self.db = db
        self.path = path
        self.clock = clock
        self.readonly = readonly
        # every text written passes through it: the scheduler sets a Redactor of the secrets it hands out
        self.redact: Callable[[str], str] = lambda text: text

    # -- opening ----------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path, clock=time.time) -> StateDB:
        """Read-write: checked, WAL, the schema created or migrated to :data:`SCHEMA_VERSION` (after a
        backup of the older one)."""
        path = Path(path)
        check_file(path)
        if not path.exists():
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))  # -wal and -shm take its mode
        for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            _private(p, 0o600)
        db = sqlite3.connect(path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA busy_timeout=30000")
        try:
            version = verify(db, path)
            _wal(db)
            db.execute("PRAGMA synchronous=NORMAL")
            if 0 < version < SCHEMA_VERSION:
                write_backup(db, backup_path(path))
            _migrate(db, path)
        except BaseException:
            db.close()
            raise
        return cls(db, path, clock)

    @classmethod
    def open_readonly(cls, path: str | Path, clock=time.time) -> StateDB:
        """Read-only (``mode=ro``): never writes, never takes a write lock, never migrates (an older
        schema is read as it is). No state yet: an empty one in memory."""
        path = Path(path)
        check_file(path)
        if not path.exists():
            return cls._empty(path, clock)
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA busy_timeout=30000")
        try:
            version = verify(db, path)
        except BaseException:
            db.close()
            raise
        if version == 0:  # created by a dispatcher that has not yet written its schema
            db.close()
            return cls._empty(path, clock)
        return cls(db, path, clock, readonly=True)

    @classmethod
    def _empty(cls, path: Path, clock) -> StateDB:
        db = sqlite3.connect(":memory:", isolation_level=None)
        db.row_factory = sqlite3.Row
        _migrate(db, path)
        return cls(db, path, clock, readonly=True)

    def close(self) -> None:
        if not self.readonly:
            self.checkpoint()
        self.db.close()

    def checkpoint(self) -> None:
        """Move what the WAL holds into ``state.db`` (without waiting for readers), so a copy of that
        file alone is the state, not an empty 4 KB shell."""
        with contextlib.suppress(sqlite3.Error):
            self.db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def backup(self, dest: Path) -> None:
        """Write an online backup of this state to ``dest`` (0600, atomically)."""
        self.checkpoint()
        write_backup(self.db, dest)

    @contextlib.contextmanager
    def tx(self):
        """One write transaction (BEGIN IMMEDIATE: writers queue instead of failing)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- specs ------------------------------------------------------------------------------------

    def save_spec(self, name: str, path: str, sha256: str, store: str, now: float,
                  deadline: float | None = None) -> None:
        self.db.execute("INSERT INTO specs(name, path, sha256, store, dispatched_at, deadline) VALUES (?,?,?,?,?,?) "
                        "ON CONFLICT(name) DO UPDATE SET path=excluded.path, sha256=excluded.sha256, "
                        "store=excluded.store, dispatched_at=excluded.dispatched_at, deadline=excluded.deadline",
                        (name, path, sha256, store, now, deadline))

    def deadlines(self) -> list[tuple[str, float]]:
        """(spec, deadline) of the specs that have one and jobs not finished."""
        return [(r["name"], r["deadline"]) for r in self.db.execute(
            "SELECT s.name, s.deadline FROM specs s WHERE s.deadline IS NOT NULL AND EXISTS "
            "(SELECT 1 FROM jobs j WHERE j.spec = s.name AND j.state IN ('waiting', 'queued', 'running')) "
            "ORDER BY s.name").fetchall()]

    def spec_store(self, name: str) -> str | None:
        row = self.db.execute("SELECT store FROM specs WHERE name=?", (name,)).fetchone()
        return row["store"] if row else None

    # -- jobs -------------------------------------------------------------------------------------

    def job(self, job_id: str) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()

    def jobs(self, spec: str | None = None) -> list[sqlite3.Row]:
        if spec:
            return self.db.execute("SELECT * FROM jobs WHERE spec=? ORDER BY created_at, position", (spec,)).fetchall()
        return self.db.execute("SELECT * FROM jobs ORDER BY created_at, position").fetchall()

    def jobs_in(self, state: str) -> list[sqlite3.Row]:
        """Jobs in ``state``, oldest dispatch first, in plan order."""
        return self.db.execute("SELECT * FROM jobs WHERE state=? ORDER BY created_at, position", (state,)).fetchall()

    def job_states(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT id, state FROM jobs").fetchall())

    def job_ids_named(self, name: str) -> list[str]:
        return [r["id"] for r in self.db.execute("SELECT id FROM jobs WHERE name=?", (name,))]

    def first_job_ids(self, limit: int) -> list[str]:
        return [r["id"] for r in self.db.execute("SELECT id FROM jobs ORDER BY created_at, position LIMIT ?", (limit,))]

    def generation(self, job_id: str) -> int:
        r = self.db.execute("SELECT generation FROM jobs WHERE id=?", (job_id,)).fetchone()
        return r["generation"] if r else 0

    def unfinished(self, spec: str | None = None) -> int:
        q = "SELECT COUNT(*) FROM jobs WHERE state NOT IN (?,?,?)" + (" AND spec=?" if spec else "")
        return self.db.execute(q, (*JOB_TERMINAL, spec) if spec else JOB_TERMINAL).fetchone()[0]

    def insert_job(self, job_id: str, spec: str, name: str, kind: str, position: int, definition: str,
                   state: str, now: float) -> None:
        self.db.execute("INSERT INTO jobs(id, spec, name, kind, position, definition, state, created_at, updated_at) "
                        "VALUES (?,?,?,?,?,?,?,?,?)", (job_id, spec, name, kind, position, definition, state, now, now))

    def new_generation(self, job_id: str, state: str, definition: str, position: int, now: float) -> None:
        """Dispatched again after it ended: tries and budgets count from zero."""
        self.db.execute("UPDATE jobs SET state=?, reason='', definition=?, position=?, updated_at=?, "
                        "finished_at=NULL, not_before=NULL, generation=generation+1 WHERE id=?",
                        (state, definition, position, now, job_id))

    def _masked(self, cols: dict) -> dict:
        return {k: self.redact(v) if isinstance(v, str) else v for k, v in cols.items()}

    def update_job(self, job_id: str, **cols) -> None:
        cols = self._masked(cols)
        sets = _columns("jobs", _JOB_COLUMNS, cols)
        self.db.execute(f"UPDATE jobs SET {sets} WHERE id=?", (*cols.values(), job_id))

    # -- attempts ---------------------------------------------------------------------------------

    def attempt(self, attempt_id: str) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM attempts WHERE id=?", (attempt_id,)).fetchone()

    def attempts(self, job_id: str) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM attempts WHERE job_id=? ORDER BY n", (job_id,)).fetchall()

    def active_attempts(self, job_id: str | None = None) -> list[sqlite3.Row]:
        """Attempts that may still run somewhere, oldest launch first."""
        if job_id:
            return self.db.execute("SELECT * FROM attempts WHERE job_id=? AND state IN (?,?) ORDER BY launched_at",
                                   (job_id, *ACTIVE)).fetchall()
        return self.db.execute("SELECT * FROM attempts WHERE state IN (?,?) ORDER BY launched_at", ACTIVE).fetchall()

    def attempts_to_clean(self) -> list[sqlite3.Row]:
        """Ended attempts whose stop on their platform failed and must be tried again."""
        return self.db.execute("SELECT * FROM attempts WHERE cleanup IS NOT NULL").fetchall()

    def attempt_count(self, job_id: str) -> int:
        return self.db.execute("SELECT COUNT(*) FROM attempts WHERE job_id=?", (job_id,)).fetchone()[0]

    def generation_attempts(self, job_id: str, generation: int) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM attempts WHERE job_id=? AND generation=?", (job_id, generation)).fetchall()

    def tries(self, job_id: str, platform: str, generation: int) -> int:
        """The job's tries on a platform: its attempts there, less those the store's outage ended."""
        return self.db.execute("SELECT COUNT(*) FROM attempts WHERE job_id=? AND platform=? AND generation=? "
                               "AND blameless=0", (job_id, platform, generation)).fetchone()[0]

    def blameless_streak(self, job_id: str, generation: int) -> int:
        """How many of the job's latest ended attempts in a row the store's outage ended."""
        rows = self.db.execute("SELECT blameless FROM attempts WHERE job_id=? AND generation=? AND ended_at IS NOT NULL "
                               "ORDER BY n DESC", (job_id, generation)).fetchall()
        streak = 0
        for r in rows:
            if not r["blameless"]:
                break
            streak += 1
        return streak

    def platform_attempts(self, platform: str, ended_after: float | None = None, paid: bool = False) -> list[sqlite3.Row]:
        """A platform's attempts: those running or ended after ``ended_after``; or, ``paid``, the billed ones."""
        if paid:
            return self.db.execute("SELECT * FROM attempts WHERE platform=? AND usd_per_hour>0", (platform,)).fetchall()
        return self.db.execute("SELECT * FROM attempts WHERE platform=? AND (ended_at IS NULL OR ended_at>?)",
                               (platform, ended_after)).fetchall()

    def active_count(self, platform: str) -> int:
        return self.db.execute("SELECT COUNT(*) FROM attempts WHERE platform=? AND state IN (?,?)",
                               (platform, *ACTIVE)).fetchone()[0]

    def latest_attempt(self, job_id: str, n: int | None = None) -> sqlite3.Row | None:
        """Attempt ``n`` of a job, or its newest."""
        q = "SELECT * FROM attempts WHERE job_id=?" + (" AND n=?" if n else "") + " ORDER BY n DESC LIMIT 1"
        return self.db.execute(q, (job_id, n) if n else (job_id,)).fetchone()

    def latest_attempts(self) -> dict[str, sqlite3.Row]:
        rows = self.db.execute("SELECT a.* FROM attempts a JOIN (SELECT job_id, MAX(n) AS n FROM attempts GROUP BY job_id) m "
                               "ON a.job_id=m.job_id AND a.n=m.n").fetchall()
        return {r["job_id"]: r for r in rows}

    def billing_rows(self) -> list[sqlite3.Row]:
        """What every attempt costs is computed from: its job, times and price."""
        return self.db.execute("SELECT job_id, launched_at, started_at, ended_at, usd_per_hour FROM attempts").fetchall()

    def insert_attempt(self, attempt_id: str, **cols) -> None:
        cols = self._masked(cols)
        _columns("attempts", _ATTEMPT_COLUMNS, cols)
        names = ", ".join(["id", *cols])
        marks = ",".join("?" * (len(cols) + 1))
        self.db.execute(f"INSERT INTO attempts({names}) VALUES ({marks})", (attempt_id, *cols.values()))

    def update_attempt(self, attempt_id: str, **cols) -> None:
        cols = self._masked(cols)
        sets = _columns("attempts", _ATTEMPT_COLUMNS, cols)
        self.db.execute(f"UPDATE attempts SET {sets} WHERE id=?", (*cols.values(), attempt_id))

    # -- events -----------------------------------------------------------------------------------

    def event(self, job_id: str, kind: str, message: str, attempt_id: str | None = None) -> None:
        self.db.execute("INSERT INTO events(time, job_id, attempt_id, kind, message) VALUES (?,?,?,?,?)",
                        (self.clock(), job_id, attempt_id, kind, self.redact(message)))

    def events(self, job_id: str | None = None, after_id: int = 0) -> list[sqlite3.Row]:
        if job_id:
            return self.db.execute("SELECT * FROM events WHERE job_id=? AND id>? ORDER BY id", (job_id, after_id)).fetchall()
        return self.db.execute("SELECT * FROM events WHERE id>? ORDER BY id", (after_id,)).fetchall()

    def last_event_id(self) -> int:
        return self.db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]

    def note_error(self, job_id: str, attempt_id: str | None, message: str) -> None:
        """Record an error of one job's step (once while it repeats). Never raises: it runs while
        handling another error, and the pass must go on."""
        message = self.redact(message)  # compared with what was recorded, which is masked
        try:
            if attempt_id:
                self.update_attempt(attempt_id, last_error=message)
            last = self.db.execute("SELECT message FROM events WHERE job_id=? ORDER BY id DESC LIMIT 1",
                                   (job_id,)).fetchone()
            if last is None or last["message"] != message:
                self.event(job_id, "error", message, attempt_id)
        except sqlite3.Error:
            pass

    # -- meta -------------------------------------------------------------------------------------

    def last_reconcile(self) -> float | None:
        r = self.db.execute("SELECT value FROM meta WHERE key='last_reconcile'").fetchone()
        return float(r["value"]) if r else None

    def set_last_reconcile(self, t: float) -> None:
        self.set_meta("last_reconcile", str(t))

    def meta(self, key: str) -> str | None:
        r = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return r["value"] if r else None

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                        (key, value))


def _wal(db: sqlite3.Connection) -> None:
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


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise _newer_schema(path, version)
    if version == SCHEMA_VERSION:
        return
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
        db.execute(f"PRAGMA application_id={APPLICATION_ID}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
