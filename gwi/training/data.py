"""The data as training reads it: the dataset pulled and split, each epoch's order, batches read ahead by
a DataLoader, the flips. The order and the flips are pure functions of (seed, epoch, step), so a resumed
run sees the batches the crashed one would have seen."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .. import progress
from ..config import TrainConfig
from ..data import folds
from ..data.cache import ShardCache, StreamedDataset, human, parse_size, stream_order
from ..data.shards import MANIFEST, ShardedDataset, parse_manifest
from ..data.sync import cache_dir_for, pull
from ..errors import GwiError
from ..inference import Normalizer
from ..store import open_store
from .distributed import Dist


@dataclass
class Data:
    """The dataset as training sees it: pulled whole, or streamed through a bounded cache."""

    ds: ShardedDataset | StreamedDataset
    manifest: dict
    manifest_sha: str
    train_idx: np.ndarray
    val_idx: np.ndarray
    families: list[str]
    norm: Normalizer
    mean_map: torch.Tensor  # the predict-the-training-mean baseline, on the device
    window: int = 0  # streamed: shards whose samples each epoch shuffles together (0: pulled whole)


def pulled(done: int, total: int) -> None:
    """A shard pulled (or found cached and verified): an advance of the process heartbeat."""
    progress.update(phase="pulling", shards_pulled=done, shards_total=total)


def load_data(cfg: TrainConfig, d: Dist, device: torch.device, log=print) -> Data:
    """The dataset in the local cache (pulled whole, or streamed when it is larger than
    ``cfg.cache_limit``), its split and normalisation."""
    ds = streamed(cfg, d, log)
    if ds is None:
        # rank 0 pulls into the cache; the other ranks (torchrun: the same machine) read that folder
        local = pull(cfg.dataset, progress=False, on_progress=pulled) if d.master else None
        if d.enabled:
            obj = [str(local) if local else None]
            dist.broadcast_object_list(obj, src=0)
            local = Path(obj[0])
        ds = ShardedDataset(local)
    manifest = ds.manifest
    if not manifest.get("labelled", True):
        raise GwiError(f"dataset {cfg.dataset} has no velocity labels (a test set?); train needs labelled data")
    raw = ds.cache.manifest_bytes if isinstance(ds, StreamedDataset) else (ds.root / MANIFEST).read_bytes()
    manifest_sha = hashlib.sha256(raw).hexdigest()  # the same bytes streamed or pulled
    train_idx, val_idx = folds.split(manifest, cfg.split, cfg.seed)
    families = sorted(manifest["families"])
    if cfg.families:  # a specialist: the split as for the whole set, then only these families' samples
        unknown = sorted(set(cfg.families) - set(families))
        if unknown:
            raise GwiError(f"families: {', '.join(unknown)} not in dataset {cfg.dataset}; "
                           f"expected some of {', '.join(families)}")
        train_idx = train_idx[np.isin(ds.families[train_idx], cfg.families)]
        val_idx = val_idx[np.isin(ds.families[val_idx], cfg.families)]
        families = sorted(set(cfg.families))
    if len(train_idx) < d.world:
        raise GwiError(f"split {cfg.split} leaves {len(train_idx)} training samples for {d.world} ranks")
    window, mean_from = 0, train_idx
    if isinstance(ds, StreamedDataset):
        window = cfg.stream_window
        val_idx, mean_from = streamed_subsets(ds, train_idx, val_idx, cfg, log)
    return Data(ds, manifest, manifest_sha, train_idx, val_idx, families,
                Normalizer.from_manifest(manifest), train_mean_map(ds, mean_from).to(device), window)


def streamed(cfg: TrainConfig, d: Dist, log) -> StreamedDataset | None:
    """The dataset through a bounded cache when ``cfg.cache_limit`` is below its size; None when it
    fits (it is pulled whole, as without a limit). Each rank has its own share of the limit and its own
    folder: ranks read disjoint shards (``stream_order``)."""
    if not cfg.cache_limit:
        return None
    total = parse_size(cfg.cache_limit)
    store = open_store(cfg.dataset)
    manifest = parse_manifest(store.get_bytes(MANIFEST), store.key_url(MANIFEST))
    size = sum(int(s["bytes"]) for s in manifest["shards"])
    if size <= total:  # it fits: pulled whole, read at random, as without a limit
        return None
    limit = total // max(1, d.world)
    whole = cache_dir_for(store.url)  # where a pull would put it; the stream's folder is beside it
    root = whole.with_name(f"{whole.name}-stream-{d.rank}")
    cache = ShardCache(cfg.dataset, limit, root=root, at_once=cfg.stream_window + 1, log=log)
    log(f"streaming {manifest['name']} ({human(size)}) through a cache of {human(limit)} in {root}")
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
    travel as a full copy of the data."""

    def __init__(self, ds: ShardedDataset):
        self.root, self._ds = getattr(ds, "root", None), ds  # a streamed dataset has no folder: read here

    def __getstate__(self) -> dict:
        return {"root": self.root, "_ds": None}

    def __getitem__(self, key: tuple[np.ndarray, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        if self._ds is None:
            self._ds = ShardedDataset(self.root)
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


def make_loader(ds: ShardedDataset | StreamedDataset, workers: int, device: torch.device, world: int):
    """A DataLoader of whole batches: worker processes read ahead (on a GPU), pinned memory makes the
    copies to the device asynchronous. On a CPU the reads run in the main process by default: a worker
    would only take cores from the model's own threads, and a batch read (a memcpy) is ~0.1% of a step.
    Its own generator: the loader's seed draw must not move the global RNG, which exact resume replays."""
    if workers < 0:
        workers = min(8, max(1, (os.cpu_count() or 2) // world - 1)) if device.type == "cuda" else 0
    if isinstance(ds, StreamedDataset):
        workers = 0  # the cache is this process's: its threads fetch ahead, the reads are memcpy
    sampler = EpochBatches()
    loader = torch.utils.data.DataLoader(
        BatchReader(ds), batch_size=None, sampler=sampler, num_workers=workers,
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
