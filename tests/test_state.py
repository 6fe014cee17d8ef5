"""The scheduler's state file: private, checked before use, backed up online (issue 12 #9)."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import time

import pytest

from gwi.scheduler import SCHEMA_VERSION, Scheduler, StateDB, StateUnreadable, open_view
from gwi.scheduler.state import APPLICATION_ID, backup_path


def mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def make_state(home) -> None:
    s = Scheduler(home, profiles={})
    s.state.set_meta("marker", "before")
    s.close()


def test_the_home_and_the_state_are_private_and_in_wal_with_a_busy_timeout(tmp_path):
    home = tmp_path / "home"
    s = Scheduler(home, profiles={})
    try:
        assert mode(home) == 0o700 and mode(home / "state.db") == 0o600
        assert s.state.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert s.state.db.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
        assert s.state.db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        s.state.set_meta("x", "1")
        assert mode(home / "state.db-wal") == 0o600 and mode(home / "state.db-shm") == 0o600
    finally:
        s.close()
    # a loose one made by an older gwi is tightened
    os.chmod(home, 0o755)
    os.chmod(home / "state.db", 0o644)
    Scheduler(home, profiles={}).close()
    assert mode(home) == 0o700 and mode(home / "state.db") == 0o600


def _garbage(p):
    p.write_bytes(os.urandom(8192))


def _truncated(p):
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def _foreign(p):
    p.unlink()
    db = sqlite3.connect(p)
    db.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, path TEXT)")
    db.commit()
    db.close()


def _other_app(p):
    db = sqlite3.connect(p)
    db.execute("PRAGMA application_id=1234")
    db.commit()
    db.close()


def _damaged_page(p):
    db = sqlite3.connect(p)
    db.execute("PRAGMA journal_mode=DELETE")  # folded into the file
    db.close()
    data = bytearray(p.read_bytes())
    page = 4096
    data[page:page + 400] = b"\x07" * 400  # the first table's root page: not a b-tree page any more
    p.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, says", [
    (_garbage, "unreadable (file is not a database)"),
    (_truncated, "the scheduler's state is"),
    (_foreign, "not a gwi state file (tables photos)"),
    (_other_app, "not a gwi state file (application_id 0x4d2)"),
    (_damaged_page, "the scheduler's state is"),
])
def test_a_corrupt_or_foreign_state_is_one_clear_line_for_the_scheduler_and_status(tmp_path, damage, says):
    home = tmp_path / "home"
    make_state(home)
    s = Scheduler(home, profiles={})
    s.reconcile()  # writes the first backup
    s.close()
    for suffix in ("-wal", "-shm"):
        (home / f"state.db{suffix}").unlink(missing_ok=True)
    damage(home / "state.db")
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(backup_path(home / "state.db").stat().st_mtime))
    for opener in (lambda: Scheduler(home, profiles={}), lambda: open_view(home, profiles={})):
        with pytest.raises(StateUnreadable) as e:
            opener()
        msg = str(e.value)
        assert msg.startswith(f"{home / 'state.db'}: ") and says in msg and "\n" not in msg
        assert msg.endswith(f"run `gwi doctor --fix` to move it aside and restore the backup from {when}")


def test_without_a_backup_the_fix_says_it_starts_empty(tmp_path):
    p = tmp_path / "state.db"
    _garbage(p)
    with pytest.raises(StateUnreadable, match="start an empty state \\(there is no backup\\)$"):
        StateDB.open_readonly(p)


def test_gwi_status_prints_the_line_not_a_traceback(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    _garbage(home / "state.db")
    env = {**os.environ, "GWI_HOME": str(home)}
    out = subprocess.run([sys.executable, "-m", "gwi", "status"], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    line = (f"gwi: error: {home / 'state.db'}: the scheduler's state is unreadable (file is not a database); "
            "run `gwi doctor --fix` to move it aside and start an empty state (there is no backup)")
    assert out.stderr.strip().splitlines() == [line]


def test_a_newer_schema_is_refused_by_both_openers_and_never_touched(tmp_path):
    p = tmp_path / "state.db"
    db = sqlite3.connect(p)
    db.execute(f"PRAGMA application_id={APPLICATION_ID}")
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    before = p.read_bytes()
    for opener in (StateDB.open, StateDB.open_readonly):
        with pytest.raises(Exception, match=f"newer gwi \\(schema {SCHEMA_VERSION + 1}"):
            opener(p)
    assert p.read_bytes() == before


def test_the_online_backup_is_whole_private_and_refreshed_on_schedule(tmp_path):
    home = tmp_path / "home"
    s = Scheduler(home, profiles={}, backup_every_s=3600)
    try:
        s.reconcile()
        bak = backup_path(home / "state.db")
        assert bak.exists() and mode(bak) == 0o600
        t0 = bak.stat().st_mtime_ns
        s.state.set_meta("marker", "after")
        s.reconcile()
        assert bak.stat().st_mtime_ns == t0  # not due yet
        s.backup_every_s = 0
        s.reconcile()
        copy = sqlite3.connect(bak)
        assert copy.execute("SELECT value FROM meta WHERE key='marker'").fetchone()[0] == "after"
        assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        copy.close()
        assert not list(home.glob("state.db.bak.tmp-*"))
    finally:
        s.close()


def test_a_migration_is_preceded_by_a_backup_of_the_older_state(tmp_path):
    from gwi.scheduler.state import _SCHEMA

    p = tmp_path / "state.db"
    db = sqlite3.connect(p)
    db.executescript(_SCHEMA)
    db.execute("PRAGMA user_version=1")
    db.close()
    StateDB.open(p).close()
    old = sqlite3.connect(backup_path(p))
    assert old.execute("PRAGMA user_version").fetchone()[0] == 1
    old.close()
    db = sqlite3.connect(p)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    db.close()


# -- the safety net's holes (issue 27) ---------------------------------------------------------------

PLAN = """name: p
store: file://{store}
jobs:
  - {{name: a, kind: run, argv: [python3, -c, pass], platforms: [box]}}
  - {{name: b, kind: run, argv: [python3, -c, pass], platforms: [box]}}
"""


def dispatched(tmp_path, backup_every_s=3600.0):
    """A state with a plan of two jobs dispatched (no scheduler pass yet); the open Scheduler."""
    from gwi.adapters.base import load_profiles
    from gwi.spec import load_spec

    home = tmp_path / "home"
    plat = home / "platforms"
    plat.mkdir(parents=True)
    (plat / "box.yaml").write_text("adapter: local\noptions: {runtime: process}\n")
    spec = tmp_path / "p.yaml"
    spec.write_text(PLAN.format(store=tmp_path / "store"))
    s = Scheduler(home, profiles=load_profiles([plat]), backup_every_s=backup_every_s)
    s.submit(load_spec(spec, profiles=s.profiles))
    return home, s


def jobs_in(path) -> int:
    db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        return db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
    finally:
        db.close()


def test_a_dispatch_is_backed_up_at_once_and_state_db_alone_holds_it(tmp_path):
    """The backup had been taken before any job existed (and was what doctor --fix restored); the
    jobs lived only in state.db-wal, so a copy of state.db was an empty shell."""
    home, s = dispatched(tmp_path)
    try:
        assert jobs_in(backup_path(home / "state.db")) == 2  # no timer had to fire
        alone = tmp_path / "copy.db"
        alone.write_bytes((home / "state.db").read_bytes())  # while the scheduler still has it open
        assert jobs_in(alone) == 2
        s.cancel("p/a")
        db = sqlite3.connect(backup_path(home / "state.db"))
        assert db.execute("SELECT state FROM jobs WHERE id='p/a'").fetchone()[0] == "cancelled"
        db.close()
    finally:
        s.close()


def test_an_emptied_state_with_a_backup_is_refused_not_read_as_no_jobs(tmp_path):
    home, s = dispatched(tmp_path)
    s.close()
    for suffix in ("", "-wal", "-shm"):
        p = home / f"state.db{suffix}"
        if p.exists():
            p.write_bytes(b"")
    for opener in (lambda: Scheduler(home, profiles={}), lambda: open_view(home, profiles={})):
        with pytest.raises(StateUnreadable, match=r"state\.db: empty, but its backup holds 2 job\(s\); run `gwi "
                                                  r"doctor --fix` to move it aside and restore the backup from"):
            opener()
    env = {**os.environ, "GWI_HOME": str(home)}
    for args in (["status"], ["dispatch", str(tmp_path / "p.yaml")], ["history", "p/a"]):
        out = subprocess.run([sys.executable, "-m", "gwi", *args], capture_output=True, text=True, env=env, timeout=60)
        assert out.returncode != 0 and len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert "empty, but its backup holds 2 job(s)" in out.stderr
    from gwi.doctor import check_state

    (f,) = check_state(home, fix=True)
    assert f.fixed and "restored the backup" in f.message
    assert len(open_view(home, profiles={}).state.jobs()) == 2


def test_a_state_db_that_is_a_folder_is_one_line_everywhere(tmp_path):
    home = tmp_path / "home"
    (home / "state.db").mkdir(parents=True)
    env = {**os.environ, "GWI_HOME": str(home)}
    for args in (["status"], ["status", "--json"], ["dispatch", "jobs/demo.yaml"], ["watch"], ["history", "x"]):
        out = subprocess.run([sys.executable, "-m", "gwi", *args], capture_output=True, text=True, env=env, timeout=60,
                             cwd=os.path.dirname(os.path.dirname(__file__)))
        assert out.returncode != 0 and "Traceback" not in out.stderr, (args, out.stderr)
        assert out.stderr.strip() == f"gwi: error: {home / 'state.db'}: is a folder, expected gwi's state file; " \
                                     "move it aside or point GWI_HOME elsewhere", args
    from gwi.doctor import check_state

    assert "is a folder" in check_state(home, fix=False)[0].message


def test_a_backup_never_replaces_a_state_that_lists_more_jobs(tmp_path):
    from contextlib import closing

    from gwi.doctor import check_state
    from gwi.scheduler.state import write_backup

    home, s = dispatched(tmp_path)
    s.close()
    bak = backup_path(home / "state.db")
    empty = tmp_path / "empty"
    Scheduler(empty, profiles={}).close()
    # a copy of a state that lost jobs never overwrites a backup holding them
    with closing(sqlite3.connect(empty / "state.db")) as db:
        with pytest.raises(StateUnreadable, match=r"\.bak: not replaced: it holds 2 job\(s\) and the state only 0"):
            write_backup(db, bak)
    assert jobs_in(bak) == 2
    # an older, smaller backup (as the first one, taken before the plan was dispatched): doctor says so
    os.replace(empty / "state.db", bak)
    found = check_state(home, fix=False)
    assert any(not f.ok and "behind the state (0 of its 2 jobs" in f.message for f in found), found
    # and a damaged state that still lists its jobs is not swapped for it
    with closing(sqlite3.connect(home / "state.db")) as db:
        db.execute("PRAGMA journal_mode=DELETE")
        root = db.execute("SELECT rootpage FROM sqlite_master WHERE name='events'").fetchone()[0]
        size = db.execute("PRAGMA page_size").fetchone()[0]
    data = bytearray((home / "state.db").read_bytes())
    data[(root - 1) * size:root * size] = b"\x07" * size  # the events' table is gone; the jobs still count
    (home / "state.db").write_bytes(bytes(data))
    (f, *_) = check_state(home, fix=True)
    assert not f.ok and not f.fixed and "not repaired: it still lists 2 job(s) and the backup 0" in f.message, f
    assert not list(home.glob("state.db.corrupt-*"))
