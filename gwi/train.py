"""``gwi train``: one training loop for every model, every platform, one GPU or many.

The loop is deliberately plain (nanoGPT-style): DDP is detected from ``RANK`` (torchrun), rank 0 alone
writes; one autocast context; a GradScaler that is enabled only for fp16. What makes it survive a
platform dying under it:

* Checkpoints hold everything needed to resume exactly (model args and weights, optimizer, scheduler,
  scaler, EMA, step, epoch, position in the epoch, RNG states, normalisation constants, the dataset's
  manifest hash, the gwi version), contain only tensors and plain types (``torch.load(...,
  weights_only=True)``), and are published in two steps: ``checkpoints/step-<n>.pt`` is uploaded,
  then ``checkpoints/latest.json`` is replaced to point at it with its size and sha256. A reader
  never follows a pointer to a partial upload; a corrupt file is detected and the previous good one
  in the pointer's history is used.
* Data order is a pure function of (seed, epoch), so a resumed run sees the batches the crashed one
  would have seen, from the step after its last checkpoint.
* A heartbeat thread writes ``progress.json`` every ``heartbeat_s``; a crash writes state ``failed``
  with the error, the end writes ``metrics.json``. The scheduler reads these from the store.
"""

from __future__ import annotations

import copy
import gc
import hashlib
import json
import math
import os
import random
import socket
import tempfile
import time
import traceback
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from . import __version__, progress
from .data import folds
from .data.shards import ShardedDataset, log_transform, sha256_file
from .data.sync import cache_root, pull
from .errors import GwiError, StoreError
from .config import LOSSES, PRECISIONS, TrainConfig, apply_sets  # noqa: F401 - re-exported
from .models import registry
from .progress import Heartbeat
from .store import Store, open_store

# ------------------------------------------------------------------------------------------------
# normalisation


@dataclass
class Normalizer:
    """OpenFWI normalisation; its constants travel in every checkpoint so prediction applies exactly
    what training did."""

    seis_min: float
    seis_max: float
    vel_min: float = 1500.0
    vel_max: float = 4500.0
    vel_mean: float | None = None

    @classmethod
    def from_manifest(cls, m: dict) -> "Normalizer":
        n = m["normalisation"]
        g = n["seismic"]["global"]
        return cls(float(g["min"]), float(g["max"]), float(n["velocity"]["min"]), float(n["velocity"]["max"]),
                   n["velocity"].get("mean"))

    def seismic(self, x: torch.Tensor) -> torch.Tensor:
        x = log_transform(x.float())
        return (x - self.seis_min) / (self.seis_max - self.seis_min) * 2 - 1

    def velocity(self, v: torch.Tensor) -> torch.Tensor:
        return (v.float() - self.vel_min) / (self.vel_max - self.vel_min) * 2 - 1

    def denorm_velocity(self, v: torch.Tensor) -> torch.Tensor:
        return (v.float() + 1) / 2 * (self.vel_max - self.vel_min) + self.vel_min


# ------------------------------------------------------------------------------------------------
# distributed


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    enabled: bool = False

    @property
    def master(self) -> bool:
        return self.rank == 0


def setup_distributed(device_hint: str) -> Dist:
    if "RANK" not in os.environ:
        return Dist()
    rank, world = int(os.environ["RANK"]), int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and not device_hint.startswith("cpu")
    if use_cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Dist(rank, world, local, True)


# ------------------------------------------------------------------------------------------------
# batches


def epoch_order(train_idx: np.ndarray, seed: int, epoch: int, rank: int, world: int) -> np.ndarray:
    """This rank's samples for an epoch: a pure function of (seed, epoch), equal length on all ranks."""
    perm = np.random.default_rng(np.random.SeedSequence([seed, epoch])).permutation(train_idx)
    per_rank = len(perm) // world
    return perm[rank * per_rank:(rank + 1) * per_rank]


class Prefetcher:
    """Reads the next batches from the memory-mapped shards in threads while the model computes.

    Batches come back in order. Reads stay float16 (half the bytes to copy and to move to a GPU);
    numpy releases the GIL while copying, so a few threads keep a GPU fed.
    """

    def __init__(self, ds: ShardedDataset, batches: list[np.ndarray], depth: int = 4, workers: int = 0):
        from concurrent.futures import ThreadPoolExecutor

        self.ds, self.batches = ds, batches
        self.depth = max(1, depth)
        self.pool = ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1),
                                       thread_name_prefix="gwi-prefetch")
        self.futures: list = []

    def _load(self, b: np.ndarray):
        b = np.sort(b)  # sorted reads walk the memory map forwards
        x, y = self.ds.batch(b, dtype=np.float16)
        return torch.from_numpy(x), torch.from_numpy(y), b

    def __iter__(self):
        ahead = iter(self.batches)
        for b in ahead:
            self.futures.append(self.pool.submit(self._load, b))
            if len(self.futures) >= self.depth:
                break
        while self.futures:
            f = self.futures.pop(0)
            nxt = next(ahead, None)
            if nxt is not None:
                self.futures.append(self.pool.submit(self._load, nxt))
            yield f.result()

    def close(self):
        for f in self.futures:
            f.cancel()
        self.pool.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------------------------------------------------------
# EMA


class EMA:
    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.state[k].mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)
            else:
                self.state[k].copy_(v)


# ------------------------------------------------------------------------------------------------
# the run folder in the store


def _json(obj) -> bytes:
    return json.dumps(obj, indent=1, default=str).encode()


_now = progress.now_iso


class RunStore:
    """``runs/RUN/`` in a store: checkpoints, the latest pointer, progress and metrics."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.store: Store = open_store(self.url)
        self.scratch = Path(tempfile.mkdtemp(prefix="run-", dir=self._scratch_root()))

    @staticmethod
    def _scratch_root() -> Path:
        p = cache_root() / "scratch"
        p.mkdir(parents=True, exist_ok=True)
        return p

    def pointer(self) -> dict | None:
        try:
            return json.loads(self.store.get_bytes("checkpoints/latest.json"))
        except StoreError as e:
            if "no such object" in str(e):
                return None
            raise
        except ValueError:
            return None

    def save_checkpoint(self, ckpt: dict, step: int, keep: int) -> dict:
        """Upload ``step-<n>.pt``, then publish the pointer; prune beyond ``keep``. Returns the entry."""
        tmp = self.scratch / f"step-{step}.pt"
        torch.save(ckpt, tmp)
        entry = {"path": f"checkpoints/step-{step}.pt", "step": step, "epoch": ckpt["epoch"],
                 "bytes": tmp.stat().st_size, "sha256": sha256_file(tmp), "time": _now(),
                 "rank": int(os.environ.get("RANK", "0"))}
        self.store.put_file(tmp, entry["path"], move=True)
        old = self.pointer() or {}
        history = [entry] + [h for h in [old.get("latest")] + old.get("history", []) if h and h["path"] != entry["path"]]
        self.store.put_bytes("checkpoints/latest.json", _json({"latest": entry, "history": history[1:keep]}))
        keep_paths = {h["path"] for h in history[:keep]}
        for key in self.store.list("checkpoints"):
            if key.endswith(".pt") and key not in keep_paths:
                self.store.delete(key)
        return entry

    def load_latest(self, log) -> tuple[dict | None, dict | None]:
        """The newest checkpoint whose size and sha256 match its pointer entry, or (None, None)."""
        ptr = self.pointer()
        if not ptr:
            return None, None
        for entry in [ptr.get("latest")] + ptr.get("history", []):
            if not entry:
                continue
            local = self.scratch / Path(entry["path"]).name
            try:
                self.store.get_file(entry["path"], local)
            except StoreError as e:
                log(f"checkpoint {entry['path']} unavailable ({e}); trying the previous one")
                continue
            if local.stat().st_size != entry["bytes"] or sha256_file(local) != entry["sha256"]:
                log(f"checkpoint {entry['path']} is truncated or corrupt (size/sha256 mismatch); trying the previous one")
                local.unlink(missing_ok=True)
                continue
            try:
                ckpt = torch.load(local, map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001 - any unreadable file falls back the same way
                log(f"checkpoint {entry['path']} cannot be loaded ({type(e).__name__}: {e}); trying the previous one")
                continue
            finally:
                local.unlink(missing_ok=True)
            return ckpt, entry
        log("no readable checkpoint found; starting from scratch")
        return None, None

    def write(self, name: str, obj: dict) -> None:
        self.store.put_bytes(name, _json(obj))


# ------------------------------------------------------------------------------------------------
# helpers


def resolve_precision(cfg: TrainConfig, device: torch.device, card) -> str:
    if cfg.precision != "auto":
        return cfg.precision
    if device.type == "cuda":
        want = card.precision if card.precision in ("bf16", "fp16", "fp32") else "bf16"
        if want == "bf16" and not torch.cuda.is_bf16_supported():
            return "fp16"
        return want
    return "fp32"


def amp_context(device: torch.device, precision: str):
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def rng_state() -> dict:
    np_state = np.random.get_state()
    st = {"torch": torch.get_rng_state(), "python": random.getstate(),
          "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                    "has_gauss": int(np_state[3]), "cached": float(np_state[4])}}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate(_tuplify(st["python"]))
    n = st["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in st and torch.cuda.is_available() and len(st["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(st["cuda"])


def _tuplify(x):
    return tuple(_tuplify(i) for i in x) if isinstance(x, (list, tuple)) else x


def param_digest(model: nn.Module) -> str:
    """sha256 of the parameters (not buffers: BatchNorm statistics follow each rank's last batch)."""
    h = hashlib.sha256()
    for k, v in model.named_parameters():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def lr_lambda(total: int, warmup: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        prog = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, prog)))

    return f


@torch.no_grad()
def evaluate(model, ds, idx, norm: Normalizer, families: list[str], device, precision, batch_size, d: Dist,
             mean_map: torch.Tensor | None = None) -> dict:
    """MAE in m/s on de-normalised velocity, overall and per family (all ranks, all-reduced).

    With ``mean_map`` also the predict-the-training-mean baseline on the same samples.
    """
    model.eval()
    mine = idx[d.rank::d.world]
    k = len(families)
    sums = torch.zeros(2, k, dtype=torch.float64, device=device)  # [model, baseline] abs-error sums
    counts = torch.zeros(k, dtype=torch.float64, device=device)
    fam_index = {f: i for i, f in enumerate(families)}
    for s in range(0, len(mine), batch_size):
        b = np.sort(mine[s:s + batch_size])
        x, y = ds.batch(b)
        x = norm.seismic(torch.from_numpy(x).to(device))
        y = torch.from_numpy(y).to(device).double()
        with amp_context(device, precision):
            pred = model(x)
        v = norm.denorm_velocity(pred).double().clamp(norm.vel_min, norm.vel_max)
        err = (v - y).abs().flatten(1).mean(1)  # (B,)
        fi = torch.tensor([fam_index[f] for f in ds.families[b]], device=device)
        sums[0].index_add_(0, fi, err)
        counts.index_add_(0, fi, torch.ones_like(err))
        if mean_map is not None:
            sums[1].index_add_(0, fi, (mean_map.double() - y).abs().flatten(1).mean(1))
    if d.enabled:
        dist.all_reduce(sums)
        dist.all_reduce(counts)
    model.train()
    out = {"val_mae": None, "val_mae_per_family": {}, "baseline_mae": None, "val_samples": int(counts.sum())}
    if counts.sum() > 0:
        out["val_mae"] = float(sums[0].sum() / counts.sum())
        out["val_mae_per_family"] = {f: float(sums[0, i] / counts[i]) for i, f in enumerate(families) if counts[i] > 0}
        if mean_map is not None:
            out["baseline_mae"] = float(sums[1].sum() / counts.sum())
    return out


def train_mean_map(ds: ShardedDataset, idx: np.ndarray, limit: int = 2048) -> torch.Tensor:
    """Per-pixel mean velocity of (up to ``limit``) training samples: the predict-the-mean baseline."""
    take = idx if len(idx) <= limit else np.random.default_rng(0).choice(idx, limit, replace=False)
    acc = np.zeros((1, 70, 70), np.float64)
    for s in range(0, len(take), 256):
        _, y = ds.batch(np.sort(take[s:s + 256]))
        acc += y.sum(0)
    return torch.from_numpy(acc / max(1, len(take))).float()


# ------------------------------------------------------------------------------------------------
# the loop


def train(cfg: TrainConfig, log=print) -> dict:
    """Train (or resume) ``cfg.run``; returns the final metrics. Raises on failure after recording it."""
    cfg.validate()
    d = setup_distributed(cfg.device)
    device = torch.device(cfg.device if cfg.device else ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and d.enabled:
        device = torch.device("cuda", d.local_rank)
    say = log if d.master else (lambda *a, **k: None)
    card = registry.model_card(cfg.model)
    precision = resolve_precision(cfg, device, card)
    run = RunStore(cfg.run) if d.master else None
    hb: Heartbeat | None = None
    model = raw_model = None
    t_start = time.time()
    try:
        # every rank pulls (each needs a local copy); the cache makes the second pull free
        local = pull(cfg.dataset, progress=False) if d.master else None
        if d.enabled:
            obj = [str(local) if local else None]
            dist.broadcast_object_list(obj, src=0)
            local = Path(obj[0])
        ds = ShardedDataset(local)
        manifest = ds.manifest
        if not manifest.get("labelled", True):
            raise GwiError(f"dataset {cfg.dataset} has no velocity labels (a test set?); train needs labelled data")
        manifest_sha = hashlib.sha256((Path(local) / "manifest.json").read_bytes()).hexdigest()
        train_idx, val_idx = folds.split(manifest, cfg.split, cfg.seed)
        if len(train_idx) < d.world:
            raise GwiError(f"split {cfg.split} leaves {len(train_idx)} training samples for {d.world} ranks")
        families = sorted(manifest["families"])
        norm = Normalizer.from_manifest(manifest)

        args = registry.model_args(cfg.model, cfg.preset, cfg.model_args)
        torch.manual_seed(cfg.seed)
        model = registry.build_from_args(cfg.model, args).to(device)
        n_params = registry.count_parameters(model)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        per_rank = len(train_idx) // d.world
        # drop the last partial batch: a batch of one breaks BatchNorm, and equal steps keep DDP ranks in step
        steps_per_epoch = max(1, per_rank // cfg.batch_size)
        total = cfg.epochs * steps_per_epoch
        if cfg.max_steps:
            total = min(total, cfg.max_steps)
        # warm-up and cosine span the steps this run will take: with --max-steps they end with it
        schedule = lambda o: torch.optim.lr_scheduler.LambdaLR(o, lr_lambda(total, int(cfg.warmup_frac * total)))  # noqa: E731
        sched = schedule(opt)
        scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        ema = EMA(model, cfg.ema) if cfg.ema > 0 else None
        step, epoch, best, history = 0, 0, float("inf"), []
        resumed_from = None

        # resume: rank 0 finds the newest good checkpoint, every rank loads it
        ckpt = None
        if d.master:
            ckpt, entry = run.load_latest(say)
            if ckpt is not None:
                if ckpt["model"]["name"] != cfg.model:
                    raise GwiError(f"run {cfg.run} holds a {ckpt['model']['name']!r} checkpoint, not {cfg.model!r}; "
                                   "use a new --run")
                if ckpt["dataset"]["manifest_sha256"] != manifest_sha:
                    say(f"warning: dataset {cfg.dataset} changed since the checkpoint was written")
                resumed_from = entry["path"]
        if d.enabled:
            buf = [ckpt]
            dist.broadcast_object_list(buf, src=0)
            ckpt = buf[0]
        if ckpt is not None:
            args = ckpt["model"]["args"]
            model = registry.build_from_args(cfg.model, args).to(device)
            model.load_state_dict(ckpt["state_dict"])
            opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
            # the scheduler first: its constructor resets the lr, which the optimizer state then restores
            sched = schedule(opt)
            opt.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["scheduler"])
            scaler.load_state_dict(ckpt["scaler"])
            if ema is not None and ckpt.get("ema"):
                ema.state = {k: v.to(device) for k, v in ckpt["ema"].items()}
            step, epoch, best, history = ckpt["step"], ckpt["epoch"], ckpt["best_val_mae"], list(ckpt["history"])
            set_rng_state(ckpt["rng"])
            say(f"resumed from {resumed_from or 'checkpoint'} at step {step} (epoch {epoch})")

        raw_model = model
        if d.enabled:
            model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

        mean_map = train_mean_map(ds, train_idx).to(device)
        base = {"state": "starting", "model": cfg.model, "preset": cfg.preset, "run": cfg.run,
                "dataset": cfg.dataset, "epoch": epoch, "epochs": cfg.epochs, "step": step, "total_steps": total,
                "device": str(device) + (f" x{d.world}" if d.enabled else ""), "precision": precision,
                "host": socket.gethostname(), "pid": os.getpid(), "attempt": os.environ.get("GWI_ATTEMPT"),
                "gwi_version": __version__, "params": n_params, "resumed_from": resumed_from,
                "started": _now(), "samples_per_s": None, "train_loss": None, "val_mae": None,
                "val_mae_per_family": {}, "best_val_mae": None if best == float("inf") else best, "eta_s": None}
        if d.master:
            # the run's own file, and the scheduler's attempt file when launched by one
            progress.take_over()
            target = progress.attempt_target()
            hb = Heartbeat([(run.store, "progress.json")] + ([target] if target else []), cfg.heartbeat_s, base,
                           cancel=progress.cancel_flag())
            hb.beat()
            hb.start()
        say(f"training {cfg.model} ({cfg.preset}, {n_params:,} params) on {base['device']} in {precision}: "
            f"{len(train_idx)} train / {len(val_idx)} val samples, {steps_per_epoch} steps/epoch, {total} steps")

        def checkpoint(epoch_now: int, step_in_epoch: int):
            if not d.master:
                return
            hb.update(state="checkpointing")
            ck = {
                "format": "gwi-checkpoint", "format_version": 1, "gwi_version": __version__,
                "model": {"name": cfg.model, "preset": cfg.preset, "args": args},
                "state_dict": raw_model.state_dict(),
                "ema": ema.state if ema else None,
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
                "step": step, "epoch": epoch_now, "step_in_epoch": step_in_epoch,
                "best_val_mae": best, "history": history, "rng": rng_state(),
                "normalisation": asdict(norm),
                "dataset": {"url": cfg.dataset, "name": manifest.get("name"), "build": manifest.get("build"),
                            "manifest_sha256": manifest_sha, "families": families},
                "split": cfg.split, "precision": precision,
                "config": {k: v for k, v in asdict(cfg).items()},
            }
            run.save_checkpoint(ck, step, cfg.keep_checkpoints)
            hb.update(state="running", last_checkpoint=f"checkpoints/step-{step}.pt")

        def ema_model():
            # a copy, not a fresh build: building would draw from the RNG and break exact resume
            m = copy.deepcopy(raw_model)
            m.load_state_dict(ema.state)
            return m

        model.train()
        loss_fn = {"l1": lambda p, t: (p - t).abs().mean(),
                   "l2": lambda p, t: ((p - t) ** 2).mean(),
                   "l1+l2": lambda p, t: (p - t).abs().mean() + ((p - t) ** 2).mean()}[cfg.loss]
        t_loop, samples_seen, last_loss = time.time(), 0, None
        start_step = step
        val = {}
        while step < total and epoch < cfg.epochs:
            order = epoch_order(train_idx, cfg.seed, epoch, d.rank, d.world)
            in_epoch = step - epoch * steps_per_epoch
            bs = cfg.batch_size if len(order) >= cfg.batch_size else len(order)
            batches = [order[i:i + bs] for i in range(in_epoch * bs, steps_per_epoch * bs, bs)]
            pf = Prefetcher(ds, batches)
            try:
                for x, y, _ in pf:
                    x = norm.seismic(x.to(device, non_blocking=True))  # (B, 5, 1000, 70) float16 -> float32
                    y = norm.velocity(y.to(device, non_blocking=True))  # (B, 1, 70, 70)
                    with amp_context(device, precision):
                        pred = model(x)
                    loss = loss_fn(pred.float(), y)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"loss is {loss.item()} at step {step}; lower --lr or use fp32")
                    opt.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    if cfg.grad_clip > 0:
                        scaler.unscale_(opt)
                        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    scaler.step(opt)
                    scaler.update()
                    sched.step()
                    if ema is not None:
                        ema.update(raw_model)
                    step += 1
                    samples_seen += x.shape[0] * d.world
                    last_loss = float(loss.detach())
                    if d.master:
                        el = time.time() - t_loop
                        sps = samples_seen / el if el > 0 else None
                        rate = (step - start_step) / el if el > 0 else 0
                        hb.update(state="running", step=step, epoch=epoch, train_loss=last_loss, samples_per_s=sps,
                                  lr=sched.get_last_lr()[0], eta_s=(total - step) / rate if rate > 0 else None)
                    in_epoch = step - epoch * steps_per_epoch
                    end_of_epoch = in_epoch >= steps_per_epoch
                    if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and not end_of_epoch and step < total:
                        checkpoint(epoch, in_epoch)
                    if cfg.fault_at_step and step == cfg.fault_at_step:
                        raise RuntimeError(f"injected fault at step {step} (fault_at_step)")
                    if step >= total:
                        break
            finally:
                pf.close()
            if step - epoch * steps_per_epoch >= steps_per_epoch:
                epoch += 1
            last = step >= total or epoch >= cfg.epochs
            if epoch % cfg.val_every == 0 or last:
                if d.master:
                    hb.update(state="validating")
                val = evaluate(ema_model() if ema else raw_model, ds, val_idx, norm, families, device, precision,
                               cfg.batch_size, d, mean_map)
                if val["val_mae"] is not None:
                    best = min(best, val["val_mae"])
                history.append({"epoch": epoch, "step": step, "train_loss": last_loss, **val})
                if d.master:
                    hb.update(state="running", epoch=epoch, val_mae=val["val_mae"],
                              val_mae_per_family=val["val_mae_per_family"], baseline_mae=val["baseline_mae"],
                              best_val_mae=None if best == float("inf") else best)
                    say(f"epoch {epoch}/{cfg.epochs} step {step}/{total} loss {last_loss:.4f} "
                        f"val MAE {val['val_mae'] if val['val_mae'] is not None else float('nan'):.1f} m/s "
                        f"(mean-map baseline {val['baseline_mae'] if val['baseline_mae'] is not None else float('nan'):.1f})")
            checkpoint(epoch, step - epoch * steps_per_epoch)

        if not val:  # resumed a finished run: report its numbers again
            val = evaluate(ema_model() if ema else raw_model, ds, val_idx, norm, families, device, precision,
                           cfg.batch_size, d, mean_map)
        digests = [param_digest(raw_model)]
        if d.enabled:
            gathered = [None] * d.world
            dist.all_gather_object(gathered, digests[0])
            digests = gathered
        elapsed = time.time() - t_start
        metrics = {
            "state": "succeeded", "model": cfg.model, "preset": cfg.preset, "params": n_params, "run": cfg.run,
            "dataset": cfg.dataset, "split": cfg.split, "steps": step, "epochs": epoch, "precision": precision,
            "device": base["device"], "world_size": d.world, "wall_s": elapsed,
            "samples_per_s": samples_seen / max(1e-9, time.time() - t_loop),
            "val_mae": val.get("val_mae"), "val_mae_per_family": val.get("val_mae_per_family", {}),
            "baseline_mae": val.get("baseline_mae"), "best_val_mae": None if best == float("inf") else best,
            "history": history, "rank_param_sha256": digests, "resumed_from": resumed_from,
            "gwi_version": __version__, "finished": _now(),
        }
        if d.enabled:
            dist.barrier()  # no collective work left in flight when the group is torn down
        if d.master:
            run.write("metrics.json", metrics)
            hb.finish("succeeded", step=step, epoch=epoch, eta_s=0, val_mae=metrics["val_mae"])
        return metrics
    except BaseException as e:
        if d.master and run is not None:
            err = f"{type(e).__name__}: {e}"
            if hb is not None:
                hb.finish("failed", error=err, traceback=traceback.format_exc()[-4000:])
            else:
                try:
                    run.write("progress.json", {"state": "failed", "error": err, "time": _now(), "unix_time": time.time(),
                                                "run": cfg.run, "model": cfg.model, "host": socket.gethostname()})
                except Exception:  # noqa: BLE001 - the original error matters more
                    pass
        raise
    finally:
        if hb is not None:
            hb.stop()
        if run is not None:
            import shutil

            shutil.rmtree(run.scratch, ignore_errors=True)
        if d.enabled and dist.is_initialized():
            # Free DDP's reducer while the process group is still registered: if the reducer held the
            # last reference, the group's destructor would join gloo's worker threads with the GIL
            # held while a worker waits for the GIL to drop a tensor, and the rank would hang.
            model = raw_model = None
            gc.collect()
            dist.destroy_process_group()
