"""A bounded local cache of one dataset's shards, for datasets larger than the machine's disk.

``gwi data pull`` copies a whole dataset before training reads it; a free machine's tens of GB hold a
few percent of what won the competition. :class:`ShardCache` keeps at most ``limit`` bytes of a
dataset's shards on local disk instead: a shard (its seismic file and its velocity file, one *unit*)
is fetched when it is opened or ahead of need (:meth:`ShardCache.prefetch`, background threads),
verified against the manifest's sha256 as a pull verifies it, read memory-mapped, and evicted least
recently used when room is needed. A unit in use (pinned by :meth:`ShardCache.open` until
:meth:`ShardCache.release`) is never evicted, and neither is one the reader will want soon while an
older one can go. Room is reserved before a download starts, so the bytes on disk, downloads
included, never pass the limit.

:func:`stream_order` is the order that makes a bounded cache work: whole shards in a shuffled order,
each rank its own shards, samples shuffled within a window of a few shards. It is a pure function of
(seed, epoch, rank, world), like :func:`gwi.training.data.epoch_order`, so a resumed run reads what the
crashed one would have. The design and the libraries weighed against it: docs/design/streaming.md.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError, IntegrityError
from ..paths import UnsafePath, safe_join
from ..store import open_store
from .shards import MANIFEST, parse_manifest, sha256_file, x_shards, y_shard_for
from .sync import _unique, _Verified, cache_dir_for

MIN_UNITS = 2  # one shard read while the next arrives: less than this cannot stream


def parse_size(text: str | int) -> int:
    """``40GB``, ``512MiB``, ``1.5T``, ``1000000`` -> bytes (decimal units; ``i`` for binary ones)."""
    if isinstance(text, int):
        return text
    s = str(text).strip().upper().removesuffix("B")
    scale = 1
    for suffix, factor in (("KI", 2**10), ("MI", 2**20), ("GI", 2**30), ("TI", 2**40),
                           ("K", 10**3), ("M", 10**6), ("G", 10**9), ("T", 10**12)):
        if s.endswith(suffix):
            s, scale = s[:-len(suffix)], factor
            break
    try:
        n = float(s)
    except ValueError:
        raise ValueError(f"cache limit: expected a size like 40GB or 512MiB, got {text!r}") from None
    if n <= 0:
        raise ValueError(f"cache limit: expected a size above 0, got {text!r}")
    return int(n * scale)


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


@dataclass(frozen=True)
class Unit:
    """One shard of samples: its seismic file and, for labelled data, its velocity file."""

    index: int
    x: dict
    y: dict | None

    @property
    def files(self) -> list[dict]:
        return [self.x] + ([self.y] if self.y else [])

    @property
    def bytes(self) -> int:
        return sum(int(s["bytes"]) for s in self.files)

    @property
    def samples(self) -> int:
        return int(self.x["shape"][0])


class ShardCache:
    """At most ``limit`` bytes of the dataset at ``url`` on local disk under ``root`` (default: the
    dataset's folder in gwi's cache, the one ``gwi data pull`` fills), fetched by ``workers`` threads."""

    def __init__(self, url: str, limit: int, *, root: str | os.PathLike | None = None, workers: int = 2,
                 at_once: int = MIN_UNITS, log: Callable[[str], None] = lambda m: None):
        self.store = open_store(url)
        self.where = self.store.key_url(MANIFEST)
        self.manifest_bytes = self.store.get_bytes(MANIFEST)
        self.manifest = parse_manifest(self.manifest_bytes, self.where)
        self.units = [Unit(k, xs, y_shard_for(self.manifest, xs)) for k, xs in enumerate(x_shards(self.manifest))]
        self.limit = int(limit)
        # ``at_once``: the shards a reader holds open together (a shuffle window) and one arriving
        at_once = max(MIN_UNITS, at_once)
        need = at_once * max(u.bytes for u in self.units)
        if self.limit < need:
            raise DataError(f"cache limit {human(self.limit)} holds fewer than {at_once} shards of "
                            f"{self.manifest['name']} (the largest is {human(need // at_once)}): the smallest "
                            f"workable limit is {human(need)}")
        self.root = Path(root) if root else cache_dir_for(self.store.url)
        self.root.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.cond = threading.Condition()
        self.present: OrderedDict[int, int] = OrderedDict()  # unit -> bytes on disk, least recently used first
        self.inflight: dict[int, Future] = {}
        self.reserved = 0  # bytes of the downloads in flight
        self.pins: Counter[int] = Counter()
        self.soon: list[int] = []  # what the reader will open next (prefetch's list), kept when evicting
        self.verified = _Verified(self.root)
        self.pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="gwi-cache")
        self.fetched = self.evicted = 0
        # the arrays of units present, memory-mapped once: np.load per batch was most of a streamed read
        self.maps: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
        self._adopt()

    # -- what is on disk ----------------------------------------------------------------------------

    def path(self, s: dict) -> Path:
        try:
            return safe_join(self.root, s["path"])
        except UnsafePath as e:
            raise DataError(f"{self.where}: shard path {s['path']!r} would leave the cache folder ({e})") from None

    def _adopt(self) -> None:
        """Count the verified units already here (an earlier run's, or a pull's), up to the limit;
        drop any others, and leftovers of downloads that never finished."""
        for p in self.root.rglob("*.download"):
            p.unlink(missing_ok=True)
        used = 0
        for u in self.units:
            whole = all(self.verified.ok(s["path"], s["sha256"]) for s in u.files)
            if whole and used + u.bytes <= self.limit:
                self.present[u.index] = u.bytes
                used += u.bytes
            elif any(self.path(s).exists() for s in u.files):
                self._remove(u)

    def used(self) -> int:
        """Bytes on disk and reserved for downloads in flight: never above the limit."""
        with self.cond:
            return sum(self.present.values()) + self.reserved

    def _remove(self, u: Unit) -> None:
        self.maps.pop(u.index, None)  # the map goes with the file, so the disk space is freed
        for s in u.files:
            self.path(s).unlink(missing_ok=True)

    # -- making room --------------------------------------------------------------------------------

    def _victim(self, keep_soon: bool) -> int | None:
        """The least recently used unit that is not pinned (nor wanted soon, when ``keep_soon``)."""
        soon = set(self.soon) if keep_soon else set()
        return next((k for k in self.present if not self.pins[k] and k not in soon), None)

    def _make_room(self, need: int, *, wait: bool) -> bool:
        """Evict until ``need`` more bytes fit (with ``self.cond`` held). ``wait``: block until pinned
        units are released; otherwise give up (False) rather than evict what the reader wants soon."""
        while sum(self.present.values()) + self.reserved + need > self.limit:
            k = self._victim(keep_soon=True)
            if k is None and wait:
                k = self._victim(keep_soon=False)
            if k is None:
                if not wait:
                    return False
                if not self.cond.wait(timeout=600):
                    raise DataError(f"cache {self.root}: no room for a shard of {human(need)} within the limit "
                                    f"{human(self.limit)} after 10 minutes: every shard here is in use")
                continue
            self.present.pop(k)
            self._remove(self.units[k])
            self.evicted += 1
        return True

    # -- fetching -----------------------------------------------------------------------------------

    def _start(self, k: int, *, wait: bool) -> Future | None:
        """The download of unit ``k`` (with ``self.cond`` held): running, started now, or None when
        there was no room and ``wait`` is False."""
        if k in self.inflight:
            return self.inflight[k]
        u = self.units[k]
        if not self._make_room(u.bytes, wait=wait):
            return None
        self.reserved += u.bytes
        f = self.pool.submit(self._download, u)
        self.inflight[k] = f
        return f

    def _download(self, u: Unit) -> None:
        try:
            for s in u.files:
                self._fetch_file(s)
        except BaseException:
            with self.cond:
                self.reserved -= u.bytes
                self.inflight.pop(u.index, None)
                self.cond.notify_all()
            self._remove(u)
            raise
        with self.cond:
            self.reserved -= u.bytes
            self.inflight.pop(u.index, None)
            self.present[u.index] = u.bytes
            self.fetched += 1
            self.cond.notify_all()
        self.verified.save()

    def _fetch_file(self, s: dict) -> None:
        """One shard file, verified by its sha256; a mismatch is fetched once more, then an error
        naming it: a corrupt shard is never trained on."""
        p = self.path(s)
        p.parent.mkdir(parents=True, exist_ok=True)
        for attempt in (1, 2):
            tmp = _unique(p, ".download")
            try:
                try:
                    self.store.get_file(s["path"], tmp)
                except Exception:  # noqa: BLE001 - a full disk reads differently from every store client
                    tmp.unlink(missing_ok=True)
                    free = shutil.disk_usage(self.root).free
                    if free < int(s["bytes"]):
                        raise DataError(f"cache {self.root}: the disk is full ({human(free)} free) with "
                                        f"{human(self.used())} cached; a cache limit of at most "
                                        f"{human(self.used() + free)} fits this disk") from None
                    raise
                got = sha256_file(tmp)
                if got == s["sha256"]:
                    os.replace(tmp, p)
                    self.verified.add(s["path"], s["sha256"])
                    return
                self.log(f"{self.store.key_url(s['path'])}: sha256 {got[:12]}…, manifest says {s['sha256'][:12]}…; "
                         + ("fetching it again" if attempt == 1 else "giving up"))
            finally:
                tmp.unlink(missing_ok=True)
        raise IntegrityError(f"{self.store.key_url(s['path'])}: sha256 does not match the manifest after two "
                             "downloads; the store holds a corrupt shard (gwi data verify says which)")

    # -- the reader's side --------------------------------------------------------------------------

    def open(self, k: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Unit ``k``'s arrays, memory-mapped: ``(n, 5, T, 70)`` seismic and ``(n, 1, 70, 70)`` velocity
        (None for test data). Fetched first when it is not here; pinned until :meth:`release`."""
        with self.cond:
            self.pins[k] += 1
            f = None if k in self.present else self._start(k, wait=True)
        try:
            if f is not None:
                f.result()
            with self.cond:
                self.present.move_to_end(k)  # most recently used
                if k not in self.maps:
                    u = self.units[k]
                    self.maps[k] = (np.load(self.path(u.x), mmap_mode="r"),
                                    np.load(self.path(u.y), mmap_mode="r") if u.y else None)
                return self.maps[k]
        except BaseException:
            self.release(k)
            raise

    def release(self, k: int) -> None:
        with self.cond:
            self.pins[k] -= 1
            if self.pins[k] <= 0:
                del self.pins[k]
            self.cond.notify_all()

    def prefetch(self, upcoming: Iterable[int]) -> int:
        """Start fetching the units the reader will open next, in that order, as far as the limit
        allows without evicting any of them; returns how many are here or on their way."""
        upcoming = list(dict.fromkeys(upcoming))
        ready = 0
        with self.cond:
            self.soon = upcoming
            for k in upcoming:
                if k in self.present or k in self.inflight:
                    ready += 1
                    continue
                if self._start(k, wait=False) is None:
                    break
                ready += 1
        return ready

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.maps.clear()
        self.verified.save()


def stream_order(units: list[np.ndarray], seed: int, epoch: int, rank: int, world: int,
                 window: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """This rank's samples for an epoch, read a few shards at a time: ``(samples, unit of each)``.

    ``units[k]`` holds the sample indices of shard ``k`` that the epoch uses (its training samples).
    The shards are shuffled with (seed, epoch); rank ``r`` takes every ``world``-th of them from the
    ``r``-th, so ranks read disjoint shards; each run of ``window`` consecutive shards of a rank has its
    samples shuffled together. Every rank gets the same number of samples in every epoch
    (:func:`stream_length`), so ranks step together and an epoch has a fixed number of steps. A pure
    function of its arguments: the same order after a resume."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank/world: expected 0 <= rank < world, got {rank}/{world}")
    if window < 1:
        raise ValueError(f"window: expected at least 1 shard, got {window}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, 0x5EED]))
    order = rng.permutation(len(units))
    per_rank = [order[r::world] for r in range(world)]
    length = stream_length([len(u) for u in units], world)
    samples, owner = [], []
    for w in range(0, len(per_rank[rank]), window):
        ks = per_rank[rank][w:w + window]
        idx = np.concatenate([units[k] for k in ks]) if len(ks) else np.empty(0, np.int64)
        own = np.concatenate([np.full(len(units[k]), k) for k in ks]) if len(ks) else np.empty(0, np.int64)
        mix = np.random.default_rng(np.random.SeedSequence([seed, epoch, rank, w])).permutation(len(idx))
        samples.append(idx[mix])
        owner.append(own[mix])
    samples = np.concatenate(samples)[:length] if samples else np.empty(0, np.int64)
    owner = np.concatenate(owner)[:length] if owner else np.empty(0, np.int64)
    return samples.astype(np.int64), owner.astype(np.int64)


def stream_length(sizes: list[int], world: int) -> int:
    """Samples per rank and epoch that :func:`stream_order` gives: the fewest any rank can be dealt
    (its share of shards, the smallest ones), whatever the epoch's shuffle; all of them on one rank."""
    if world <= 1:
        return int(sum(sizes))
    return int(sum(sorted(sizes)[:len(sizes) // world]))


class StreamedDataset:
    """A dataset read through a :class:`ShardCache`: the reading side of
    :class:`~gwi.data.shards.ShardedDataset` (``len``, ``families``, ``offsets``, ``manifest``,
    ``batch``) without a whole local copy. A batch opens the shards it needs, reads its samples
    (mirrored where ``flip`` says, as ``ShardedDataset.batch`` does) and releases them."""

    def __init__(self, cache: ShardCache):
        self.cache, self.manifest = cache, cache.manifest
        self.offsets = np.concatenate([[0], np.cumsum([u.samples for u in cache.units])]).astype(np.int64)
        self.families = np.concatenate([np.full(u.samples, u.x["family"], dtype=object) for u in cache.units]).astype(str)
        self.labelled = all(u.y is not None for u in cache.units)
        self.upcoming: list[int] = []  # the shards the coming batches read, in order of first use (plan)
        self.position: dict[int, int] = {}  # shard -> its place in upcoming
        self.last_use: dict[int, int] = {}  # shard -> the last place in the planned samples that reads it
        self.planned = np.empty(0, np.int64)
        self.cursor = self.live = 0  # samples of the plan read; upcoming[live] is the first shard still needed
        self.ahead = 0

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def plan(self, idx: np.ndarray, ahead: int) -> None:
        """The samples the coming batches read, in order (as ``stream_order`` gives): after each batch
        the cache fetches the next ``ahead`` of their shards."""
        self.planned = np.asarray(idx, dtype=np.int64)
        owners = self.unit_of(self.planned)
        self.upcoming = list(dict.fromkeys(owners.tolist()))
        self.position = {k: i for i, k in enumerate(self.upcoming)}
        units, first_from_end = np.unique(owners[::-1], return_index=True)
        self.last_use = dict(zip(units.tolist(), (len(owners) - 1 - first_from_end).tolist()))
        self.cursor = self.live = 0
        self.ahead = ahead
        self.cache.prefetch(self.upcoming[:ahead])

    def unit_of(self, idx) -> np.ndarray:
        """The shard (unit) of each global sample index."""
        return np.searchsorted(self.offsets, np.asarray(idx), side="right") - 1

    def units(self, idx: np.ndarray) -> list[np.ndarray]:
        """``idx`` grouped by shard: ``units[k]`` holds the indices of ``idx`` in shard ``k``, in order
        (the input of :func:`stream_order`)."""
        idx = np.sort(np.asarray(idx, dtype=np.int64))
        return np.split(idx, np.searchsorted(idx, self.offsets[1:-1]))  # O(n log n), not one pass per shard

    def batch(self, idx, dtype=np.float32, flip=None) -> tuple[np.ndarray, np.ndarray | None]:
        idx = np.asarray(idx, dtype=np.int64)
        flip = np.zeros(len(idx), bool) if flip is None else np.asarray(flip, bool)
        if flip.shape != idx.shape:
            raise ValueError(f"flip: expected one flag per sample, shape {idx.shape}, got shape {flip.shape}")
        first = self.cache.units[0].x["shape"]
        xs = np.empty((len(idx), *first[1:]), dtype)
        ys = np.empty((len(idx), 1, 70, 70), dtype) if self.labelled else None
        owner = self.unit_of(idx)
        for k in dict.fromkeys(owner.tolist()):
            x, y = self.cache.open(k)
            try:
                for b in np.flatnonzero(owner == k):
                    j, f = int(idx[b] - self.offsets[k]), bool(flip[b])
                    xs[b] = x[j, ::-1, :, ::-1] if f else x[j]  # (5, T, 70)
                    if ys is not None:
                        ys[b] = y[j, ..., ::-1] if f else y[j]  # (1, 70, 70)
            finally:
                self.cache.release(k)
        self._advance(idx, owner)
        return xs, ys

    def _advance(self, idx: np.ndarray, owner: np.ndarray) -> None:
        """After a batch of the plan: fetch what the next batches read while the model works on this
        one, keeping every shard the window still has samples in (they are all wanted soon: a shard
        evicted mid-window would be fetched again)."""
        n = len(idx)
        if np.array_equal(np.sort(self.planned[self.cursor:self.cursor + n]), np.sort(idx)):
            self.cursor += n  # a validation batch, outside the plan, moves nothing
            while self.live < len(self.upcoming) and self.last_use[self.upcoming[self.live]] < self.cursor:
                self.live += 1
        last = max((self.position[k] for k in set(owner.tolist()) if k in self.position), default=None)
        if last is not None:
            self.cache.prefetch(self.upcoming[min(self.live, last):last + self.ahead])
