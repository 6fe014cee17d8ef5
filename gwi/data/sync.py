"""``gwi data push|pull|verify``: moving datasets between stores and the local cache, checksummed.

The cache (``GWI_CACHE``, default the user's cache dir) holds one folder per dataset URL. A shard is
used only after its sha256 matched the manifest; downloads land in temp files that are renamed into
place once verified, and the manifest is written last, so an interrupted pull (even a SIGKILL) never
leaves a folder that looks complete. A record of verified files (size, mtime, sha256) lets the next
pull skip re-hashing what is already there and unchanged.

Several jobs on one machine may pull the same dataset at once: a pull holds an exclusive lock
(``flock`` on ``<folder>.lock`` beside the folder) from start to end, so the second waits for the
first (up to ``GWI_PULL_LOCK_TIMEOUT_S``, default an hour) and then finds every shard verified. The
kernel drops the lock when its holder dies, however it dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError, GwiError, IntegrityError, StoreError
from ..paths import UnsafePath, safe_join
from ..store import FileStore, Store, open_store
from .shards import MANIFEST, load_manifest, parse_manifest, sha256_file

VERIFIED = ".gwi-verified.json"
LOCK_TIMEOUT_ENV = "GWI_PULL_LOCK_TIMEOUT_S"
# what a pull leaves only while it runs (its own temp files, and the store's); swept under the lock
_TEMP_SUFFIXES = (".download", ".partial", ".tmp")


def _unique(p: Path, suffix: str) -> Path:
    """A temp name beside ``p`` that no other process or thread can pick."""
    return p.with_name(f".{p.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{suffix}")


def cache_root() -> Path:
    env = os.environ.get("GWI_CACHE")
    if env:
        return Path(env).expanduser()
    try:
        from platformdirs import user_cache_dir

        return Path(user_cache_dir("gwi"))
    except ImportError:  # pragma: no cover
        return Path.home() / ".cache" / "gwi"


def cache_dir_for(url: str) -> Path:
    """The local folder for a dataset URL: readable name, plus a hash so two stores never collide."""
    url = url.rstrip("/")
    tail = re.sub(r"[^A-Za-z0-9._-]+", "_", url.rsplit("/", 1)[-1])[:60]
    return cache_root() / "datasets" / f"{tail}-{hashlib.sha256(url.encode()).hexdigest()[:12]}"


def _progress(total_bytes: int, desc: str, enabled: bool | None):
    from ..console import progress

    return progress(total_bytes, desc, enabled=enabled, data=True)


class _Verified:
    """(size, mtime_ns) → sha256 of files already hashed, so unchanged files are not hashed again."""

    def __init__(self, root: Path):
        self.path = root / VERIFIED
        self.lock = threading.Lock()
        try:
            self.data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.data = {}

    def ok(self, rel: str, sha: str) -> bool:
        p = self.path.parent / rel
        try:
            st = p.stat()
        except OSError:
            return False
        rec = self.data.get(rel)
        return bool(rec) and rec == [st.st_size, st.st_mtime_ns, sha]

    def add(self, rel: str, sha: str) -> None:
        st = (self.path.parent / rel).stat()
        with self.lock:
            self.data[rel] = [st.st_size, st.st_mtime_ns, sha]

    def save(self) -> None:
        tmp = _unique(self.path, ".tmp")
        try:
            tmp.write_text(json.dumps(self.data))
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)


def _stderr(msg: str) -> None:
    print(f"gwi: {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _pull_lock(root: Path, what: str, log: Callable[[str], None]) -> Iterator[None]:
    """Hold ``<root>.lock`` exclusively; wait (bounded) while another process holds it."""
    raw = os.environ.get(LOCK_TIMEOUT_ENV, "").strip()
    try:
        timeout = float(raw) if raw else 3600.0
    except ValueError:
        raise GwiError(f"{LOCK_TIMEOUT_ENV}: expected seconds (a number), got {raw!r}") from None
    path = root.with_name(root.name + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        t0, told = time.monotonic(), False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                if not told:
                    log(f"waiting for another pull of {what} (pid {holder})")
                    told = True
                if time.monotonic() - t0 > timeout:
                    raise GwiError(f"pull {what}: another pull (pid {holder}) still holds {path} after "
                                   f"{timeout:g} s ({LOCK_TIMEOUT_ENV}); if no such process is running, "
                                   "it is a stale lock of another machine sharing the cache") from None
                time.sleep(0.2)
        # the holder's pid, for the message of whoever waits next (the lock itself is the flock)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock; the file stays (unlinking a lock file races a new locker)


def _sweep_temps(root: Path) -> None:
    """Remove temp files a killed pull left behind (only called under the lock: none is live)."""
    for p in root.rglob(".*"):
        if p.is_file() and p.name.endswith(_TEMP_SUFFIXES):
            p.unlink(missing_ok=True)


def pull(url: str, dest: str | os.PathLike | None = None, *, workers: int = 4,
         progress: bool | None = None, on_progress: Callable[[int, int], None] | None = None,
         log: Callable[[str], None] | None = None) -> Path:
    """Make a verified local copy of the dataset at ``url``; returns its folder.

    Already cached and verified shards are skipped; a corrupt or partial local file is replaced.
    A local ``file://`` dataset is still copied, so training never reads a store in place.
    ``on_progress(done, total)`` is called after each shard is verified (a heartbeat's advance);
    ``log`` gets one-line notes (default: stderr). Another process pulling the same folder is
    waited for, and its work reused.
    """
    log = log or _stderr
    store = open_store(url)
    root = Path(dest) if dest else cache_dir_for(store.url)
    with _pull_lock(root, store.url, log):
        return _pull_locked(store, root, workers, progress, on_progress, log)


# one pass in order: check paths, reuse what is verified, fetch the rest, then the manifest last
def _pull_locked(store: Store, root: Path, workers: int, progress: bool | None,
                 on_progress: Callable[[int, int], None] | None, log: Callable[[str], None]) -> Path:
    raw = store.get_bytes(MANIFEST)
    where = store.key_url(MANIFEST)
    manifest = parse_manifest(raw, where)
    shards = manifest["shards"]
    root.mkdir(parents=True, exist_ok=True)
    _sweep_temps(root)
    local = {}
    for s in shards:
        try:
            local[s["path"]] = safe_join(root, s["path"])
        except UnsafePath as e:
            raise DataError(f"{where}: shard path {s['path']!r} would leave the cache folder ({e})") from None
    # a different build is coming: the old manifest must not vouch for a half-replaced folder
    old = root / MANIFEST
    if old.is_file() and old.read_bytes() != raw:
        old.unlink()
    ver = _Verified(root)
    todo = [s for s in shards if not ver.ok(s["path"], s["sha256"])]
    count, count_lock = {"done": len(shards) - len(todo)}, threading.Lock()

    def verified() -> None:
        if on_progress is not None:
            with count_lock:
                count["done"] += 1
                on_progress(count["done"], len(shards))

    # a local file of the right size whose hash matches counts as cached (e.g. a copied cache)
    still = []
    for s in todo:
        p = local[s["path"]]
        if p.is_file() and p.stat().st_size == s.get("bytes", -1) and sha256_file(p) == s["sha256"]:
            ver.add(s["path"], s["sha256"])
            verified()
        else:
            still.append(s)
    total = sum(s.get("bytes", 0) for s in still)
    errors: list[str] = []
    if still:
        log(f"pulling {manifest.get('name', store.url)}: {len(still)} of {len(shards)} shards to fetch")

    def fetch(s: dict) -> None:
        p = local[s["path"]]
        p.unlink(missing_ok=True)  # a stale or corrupt copy must not survive a failed fetch
        tmp = _unique(p, ".download")
        try:
            store.get_file(s["path"], tmp)
            got = sha256_file(tmp)
            if got != s["sha256"]:
                errors.append(f"{store.key_url(s['path'])}: sha256 {got[:12]}…, manifest says {s['sha256'][:12]}…")
                return
            os.replace(tmp, p)
            ver.add(s["path"], s["sha256"])
            bar.update(s.get("bytes", 0))
        finally:
            tmp.unlink(missing_ok=True)
        verified()

    try:
        with _progress(total, f"pull {manifest.get('name', '')}", progress) as bar:
            _run_all(fetch, still, workers)
    finally:
        ver.save()
    if errors:
        raise IntegrityError("pull failed, the store holds corrupt shards:\n  " + "\n  ".join(errors))
    # the manifest goes in last: the local copy is complete before it looks complete
    tmp = _unique(root / MANIFEST, ".tmp")
    try:
        tmp.write_bytes(raw)
        os.replace(tmp, root / MANIFEST)
    finally:
        tmp.unlink(missing_ok=True)
    _prune(root, {s["path"] for s in shards})
    return root


def _run_all(fn, items, workers: int) -> None:
    """Run ``fn`` over ``items`` in threads; the first error cancels what has not started."""
    if not items:
        return
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        for f in [pool.submit(fn, it) for it in items]:
            f.result()
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _prune(root: Path, keep: set[str]) -> None:
    """Remove shards of earlier builds that the current manifest no longer lists."""
    sh = root / "shards"
    if not sh.is_dir():
        return
    for p in sh.rglob("*"):
        if p.is_file() and p.relative_to(root).as_posix() not in keep:
            p.unlink(missing_ok=True)
    for d in sorted((d for d in sh.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts)):
        try:
            d.rmdir()
        except OSError:
            pass


@dataclass
class Problem:
    path: str
    what: str

    def __str__(self) -> str:
        return f"{self.path}: {self.what}"


def verify(url: str, *, workers: int = 4, progress: bool | None = None) -> tuple[dict, list[Problem]]:
    """Re-hash every shard where it is stored; returns the manifest and every mismatch found."""
    store = open_store(url)
    manifest = load_manifest(store)
    problems: list[Problem] = []
    lock = threading.Lock()

    def check(s: dict) -> None:
        where = store.key_url(s["path"])
        try:
            size = store.size(s["path"])
        except StoreError as e:
            with lock:
                problems.append(Problem(where, "missing" if "no such object" in str(e) else str(e)))
            return
        if "bytes" in s and size != s["bytes"]:
            with lock:
                problems.append(Problem(where, f"size {size} bytes, manifest says {s['bytes']}"))
            bar.update(size)
            return
        h = hashlib.sha256()
        for chunk in store.iter_chunks(s["path"]):
            h.update(chunk)
            bar.update(len(chunk))
        if h.hexdigest() != s["sha256"]:
            with lock:
                problems.append(Problem(where, f"sha256 {h.hexdigest()[:12]}…, manifest says {s['sha256'][:12]}…"))

    shards = manifest["shards"]
    with _progress(sum(s.get("bytes", 0) for s in shards), f"verify {manifest.get('name', '')}", progress) as bar:
        _run_all(check, shards, workers)
    problems.sort(key=lambda p: p.path)
    return manifest, problems


def push(src: str | os.PathLike, dest_url: str, *, workers: int = 4, progress: bool | None = None) -> dict:
    """Copy a dataset (a local folder or a store URL) to ``dest_url``, verifying every shard.

    Shards already at the destination with the right size are not sent again; the manifest is
    written last, so the destination never lists a shard it does not hold.
    """
    src_s = str(src)
    src_store: Store = open_store(src_s) if "://" in src_s else FileStore(src_s)
    raw = src_store.get_bytes(MANIFEST)
    manifest = parse_manifest(raw, src_store.key_url(MANIFEST))
    dst = open_store(dest_url)
    existing = {}
    if dst.exists(MANIFEST):
        try:
            old = json.loads(dst.get_bytes(MANIFEST))
            existing = {s["path"]: s["sha256"] for s in old.get("shards", [])}
        except ValueError:
            existing = {}
    todo = []
    for s in manifest["shards"]:
        if existing.get(s["path"]) == s["sha256"] and dst.exists(s["path"]) and dst.size(s["path"]) == s.get("bytes"):
            continue
        todo.append(s)

    def send(s: dict) -> None:
        if isinstance(src_store, FileStore):
            p = src_store.path(s["path"])
            if sha256_file(p) != s["sha256"]:
                raise IntegrityError(f"{p}: sha256 does not match the manifest; run 'gwi data verify' on the source")
            dst.put_file(p, s["path"])
        else:
            import tempfile

            with tempfile.TemporaryDirectory(prefix="gwi-push-") as d:
                p = Path(d) / "shard.npy"
                src_store.get_file(s["path"], p)
                if sha256_file(p) != s["sha256"]:
                    raise IntegrityError(f"{src_store.key_url(s['path'])}: sha256 does not match the manifest")
                dst.put_file(p, s["path"], move=True)
        bar.update(s.get("bytes", 0))

    with _progress(sum(s.get("bytes", 0) for s in todo), f"push {manifest.get('name', '')}", progress) as bar:
        _run_all(send, todo, workers)
    dst.put_bytes(MANIFEST, raw)
    return manifest
