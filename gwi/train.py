"""``gwi train``: one training loop for every model, every platform, one GPU or many.

The loop is deliberately plain (nanoGPT-style): DDP is detected from ``RANK`` (torchrun), rank 0 alone
writes; one autocast context; a GradScaler that is enabled only for fp16. :func:`train` reads top to
bottom as its phases: load the data, build the model and optimiser, resume, run the epochs (steps,
validation, checkpoints), finish. What makes it survive a platform dying under it:

* Checkpoints hold everything needed to resume exactly (model args and weights, optimizer, scheduler,
  scaler, EMA, step, epoch, position in the epoch, RNG states, normalisation constants, the dataset's
  manifest hash, the gwi version), contain only tensors and plain types (``torch.load(...,
  weights_only=True)``), and are published atomically by :meth:`gwi.runs.Run.publish_checkpoint`
  (blob, then the latest pointer with size and sha256); a resume takes the newest one that verifies.
* Data order is a pure function of (seed, epoch), so a resumed run sees the batches the crashed one
  would have seen, from the step after its last checkpoint.
* A heartbeat thread writes the run's progress file every ``heartbeat_s``; every optimizer step and
  validation batch is an advance, so a loop stuck in a blocking read shows as progress that stopped
  while the pulse goes on. A crash writes state ``failed`` with the error (``retryable`` when the store
  stayed unreachable: ``gwi train`` then exits 75), the end writes the metrics file. The scheduler
  reads these from the store.
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
import time
import traceback
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from . import __version__, progress
from .config import LOSSES, PRECISIONS, TrainConfig, apply_sets  # noqa: F401 - re-exported
from .data import folds
from .data.shards import MANIFEST, ShardedDataset
from .data.sync import pull
from .errors import GwiError, StoreUnavailable
from .inference import Normalizer  # also re-exported: gwi.train.Normalizer
from .models import registry
from .progress import Heartbeat
from .runs import METRICS, PROGRESS, Run

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
             mean_map: torch.Tensor | None = None, on_batch: Callable[[], None] | None = None) -> dict:
    """MAE in m/s on de-normalised velocity, overall and per family (all ranks, all-reduced).

    With ``mean_map`` also the predict-the-training-mean baseline on the same samples; ``on_batch``
    is called after each batch (a heartbeat advance: a long validation is progress too).
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
        if on_batch is not None:
            on_batch()
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
# ------------------------------------------------------------------------------------------------
# what the phases share


@dataclass
class Data:
    """The dataset as training sees it."""

    ds: ShardedDataset
    manifest: dict
    manifest_sha: str
    train_idx: np.ndarray
    val_idx: np.ndarray
    families: list[str]
    norm: Normalizer
    mean_map: torch.Tensor  # the predict-the-training-mean baseline, on the device


@dataclass
class State:
    """One rank's training: where it runs, the model and its optimiser, and how far it has come."""

    cfg: TrainConfig
    d: Dist
    device: torch.device
    precision: str
    data: Data
    run: Run | None  # rank 0 alone writes to the run folder
    say: Callable
    args: dict  # the model's constructor arguments, saved in every checkpoint
    model: nn.Module  # the bare model: saved, validated, averaged into the EMA
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    ema: EMA | None
    n_params: int
    steps_per_epoch: int
    total: int  # the steps this run takes in all
    net: nn.Module | None = None  # what the loop calls: the model, or its DDP wrapper
    hb: Heartbeat | None = None  # rank 0's
    step: int = 0
    epoch: int = 0
    best: float = math.inf
    history: list = field(default_factory=list)
    resumed_from: str | None = None  # the checkpoint's path
    resumed_step: int = 0  # the step it resumed from (0: from scratch)
    resume_fallback: str | None = None  # why an older checkpoint than the newest was used
    t_loop: float = 0.0  # when this process's loop began, and what it has done since
    start_step: int = 0
    samples_seen: int = 0
    last_loss: float | None = None

    @property
    def device_text(self) -> str:
        return str(self.device) + (f" x{self.d.world}" if self.d.enabled else "")

    @property
    def best_or_none(self) -> float | None:
        return None if self.best == math.inf else self.best

    def beat(self, **kw) -> None:
        """Update the heartbeat (rank 0; the other ranks have none)."""
        if self.hb is not None:
            self.hb.update(**kw)


LOSS_FNS = {"l1": lambda p, t: (p - t).abs().mean(),
            "l2": lambda p, t: ((p - t) ** 2).mean(),
            "l1+l2": lambda p, t: (p - t).abs().mean() + ((p - t) ** 2).mean()}


# ------------------------------------------------------------------------------------------------
# the run, phase by phase


def train(cfg: TrainConfig, log=print) -> dict:
    """Train (or resume) ``cfg.run``; returns the final metrics. Raises on failure after recording it."""
    cfg.validate()
    d = setup_distributed(cfg.device)
    device = torch.device(cfg.device if cfg.device else ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and d.enabled:
        device = torch.device("cuda", d.local_rank)
    precision = resolve_precision(cfg, device, registry.model_card(cfg.model))
    run = Run(cfg.run) if d.master else None
    say = log if d.master else (lambda *a, **k: None)
    s: State | None = None
    t_start = time.time()
    try:
        data = load_data(cfg, d, device)
        progress.phase("pulled")
        s = build(cfg, d, device, precision, data, run, say)
        progress.phase("built")
        resume(s)  # a store that stays unreachable raises StoreUnavailable: never "from scratch" instead
        s.net = s.model
        if d.enabled:
            s.net = nn.parallel.DistributedDataParallel(s.model, device_ids=[device.index] if device.type == "cuda" else None)
        if d.master:
            s.hb = start_heartbeat(s)
        say(f"training {cfg.model} ({cfg.preset}, {s.n_params:,} params) on {s.device_text} in {precision}: "
            f"{len(data.train_idx)} train / {len(data.val_idx)} val samples, {s.steps_per_epoch} steps/epoch, "
            f"{s.total} steps")
        val = run_epochs(s)
        return finish(s, val, t_start)
    except BaseException as e:
        if run is not None:
            record_failure(run, s.hb if s else None, cfg, e)
        raise
    finally:
        if s is not None and s.hb is not None:
            s.hb.stop()
        if d.enabled and dist.is_initialized():
            # Free DDP's reducer while the process group is still registered: if the reducer held the
            # last reference, the group's destructor would join gloo's worker threads with the GIL
            # held while a worker waits for the GIL to drop a tensor, and the rank would hang.
            if s is not None:
                s.net = s.model = None
            s = None
            gc.collect()
            dist.destroy_process_group()


def pulled(done: int, total: int) -> None:
    """A shard pulled (or found cached and verified): an advance of the process heartbeat."""
    progress.update(phase="pulling", shards_pulled=done, shards_total=total)


def load_data(cfg: TrainConfig, d: Dist, device: torch.device) -> Data:
    """The dataset in the local cache, its split and normalisation."""
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
    manifest_sha = hashlib.sha256((Path(local) / MANIFEST).read_bytes()).hexdigest()
    train_idx, val_idx = folds.split(manifest, cfg.split, cfg.seed)
    if len(train_idx) < d.world:
        raise GwiError(f"split {cfg.split} leaves {len(train_idx)} training samples for {d.world} ranks")
    return Data(ds, manifest, manifest_sha, train_idx, val_idx, sorted(manifest["families"]),
                Normalizer.from_manifest(manifest), train_mean_map(ds, train_idx).to(device))


def build(cfg: TrainConfig, d: Dist, device: torch.device, precision: str, data: Data, run: Run | None,
          say: Callable) -> State:
    """A fresh model (seeded), its optimiser and schedule, the fp16 scaler and the EMA."""
    args = registry.model_args(cfg.model, cfg.preset, cfg.model_args)
    torch.manual_seed(cfg.seed)
    model = registry.build_from_args(cfg.model, args).to(device)
    # drop the last partial batch: a batch of one breaks BatchNorm, and equal steps keep DDP ranks in step
    steps_per_epoch = max(1, len(data.train_idx) // d.world // cfg.batch_size)
    total = min(cfg.epochs * steps_per_epoch, cfg.max_steps or math.inf)
    opt, sched = optimizer(cfg, model, total)
    return State(cfg=cfg, d=d, device=device, precision=precision, data=data, run=run, say=say, args=args,
                 model=model, opt=opt, sched=sched,
                 scaler=torch.amp.GradScaler(device.type, enabled=precision == "fp16"),
                 ema=EMA(model, cfg.ema) if cfg.ema > 0 else None, n_params=registry.count_parameters(model),
                 steps_per_epoch=steps_per_epoch, total=total)


def optimizer(cfg: TrainConfig, model: nn.Module, total: int):
    """AdamW, and a warm-up then cosine schedule spanning the steps this run takes (with
    ``--max-steps`` they end with it)."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(total, int(cfg.warmup_frac * total)))


def resume(s: State) -> None:
    """Continue from the run's newest good checkpoint if it has one: rank 0 finds it, every rank loads it."""
    cfg, ckpt = s.cfg, None
    if s.d.master:
        ckpt, entry = s.run.load_latest(s.say)
        if ckpt is not None:
            if ckpt["model"]["name"] != cfg.model:
                raise GwiError(f"run {cfg.run} holds a {ckpt['model']['name']!r} checkpoint, not {cfg.model!r}; "
                               "use a new --run")
            if ckpt["dataset"]["manifest_sha256"] != s.data.manifest_sha:
                s.say(f"warning: dataset {cfg.dataset} changed since the checkpoint was written")
            s.resumed_from, s.resumed_step = entry["path"], int(entry["step"])
            s.resume_fallback = entry.get("fallback")
    if s.d.enabled:
        buf = [ckpt]
        dist.broadcast_object_list(buf, src=0)
        ckpt = buf[0]
    if ckpt is None:
        return
    s.args = ckpt["model"]["args"]
    s.model = registry.build_from_args(cfg.model, s.args).to(s.device)
    s.model.load_state_dict(ckpt["state_dict"])
    # the scheduler is made first: its constructor resets the lr, which the optimizer state then restores
    s.opt, s.sched = optimizer(cfg, s.model, s.total)
    s.opt.load_state_dict(ckpt["optimizer"])
    s.sched.load_state_dict(ckpt["scheduler"])
    s.scaler.load_state_dict(ckpt["scaler"])
    if s.ema is not None and ckpt.get("ema"):
        s.ema.state = {k: v.to(s.device) for k, v in ckpt["ema"].items()}
    s.step, s.epoch, s.best, s.history = ckpt["step"], ckpt["epoch"], ckpt["best_val_mae"], list(ckpt["history"])
    set_rng_state(ckpt["rng"])
    s.say(f"resumed from {s.resumed_from or 'checkpoint'} at step {s.step} (epoch {s.epoch})"
          + (f"; an older checkpoint than the newest: {s.resume_fallback}" if s.resume_fallback else ""))


def start_heartbeat(s: State) -> Heartbeat:
    """Rank 0's heartbeat: to the run's own progress file, and to the attempt's when the scheduler
    launched this process (taking over the process-wide heartbeat there)."""
    cfg = s.cfg
    base = {"state": "starting", "model": cfg.model, "preset": cfg.preset, "run": cfg.run,
            "dataset": cfg.dataset, "epoch": s.epoch, "epochs": cfg.epochs, "step": s.step, "total_steps": s.total,
            "device": s.device_text, "precision": s.precision,
            "host": socket.gethostname(), "pid": os.getpid(), "attempt": os.environ.get("GWI_ATTEMPT"),
            "gwi_version": __version__, "params": s.n_params, "phase": "resumed",
            "resumed_from": s.resumed_step, "resumed_checkpoint": s.resumed_from,
            "started": progress.now_iso(), "samples_per_s": None, "train_loss": None, "val_mae": None,
            "val_mae_per_family": {}, "best_val_mae": s.best_or_none, "eta_s": None}
    if s.resume_fallback:
        base["resume_fallback"] = s.resume_fallback
    return progress.take_over([progress.beat_target(s.run.key_url(PROGRESS))], cfg.heartbeat_s, base)


def run_epochs(s: State) -> dict:
    """The loop, from where the run stands: epochs of steps; validation every ``val_every`` epochs and
    at the end; a checkpoint every ``checkpoint_every`` steps and after every epoch. Returns the last
    validation (empty when the run had nothing left to do)."""
    cfg = s.cfg
    loss_fn = LOSS_FNS[cfg.loss]
    s.net.train()
    s.t_loop, s.start_step = time.time(), s.step
    val = {}
    while s.step < s.total and s.epoch < cfg.epochs:
        pf = Prefetcher(s.data.ds, epoch_batches(s))
        try:
            for x, y, _ in pf:
                s.last_loss = train_step(s, x, y, loss_fn)
                s.step += 1
                s.samples_seen += x.shape[0] * s.d.world
                beat_step(s)
                in_epoch = s.step - s.epoch * s.steps_per_epoch
                if cfg.checkpoint_every and s.step % cfg.checkpoint_every == 0 and in_epoch < s.steps_per_epoch \
                        and s.step < s.total:
                    publish(s)
                if cfg.fault_at_step and s.step == cfg.fault_at_step:
                    raise RuntimeError(f"injected fault at step {s.step} (fault_at_step)")
                if s.step >= s.total:
                    break
        finally:
            pf.close()
        if s.step - s.epoch * s.steps_per_epoch >= s.steps_per_epoch:
            s.epoch += 1
        if s.epoch % cfg.val_every == 0 or s.step >= s.total or s.epoch >= cfg.epochs:
            val = validate(s)
        publish(s)
    return val


def epoch_batches(s: State) -> list[np.ndarray]:
    """This rank's batches left in the current epoch (all of them, unless resuming inside it)."""
    order = epoch_order(s.data.train_idx, s.cfg.seed, s.epoch, s.d.rank, s.d.world)
    in_epoch = s.step - s.epoch * s.steps_per_epoch
    bs = min(s.cfg.batch_size, len(order))
    return [order[i:i + bs] for i in range(in_epoch * bs, s.steps_per_epoch * bs, bs)]


def train_step(s: State, x: torch.Tensor, y: torch.Tensor, loss_fn) -> float:
    """One optimiser step on a batch; returns its loss."""
    x = s.data.norm.seismic(x.to(s.device, non_blocking=True))  # (B, 5, 1000, 70) float16 -> float32
    y = s.data.norm.velocity(y.to(s.device, non_blocking=True))  # (B, 1, 70, 70)
    with amp_context(s.device, s.precision):
        pred = s.net(x)
    loss = loss_fn(pred.float(), y)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss is {loss.item()} at step {s.step}; lower --lr or use fp32")
    s.opt.zero_grad(set_to_none=True)
    s.scaler.scale(loss).backward()
    if s.cfg.grad_clip > 0:
        s.scaler.unscale_(s.opt)
        nn.utils.clip_grad_norm_(s.net.parameters(), s.cfg.grad_clip)
    s.scaler.step(s.opt)
    s.scaler.update()
    s.sched.step()
    if s.ema is not None:
        s.ema.update(s.model)
    return float(loss.detach())


def beat_step(s: State) -> None:
    if s.hb is None:
        return
    el = time.time() - s.t_loop
    rate = (s.step - s.start_step) / el if el > 0 else 0
    # an advance per step: host values only (the loss was already read), no device sync
    s.hb.advance(state="running", phase="training", step=s.step, epoch=s.epoch, train_loss=s.last_loss,
                 samples_per_s=s.samples_seen / el if el > 0 else None, lr=s.sched.get_last_lr()[0],
                 eta_s=(s.total - s.step) / rate if rate > 0 else None)


def validate(s: State) -> dict:
    """Validation MAE (all ranks), kept in the history and reported."""
    s.beat(state="validating")
    val = evaluate_model(s)
    if val["val_mae"] is not None:
        s.best = min(s.best, val["val_mae"])
    s.history.append({"epoch": s.epoch, "step": s.step, "train_loss": s.last_loss, **val})
    s.beat(state="running", epoch=s.epoch, val_mae=val["val_mae"], val_mae_per_family=val["val_mae_per_family"],
           baseline_mae=val["baseline_mae"], best_val_mae=s.best_or_none)
    nan = float("nan")
    s.say(f"epoch {s.epoch}/{s.cfg.epochs} step {s.step}/{s.total} loss {s.last_loss:.4f} "
          f"val MAE {val['val_mae'] if val['val_mae'] is not None else nan:.1f} m/s "
          f"(mean-map baseline {val['baseline_mae'] if val['baseline_mae'] is not None else nan:.1f})")
    return val


def evaluate_model(s: State) -> dict:
    """:func:`evaluate` on the EMA weights when there are some, else on the model."""
    model = s.model
    if s.ema is not None:
        # a copy, not a fresh build: building would draw from the RNG and break exact resume
        model = copy.deepcopy(s.model)
        model.load_state_dict(s.ema.state)
    data = s.data
    return evaluate(model, data.ds, data.val_idx, data.norm, data.families, s.device, s.precision,
                    s.cfg.batch_size, s.d, data.mean_map, on_batch=s.hb.advance if s.hb is not None else None)


def publish(s: State) -> None:
    """Rank 0 publishes a checkpoint of everything an exact resume needs."""
    if not s.d.master:
        return
    cfg, data = s.cfg, s.data
    s.hb.update(state="checkpointing")
    ckpt = {
        "format": "gwi-checkpoint", "format_version": 1, "gwi_version": __version__,
        "model": {"name": cfg.model, "preset": cfg.preset, "args": s.args},
        "state_dict": s.model.state_dict(),
        "ema": s.ema.state if s.ema else None,
        "optimizer": s.opt.state_dict(), "scheduler": s.sched.state_dict(), "scaler": s.scaler.state_dict(),
        "step": s.step, "epoch": s.epoch, "step_in_epoch": s.step - s.epoch * s.steps_per_epoch,
        "best_val_mae": s.best, "history": s.history, "rng": rng_state(),
        "normalisation": asdict(data.norm),
        "dataset": {"url": cfg.dataset, "name": data.manifest.get("name"), "build": data.manifest.get("build"),
                    "manifest_sha256": data.manifest_sha, "families": data.families},
        "split": cfg.split, "precision": s.precision,
        "config": asdict(cfg),
    }
    entry = s.run.publish_checkpoint(ckpt, s.step, cfg.keep_checkpoints)
    s.hb.update(state="running", last_checkpoint=entry["path"])


def finish(s: State, val: dict, t_start: float) -> dict:
    """The final metrics; rank 0 writes them to the run folder and ends its heartbeat."""
    cfg = s.cfg
    if not val:  # resumed a finished run: report its numbers again
        val = evaluate_model(s)
    digests = [param_digest(s.model)]
    if s.d.enabled:
        gathered = [None] * s.d.world
        dist.all_gather_object(gathered, digests[0])
        digests = gathered
    metrics = {
        "state": "succeeded", "model": cfg.model, "preset": cfg.preset, "params": s.n_params, "run": cfg.run,
        "dataset": cfg.dataset, "split": cfg.split, "steps": s.step, "epochs": s.epoch, "precision": s.precision,
        "device": s.device_text, "world_size": s.d.world, "wall_s": time.time() - t_start,
        "samples_per_s": s.samples_seen / max(1e-9, time.time() - s.t_loop),
        "val_mae": val.get("val_mae"), "val_mae_per_family": val.get("val_mae_per_family", {}),
        "baseline_mae": val.get("baseline_mae"), "best_val_mae": s.best_or_none,
        "history": s.history, "rank_param_sha256": digests, "resumed_from": s.resumed_from,
        "gwi_version": __version__, "finished": progress.now_iso(),
    }
    if s.d.enabled:
        dist.barrier()  # no collective work left in flight when the group is torn down
    if s.d.master:
        s.run.write_json(METRICS, metrics)
        s.hb.finish("succeeded", step=s.step, epoch=s.epoch, eta_s=0, val_mae=metrics["val_mae"])
    return metrics


def record_failure(run: Run, hb: Heartbeat | None, cfg: TrainConfig, e: BaseException) -> None:
    """The final beat, state ``failed`` with the error: through training's heartbeat if it started,
    else straight to the run's progress file and through the process heartbeat (the attempt's file).
    A store that stayed unreachable is ``retryable``: the attempt is worth running again later."""
    retryable = isinstance(e, StoreUnavailable)
    err = ("the store was unreachable (retryable): " if retryable else "") + f"{type(e).__name__}: {e}"
    if hb is not None:
        hb.finish("failed", error=err, retryable=retryable, traceback=traceback.format_exc()[-4000:])
        return
    progress.end_process_heartbeat("failed", error=err, retryable=retryable)
    try:  # without patience: the store may be what failed
        store, key = progress.beat_target(run.key_url(PROGRESS))
        store.put_bytes(key, json.dumps({
            "state": "failed", "error": err, "retryable": retryable, "final": True, "time": progress.now_iso(),
            "unix_time": time.time(), "run": cfg.run, "model": cfg.model, "host": socket.gethostname()},
            indent=1).encode())
    except Exception:  # noqa: BLE001 - the original error matters more
        pass
