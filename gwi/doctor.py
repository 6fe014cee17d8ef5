"""``gwi doctor``: check what gwi keeps (the scheduler's state, the platform profiles, the stores of
the plans it knows, the data cache) and, with ``fix``, repair what can be repaired safely.

Each check gives :class:`Finding` rows: the area, whether it is fine, what was seen, and whether
``fix`` repaired it. A repair never destroys: a corrupt ``state.db`` is moved aside as
``state.db.corrupt-<time>`` (its ``-wal``/``-shm`` with it) before the backup is restored, and the
finding says what the restored state lacks. Nothing is repaired while a scheduler holds the lock.
"""

from __future__ import annotations

import fcntl
import os
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import GwiError
from .scheduler.state import StateDB, StateUnreadable, backup_path, check_file, count_jobs, verify, write_backup

STALE_TEMP_S = 600.0  # a download that has not grown for this long is dead
STORE_TIMEOUT_S = 10.0
# a pull's temp files: ``.NAME.<pid>.<hex>.download`` (also .partial, .tmp); older gwi: ``NAME.download``
_TEMP = re.compile(r"(?:\.(\d+)\.[0-9a-f]{8}\.(?:download|partial|tmp)|\.(?:partial|download))$")


@dataclass
class Finding:
    area: str  # state | profiles | store | cache
    ok: bool
    message: str
    fixed: bool = False


def doctor(home: Path, *, fix: bool, cache: Path | None = None, store_timeout_s: float = STORE_TIMEOUT_S) -> list[Finding]:
    """Every check, in order: the state, the profiles, the stores, the cache. ``cache``: the data
    cache (default: ``GWI_CACHE`` or the user cache folder)."""
    if cache is None:
        from .data.sync import cache_root

        cache = cache_root()
    home = Path(home)
    return (check_state(home, fix) + check_profiles() + check_stores(home, store_timeout_s)
            + check_cache(Path(cache), fix))


# -- the state ---------------------------------------------------------------------------------------


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def _readable(path: Path) -> str | None:
    """Why ``path`` is not a usable gwi state, or None when it is."""
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error as e:
        return str(e)
    try:
        verify(db, path)
        check = db.execute("PRAGMA integrity_check(1)").fetchone()[0]  # the full check: doctor can wait
        return None if check == "ok" else f"integrity check: {' '.join(str(check).split())}"
    except (GwiError, sqlite3.DatabaseError) as e:
        return str(e)
    finally:
        db.close()


def check_state(home: Path, fix: bool) -> list[Finding]:
    path = home / "state.db"
    if not path.exists():
        return [Finding("state", True, f"{path}: none yet (nothing dispatched)")]
    try:
        check_file(path)  # a folder, an emptied file beside a backup with jobs
        why = _readable(path)
    except StateUnreadable as e:
        why = str(e)
    if why is None:
        return [Finding("state", True, f"{path}: readable, integrity ok"), _wal_finding(path, fix),
                _backup_finding(path)]
    if "newer gwi" in why:  # a newer gwi's state is fine, for that gwi: never moved aside
        return [Finding("state", False, why)]
    if not fix:
        return [Finding("state", False, why)]
    held = _scheduler_running(home)
    if held:
        return [Finding("state", False, f"{why}; not repaired: {held}")]
    return [_restore(path, why)]


def _wal_finding(path: Path, fix: bool) -> Finding:
    """Whether ``state.db`` alone holds the state: what the WAL still keeps to itself is lost by a
    copy of the file without its ``-wal``. Folding it in (a passive checkpoint) is what every
    scheduler pass does; ``fix`` does it now."""
    wal = path.with_name(path.name + "-wal")
    if not wal.exists() or wal.stat().st_size == 0:
        return Finding("state", True, f"{path}: holds the whole state (no WAL pending)")
    db = sqlite3.connect(path, timeout=5)
    try:
        if fix:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        busy, frames, done = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    except sqlite3.Error as e:
        return Finding("state", False, f"{wal}: cannot fold it into {path.name}: {e}")
    finally:
        db.close()
    left = max(0, frames - done)
    if left:
        return Finding("state", False, f"{wal}: {left} page(s) not yet in {path.name} (a reader holds them): copy "
                                       f"{path.name} with its -wal, or use its backup")
    return Finding("state", True, f"{path}: holds the whole state (WAL folded in)", fixed=fix)


def _backup_finding(path: Path) -> Finding:
    bak = backup_path(path)
    if not bak.exists():
        return Finding("state", True, f"{bak}: no backup yet (the scheduler writes one after each dispatch)")
    why = _readable(bak)
    if why:
        return Finding("state", False, f"{bak}: unusable backup: {why}")
    age = time.time() - bak.stat().st_mtime
    has, had = count_jobs(path) or 0, count_jobs(bak) or 0
    if had < has:
        return Finding("state", False, f"{bak}: behind the state ({had} of its {has} jobs; from "
                                       f"{_when(bak.stat().st_mtime)}): the next dispatch or scheduler pass refreshes it")
    return Finding("state", True, f"{bak}: backup from {_when(bak.stat().st_mtime)} ({age / 3600:.1f} h old, "
                                  f"{had} job(s))")


def _restore(path: Path, why: str) -> Finding:
    """Move the broken state aside; restore the backup when it is good, else start empty."""
    why = why.split("; run `gwi doctor")[0]  # the hint is done: say what was done instead
    bak = backup_path(path)
    live, saved = count_jobs(path), count_jobs(bak) if bak.exists() and _readable(bak) is None else None
    if live and (saved or 0) < live:  # what can still be read of the state is more than the backup has
        return Finding("state", False, f"{why}; not repaired: it still lists {live} job(s) and the backup "
                                       f"{saved or 0}: save what you can (sqlite3 {path} .recover), then move it aside")
    stamp = time.strftime("%Y%m%dT%H%M%S")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        p = path.with_name(path.name + suffix)
        if p.exists():
            os.replace(p, aside.with_name(aside.name + suffix))
    if saved is not None:
        src = sqlite3.connect(f"{bak.resolve().as_uri()}?mode=ro", uri=True)
        try:
            write_backup(src, path)  # a checked copy; the backup itself stays as it is
        finally:
            src.close()
        StateDB.open(path).close()  # migrated to this gwi's schema
        lost = f"what the scheduler recorded after {_when(bak.stat().st_mtime)} is lost"
        return Finding("state", False, f"{why}; moved to {aside.name} and restored the backup ({lost})", fixed=True)
    StateDB.open(path).close()
    return Finding("state", False, f"{why}; moved to {aside.name} and started an empty state (no usable backup: "
                                   "every job and attempt recorded there is lost; dispatch the plans again)", fixed=True)


def _scheduler_running(home: Path) -> str | None:
    """Who holds the scheduler lock (a running gwi watch/dispatch), or None."""
    lock = home / "scheduler.lock"
    if not lock.exists():
        return None
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
        return f"a gwi scheduler (pid {holder}) is running; stop it first"
    finally:
        os.close(fd)


# -- profiles and stores -------------------------------------------------------------------------------


def check_profiles() -> list[Finding]:
    """Every profile file where gwi looks for them, loaded on its own: one broken file is named, the rest still load."""
    from .adapters.base import parse_profile, profile_dirs

    out = []
    for d in profile_dirs():
        if not d.is_dir():
            continue
        for p in sorted(d.glob("*.yaml")) + sorted(d.glob("*.yml")):
            try:
                prof = parse_profile(p)
                out.append(Finding("profiles", True, f"{p}: {prof.adapter} platform '{prof.name}'"))
            except (GwiError, ValueError, OSError) as e:
                out.append(Finding("profiles", False, str(e)))
    return out or [Finding("profiles", False, "no platform profiles found (platforms/*.yaml, $GWI_PLATFORMS)")]


def _known_stores(home: Path) -> list[str]:
    path = home / "state.db"
    if not path.exists() or _readable(path):
        return []
    st = StateDB.open_readonly(path)
    try:
        return sorted({r["store"] for r in st.db.execute("SELECT store FROM specs")})
    finally:
        st.close()


def _probe(url: str) -> None:
    from .store import open_store

    open_store(url, patience=0).list("datasets")


def check_stores(home: Path, timeout_s: float) -> list[Finding]:
    """Whether each store of a dispatched plan answers now (no waiting out an outage: patience 0, and
    a store that does not answer within ``timeout_s`` is reported as such)."""
    out = []
    for url in _known_stores(home):
        box: dict = {}

        def probe(url=url, box=box):
            try:
                _probe(url)
            except Exception as e:  # noqa: BLE001 - reported, whatever it is
                box["error"] = e

        t = threading.Thread(target=probe, daemon=True)
        t.start()
        t.join(timeout_s)
        if t.is_alive():
            out.append(Finding("store", False, f"{url}: no answer within {timeout_s:g} s"))
        elif "error" in box:
            out.append(Finding("store", False, f"{url}: unreachable: {box['error']}"))
        else:
            out.append(Finding("store", True, f"{url}: reachable"))
    return out


# -- the cache ---------------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lock_pid(path: Path) -> int | None:
    m = re.search(r"\d+", path.read_text(errors="replace")[:200])
    return int(m.group()) if m else None


def _lock_free(path: Path) -> bool:
    """Nobody holds the flock on ``path`` now (the lock is the flock, the file only names the last holder)."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # drops the flock if taken


def _stray(path: Path, now: float) -> str | None:
    """Why a cache file is left over from a dead process, or None."""
    try:
        if path.name.endswith(".lock"):
            pid = _lock_pid(path)
            if pid is not None and not _pid_alive(pid) and _lock_free(path):
                return f"lock of pid {pid}, which is gone"
            return None
        m = _TEMP.search(path.name)
        if m:
            if m.group(1) and not _pid_alive(int(m.group(1))):
                return f"temp file of pid {m.group(1)}, which is gone"
            idle = now - path.stat().st_mtime
            return f"unfinished download, untouched for {idle / 60:.0f} min" if idle > STALE_TEMP_S else None
    except OSError:
        return None
    return None


def check_cache(cache: Path, fix: bool) -> list[Finding]:
    """Stray ``*.partial``/``*.download`` files and lock files of dead processes in the data cache."""
    if not cache.is_dir():
        return [Finding("cache", True, f"{cache}: none yet")]
    now, out = time.time(), []
    for p in sorted(cache.rglob("*")):
        why = _stray(p, now) if p.is_file() else None
        if why is None:
            continue
        fixed = False
        if fix:
            p.unlink(missing_ok=True)
            fixed = True
        out.append(Finding("cache", False, f"{p}: {why}" + ("; removed" if fixed else ""), fixed))
    return out or [Finding("cache", True, f"{cache}: no stray downloads or stale locks")]
