"""The data as training reads it: the dataset pulled and split, each epoch's order, batches read ahead by
a DataLoader, the flips. The order and the flips are pure functions of (seed, epoch, step), so a resumed
run sees the batches the crashed one would have seen."""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .. import progress
from ..config import ENV_CACHE_LIMIT, TrainConfig
from ..data import folds, mix
from ..data.cache import (
    ShardCache,
    StreamedDataset,
    human,
    parse_size,
    stream_length,
    stream_order,
)
from ..data.shards import MANIFEST, ShardedDataset, parse_manifest
from ..data.sync import cache_dir_for, cache_root, pull
from ..errors import GwiError
from ..inference import Normalizer
from ..store import open_store
from .distributed import Dist

AUTO_FRACTION = 0.8  # of the free disk, by default: room stays for checkpoints, logs and the rest


@dataclass
class Source:
    """One dataset of the run and its share of each epoch: its samples are ``offset + j`` in
    :attr:`Data.ds` (:mod:`gwi.data.mix`)."""

    url: str
    weight: float  # samples drawn per epoch, as a multiple of its own training samples
    ds: ShardedDataset | StreamedDataset
    manifest_sha: str
    train_idx: np.ndarray  # its own numbering
    offset: int
    window: int = 0  # streamed: shards whose samples each epoch shuffles together (0: pulled whole)

    @property
    def name(self) -> str:
        return str(self.ds.manifest.get("name") or self.url.rstrip("/").rsplit("/", 1)[-1])

    def base(self, world: int) -> int:
        """Samples per rank of its own epoch (weight 1)."""
        if self.window:
            return stream_length([len(u) for u in self.units], world)
        return len(self.train_idx) // world

    @functools.cached_property
    def units(self) -> list[np.ndarray]:
        """A streamed dataset's training samples grouped by shard (:func:`stream_order`'s input)."""
        return self.ds.units(self.train_idx)

    def draws(self, world: int) -> int:
        return mix.draws(self.weight, self.base(world))

    def order(self, seed: int, epoch: int, rank: int, world: int) -> np.ndarray:
        """This rank's share of an epoch, numbered in :attr:`Data.ds`."""
        def own(e: int) -> np.ndarray:
            if self.window:  # whole shards a few at a time, fetched ahead by the cache
                return stream_order(self.units, seed, e, rank, world, self.window)[0]
            return epoch_order(self.train_idx, seed, e, rank, world)
        return mix.repeat_order(own, self.weight, self.base(world), epoch) + self.offset

    def describe(self, world: int) -> dict:
        return {"url": self.url, "name": self.name, "weight": self.weight, "train_samples": len(self.train_idx),
                "samples_per_epoch": self.draws(world) * world, "streamed": bool(self.window),
                "manifest_sha256": self.manifest_sha}


@dataclass
class Data:
    """The datasets as training sees them: each pulled whole or streamed through a bounded cache,
    numbered one after the other in ``ds`` (a :class:`~gwi.data.mix.MixedDataset` when there are several)."""

    ds: ShardedDataset | StreamedDataset | mix.MixedDataset
    sources: list[Source]
    manifest: dict  # the first dataset's: its normalisation is the run's
    manifest_sha: str
    val_idx: np.ndarray
    families: list[str]
    norm: Normalizer
    mean_map: torch.Tensor  # the predict-the-training-mean baseline, on the device
    val_source: int = 0

    @property
    def train_samples(self) -> int:
        return sum(len(s.train_idx) for s in self.sources)

    def epoch_len(self, world: int) -> int:
        """Samples per rank and epoch: each dataset's draws."""
        return sum(s.draws(world) for s in self.sources)

    def epoch(self, seed: int, epoch: int, rank: int, world: int) -> np.ndarray:
        """This rank's samples of an epoch, in order: a pure function of its arguments, so a resumed
        run reads what the crashed one would have. Seeds differ per dataset: two datasets of equal
        size are not drawn in step."""
        shares = [s.order(seed + 1_000_003 * i, epoch, rank, world) for i, s in enumerate(self.sources)]
        return mix.interleave(shares, seed, epoch, rank)

    def mix(self, world: int) -> list[dict]:
        """Each dataset's part in an epoch, for the run's checkpoint, metrics and ``gwi runs``."""
        return [s.describe(world) for s in self.sources]


def pulled(done: int, total: int) -> None:
    """A shard pulled (or found cached and verified): an advance of the process heartbeat."""
    progress.update(phase="pulling", shards_pulled=done, shards_total=total)


def load_data(cfg: TrainConfig, d: Dist, device: torch.device, log=print) -> Data:
    """The run's datasets in the local cache (each pulled whole, or streamed when they do not fit the
    cache limit), their splits and the first one's normalisation. Validation is on the split of the
    first dataset or of ``cfg.val_dataset``."""
    parts = cfg.parts()
    manifests = [read_manifest(url) for url, _ in parts]
    limits = cache_shares([sum(int(s["bytes"]) for s in m[0]["shards"]) for m in manifests], cache_limit(cfg))
    sources, val_idx, offset = [], None, 0
    val_at = val_source(cfg, parts)  # checked by TrainConfig.validate
    known = sorted({f for m, _ in manifests for f in m["families"]})
    unknown = sorted(set(cfg.families) - set(known))
    if unknown:  # a specialist: its families must be somewhere in the data
        raise GwiError(f"families: {', '.join(unknown)} not in dataset {', '.join(u for u, _ in parts)}; "
                       f"expected some of {', '.join(known)}")
    for (url, _), (manifest, _) in zip(parts, manifests):
        check_compatible(url, manifest, manifests[0][0], parts[0][0])
    for i, ((url, weight), (manifest, raw), limit) in enumerate(zip(parts, manifests, limits)):
        ds = open_dataset(url, manifest, limit, cfg, d, log)
        train_idx, v_idx = split(cfg, url, ds)
        window = cfg.stream_window if isinstance(ds, StreamedDataset) else 0
        sources.append(Source(url, weight, ds, hashlib.sha256(raw).hexdigest(), train_idx, offset, window))
        if i == val_at:
            val_idx = v_idx
        offset += len(ds)
    if cfg.split.startswith("family:") and not len(val_idx):
        raise GwiError(f"split {cfg.split}: validation dataset {parts[val_at][0]} has no such samples; "
                       "name the dataset that holds the family with val_dataset")
    first = sources[0]
    families = sorted(set(cfg.families) if cfg.families else {f for s in sources for f in s.ds.manifest["families"]})
    ds = first.ds if len(sources) == 1 else mix.MixedDataset([s.ds for s in sources])
    val, mean_from = sources[val_at], sources[val_at].train_idx
    if val.window:
        val_idx, mean_from = streamed_subsets(val.ds, val.train_idx, val_idx, cfg, log)
    if len(sources) == 1:
        sha = first.manifest_sha  # as before mixing existed: a resume of an older run sees the same data
    else:
        sha = hashlib.sha256("".join(f"{s.url} {s.weight!r} {s.manifest_sha}\n" for s in sources).encode()).hexdigest()
        log("mixing " + ", ".join(f"{s.name} x{s.weight:g} ({s.draws(d.world) * d.world} of {len(s.train_idx)} samples "
                                  f"per epoch)" for s in sources) + f"; validation on {val.name}")
    data = Data(ds, sources, first.ds.manifest, sha, val_idx + val.offset, families,
                Normalizer.from_manifest(first.ds.manifest), train_mean_map(val.ds, mean_from).to(device), val_at)
    if data.epoch_len(d.world) < 1:
        raise GwiError(f"split {cfg.split} leaves {data.train_samples} training samples for {d.world} ranks")
    return data


def read_manifest(url: str) -> tuple[dict, bytes]:
    store = open_store(url)
    raw = store.get_bytes(MANIFEST)
    return parse_manifest(raw, store.key_url(MANIFEST)), raw


def val_source(cfg: TrainConfig, parts: list[tuple[str, float]]) -> int:
    """Which dataset validates: the first, or the one ``cfg.val_dataset`` names (its URL or name)."""
    names = [(url, url.rstrip("/").rsplit("/", 1)[-1]) for url, _ in parts]
    return next((i for i, n in enumerate(names) if cfg.val_dataset in n), 0)


def check_compatible(url: str, manifest: dict, first: dict, first_url: str) -> None:
    if not manifest.get("labelled", True):
        raise GwiError(f"dataset {url} has no velocity labels (a test set?); train needs labelled data")
    got, want = list(manifest.get("seismic_shape", [])), list(first.get("seismic_shape", []))
    if got != want:
        raise GwiError(f"dataset {url}: seismic shape {got} differs from {want} of {first_url}, the first dataset; "
                       "a run reads one shape")


def split(cfg: TrainConfig, url: str, ds) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) samples of one dataset: the split, then only ``cfg.families`` (a specialist)."""
    manifest = ds.manifest
    kind, _, family = cfg.split.partition(":")
    if kind == "family" and family not in manifest["families"] and len(cfg.parts()) > 1:
        # a mixed-in dataset without the held-out family (a pseudo-labelled set): all of it trains
        train_idx, val_idx = np.arange(len(ds)), np.empty(0, np.int64)
    else:
        train_idx, val_idx = folds.split(manifest, cfg.split, cfg.seed)
    if cfg.families:
        train_idx = train_idx[np.isin(ds.families[train_idx], cfg.families)]
        val_idx = val_idx[np.isin(ds.families[val_idx], cfg.families)]
    return train_idx, val_idx


def cache_limit(cfg: TrainConfig) -> int | None:
    """The bytes the run's datasets may take on local disk: ``cfg.cache_limit``, else GWI_CACHE_LIMIT (a
    platform profile's ``cache_limit``), else most of the cache folder's free disk; None: no bound
    (``none``, pulled whole whatever their size)."""
    text = cfg.cache_limit or os.environ.get(ENV_CACHE_LIMIT, "") or "auto"
    if text.strip().lower() == "none":
        return None
    if text.strip().lower() == "auto":
        root = cache_root()
        root.mkdir(parents=True, exist_ok=True)
        return int(shutil.disk_usage(root).free * AUTO_FRACTION) + cached_bytes(cfg)
    return parse_size(text)


def cached_bytes(cfg: TrainConfig) -> int:
    """Bytes of the run's datasets already in the cache (they count toward the limit, not the free disk)."""
    total = 0
    for url, _ in cfg.parts():
        whole = cache_dir_for(url)
        for folder in [whole, *whole.parent.glob(f"{whole.name}-stream-*")]:
            if folder.is_dir():
                total += sum(p.stat().st_size for p in folder.rglob("*.npy") if p.is_file())
    return total


def cache_shares(sizes: list[int], limit: int | None) -> list[int | None]:
    """Each dataset's part of the cache limit: None for one pulled whole (it fits in what is left beside
    the others' shares), else the bytes its stream may hold. Small datasets first: they are pulled while
    the larger ones share the rest equally."""
    if limit is None or sum(sizes) <= limit:
        return [None] * len(sizes)
    out: list[int | None] = [None] * len(sizes)
    left, waiting = limit, sorted(range(len(sizes)), key=lambda i: sizes[i])
    while waiting:
        i = waiting[0]
        if sizes[i] <= left // len(waiting):
            left -= sizes[i]
            waiting.pop(0)
            continue
        for j in waiting:
            out[j] = left // len(waiting)
        break
    return out


def open_dataset(url: str, manifest: dict, limit: int | None, cfg: TrainConfig, d: Dist, log):
    """One dataset: pulled whole (``limit`` None), or streamed through a cache of ``limit`` bytes, each
    rank its own share and folder (ranks read disjoint shards: ``stream_order``)."""
    if limit is None:
        # rank 0 pulls into the cache; the other ranks (torchrun: the same machine) read that folder
        local = pull(url, progress=False, on_progress=pulled) if d.master else None
        if d.enabled:
            obj = [str(local) if local else None]
            dist.broadcast_object_list(obj, src=0)
            local = Path(obj[0])
        return ShardedDataset(local)
    size = sum(int(s["bytes"]) for s in manifest["shards"])
    share = limit // max(1, d.world)
    whole = cache_dir_for(url)  # where a pull would put it; the stream's folder is beside it
    root = whole.with_name(f"{whole.name}-stream-{d.rank}")
    cache = ShardCache(url, share, root=root, at_once=cfg.stream_window + 1, log=log)
    log(f"streaming {manifest['name']} ({human(size)}) through a cache of {human(share)} in {root}")
    return StreamedDataset(cache)


def streamed_subsets(ds: StreamedDataset, train_idx: np.ndarray, val_idx: np.ndarray, cfg: TrainConfig,
                     log) -> tuple[np.ndarray, np.ndarray]:
    """(validation samples, samples for the mean map) a streamed run can afford: those of a few shards,
    one per family where the cache has room for them beside the training window (a split spread over
    every shard would fetch the whole dataset at every validation)."""
    room = max(1, ds.cache.limit // max(u.bytes for u in ds.cache.units) - cfg.stream_window - 1)
    owner = ds.unit_of(val_idx)
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0xFA11]))
    chosen, seen = [], set()
    for k in rng.permutation(len(ds.cache.units)).tolist():
        fam = ds.cache.units[k].x["family"]
        if fam not in seen and (owner == k).any():
            chosen.append(k)
            seen.add(fam)
        if len(chosen) >= room:
            break
    keep = val_idx[np.isin(owner, chosen)]
    log(f"streaming: validation on the {len(keep)} validation samples of {len(chosen)} shard(s) (of {len(val_idx)} "
        f"in the split), families {', '.join(sorted(seen))}")
    first = stream_order(ds.units(train_idx), cfg.seed, 0, 0, 1, cfg.stream_window)[0]
    return keep, first[:2048]


def train_mean_map(ds: ShardedDataset, idx: np.ndarray, limit: int = 2048) -> torch.Tensor:
    """Per-pixel mean velocity of (up to ``limit``) training samples: the predict-the-mean baseline."""
    take = idx if len(idx) <= limit else np.random.default_rng(0).choice(idx, limit, replace=False)
    acc = np.zeros((1, 70, 70), np.float64)
    for s in range(0, len(take), 256):
        _, y = ds.batch(np.sort(take[s:s + 256]))
        acc += y.sum(0)
    return torch.from_numpy(acc / max(1, len(take))).float()


def epoch_order(train_idx: np.ndarray, seed: int, epoch: int, rank: int, world: int) -> np.ndarray:
    """This rank's samples for an epoch: a pure function of (seed, epoch), equal length on all ranks."""
    perm = np.random.default_rng(np.random.SeedSequence([seed, epoch])).permutation(train_idx)
    per_rank = len(perm) // world
    return perm[rank * per_rank:(rank + 1) * per_rank]


class BatchReader(torch.utils.data.Dataset):
    """A batch, ``(indices, flips)`` from :func:`.loop.epoch_batches`, read from the memory-mapped shards with
    the flipped samples mirrored in the same copy (in the workers, off the training thread), kept
    float16: half the bytes to copy, pin and move to a GPU; the normalisation runs on the device.

    A worker process reopens the shards itself (:meth:`__getstate__`): pickled, a ``np.memmap`` would
    travel as a full copy of the data. ``roots`` is None when a dataset streams: its cache belongs to
    this process, so it is read here."""

    def __init__(self, ds):
        parts = getattr(ds, "parts", [ds])
        self.roots = [p.root for p in parts] if all(isinstance(p, ShardedDataset) for p in parts) else None
        self._ds = ds

    def __getstate__(self) -> dict:
        return {"roots": self.roots, "_ds": None}

    def __getitem__(self, key: tuple[np.ndarray, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        if self._ds is None:
            parts = [ShardedDataset(r) for r in self.roots]
            self._ds = parts[0] if len(parts) == 1 else mix.MixedDataset(parts)
        b, flips = key
        x, y = self._ds.batch(b, dtype=np.float16, flip=flips)
        return torch.from_numpy(x), torch.from_numpy(y)  # (B, 5, 1000, 70), (B, 1, 70, 70)


class EpochBatches(torch.utils.data.Sampler):
    """The batches left in the current epoch. The loop sets :attr:`batches` before each epoch; the
    DataLoader reads the sampler in the main process, so this works with persistent workers."""

    def __init__(self):
        self.batches: list[tuple[np.ndarray, np.ndarray]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def make_loader(ds, workers: int, device: torch.device, world: int):
    """A DataLoader of whole batches: worker processes read ahead (on a GPU), pinned memory makes the
    copies to the device asynchronous. On a CPU the reads run in the main process by default: a worker
    would only take cores from the model's own threads, and a batch read (a memcpy) is ~0.1% of a step.
    Its own generator: the loader's seed draw must not move the global RNG, which exact resume replays."""
    if workers < 0:
        workers = min(8, max(1, (os.cpu_count() or 2) // world - 1)) if device.type == "cuda" else 0
    reader = BatchReader(ds)
    if reader.roots is None:
        workers = 0  # a stream's cache is this process's: its threads fetch ahead, the reads are memcpy
    sampler = EpochBatches()
    loader = torch.utils.data.DataLoader(
        reader, batch_size=None, sampler=sampler, num_workers=workers,
        pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None, persistent_workers=workers > 0,
        generator=torch.Generator())
    return loader, sampler


def close_loader(loader) -> None:
    """Stop a loader's persistent workers now rather than whenever the loader is collected."""
    it = getattr(loader, "_iterator", None)
    if it is not None and hasattr(it, "_shutdown_workers"):
        it._shutdown_workers()


def flip_mask(n: int, p: float, step: int, seed: int) -> np.ndarray:
    """Which of a step's ``n`` samples are flipped (probability ``p`` each): a pure function of (seed,
    step), like the data order, so a resumed run flips what the crashed one would have."""
    if p <= 0:
        return np.zeros(n, bool)
    return np.random.default_rng((seed, step)).random(n) < p
