"""``gwi train``'s loop: :func:`train` reads top to bottom as its phases: load the data, build the model
and optimiser, resume, run the epochs (steps, validation, checkpoints), finish. What makes it survive a
platform dying under it:

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

import gc
import json
import math
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .. import __version__, budget, progress
from ..config import TrainConfig
from ..errors import GwiError, StoreUnavailable
from ..inference import Normalizer
from ..models import registry
from ..progress import Heartbeat
from ..runs import METRICS, PROGRESS, Run
from ..tracking import Tracker
from .data import Data, close_loader, flip_mask, load_data, make_loader
from .distributed import Dist, setup_distributed
from .optim import EMA, LOSS_FNS, Optim
from .precision import amp_context, resolve_precision
from .state import UNSIZED, Clock, State, param_digest, rng_state, set_rng_state
from .validation import evaluate, evaluate_model, validate


def train(cfg: TrainConfig, log=print, started: float | None = None) -> dict:
    """Train (or resume) ``cfg.run``; returns the final metrics. Raises on failure after recording it.
    A ``time_budget`` counts from ``started`` (the CLI passes its process start; default: now)."""
    cfg.validate()
    d = setup_distributed(cfg.device)
    device = torch.device(cfg.device if cfg.device else ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and d.enabled:
        device = torch.device("cuda", d.local_rank)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: autotune each convolution once
    precision = resolve_precision(cfg, device, registry.model_card(cfg.model))
    run = Run(cfg.run) if d.master else None
    say = log if d.master else (lambda *a, **k: None)
    s: State | None = None
    t_start = time.time()
    started = t_start if started is None else started
    old_handler = stop_on_sigterm()
    try:
        data = load_data(cfg, d, device, log=say)
        progress.phase("pulled")
        limit = os.environ.get(budget.ENV_LIMIT)
        budget_s = budget.effective_budget_s(cfg.time_budget, float(limit) if limit else None)
        if cfg.time_budget and budget_s != cfg.time_budget:
            say(f"time budget: {budget.format_duration(budget_s) if budget_s else 'none (sized by epochs)'} "
                f"(asked {'auto' if math.isinf(cfg.time_budget) else budget.format_duration(cfg.time_budget)}, "
                f"this attempt's time limit {budget.format_duration(float(limit)) if limit else 'none'})")
        s = build(cfg, d, device, precision, data, run, say, started, budget_s)
        progress.phase("built")
        resume(s)  # a store that stays unreachable raises StoreUnavailable: never "from scratch" instead
        if cfg.init_from and not s.resumed_from:
            init_weights(s)
        s.net = s.model
        if d.enabled:
            s.net = nn.parallel.DistributedDataParallel(s.model, device_ids=[device.index] if device.type == "cuda" else None)
        if cfg.compile:
            s.net = torch.compile(s.net)
        if d.master:
            s.hb = start_heartbeat(s)
            s.tracker = Tracker(run, f"{cfg.model}:{cfg.preset}", asdict(cfg), s.step)
        say(f"training {cfg.model} ({cfg.preset}, {s.n_params:,} params) on {s.device_text} in {precision}: "
            f"{data.train_samples} train / {len(data.val_idx)} val samples, {s.steps_per_epoch} steps/epoch, "
            + (f"steps sized to the time budget ({budget.format_duration(s.clock.budget_s)}) after "
               f"{budget.PROBE_STEPS} measured steps" if s.total == UNSIZED else f"{s.total} steps"))
        val = run_epochs(s)
        return finish(s, val, t_start)
    except BaseException as e:
        if run is not None:
            record_failure(run, s.hb if s else None, cfg, e)
        raise
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)
        if s is not None and s.hb is not None:
            s.hb.stop()
        if s is not None and s.tracker is not None:
            s.tracker.end()
        if d.enabled and dist.is_initialized():
            # Free DDP's reducer while the process group is still registered: if the reducer held the
            # last reference, the group's destructor would join gloo's worker threads with the GIL
            # held while a worker waits for the GIL to drop a tensor, and the rank would hang.
            if s is not None:
                s.net = s.model = None
            s = None
            gc.collect()
            dist.destroy_process_group()


class Stopped(GwiError):
    """Asked to stop (SIGTERM: a platform's preemption, ``docker stop``, a session's end) and stopped
    at a checkpoint: the next attempt resumes from it. Exit status 143, as a process ended by SIGTERM."""

    exit_code = 143


_STOP = threading.Event()  # set by SIGTERM; the loop checkpoints at the next step and stops


def stop_on_sigterm():
    """Route SIGTERM to :data:`_STOP` for the training loop (main thread only); returns the old handler
    to restore, or None when it could not be set."""
    if threading.current_thread() is not threading.main_thread():
        return None
    _STOP.clear()
    return signal.signal(signal.SIGTERM, lambda *_: _STOP.set())


def stop_requested(s: State) -> bool:
    """Whether SIGTERM came; every rank agrees (checked at log intervals there, where ranks meet anyway)."""
    if not s.d.enabled:
        return _STOP.is_set()
    if s.step % s.cfg.log_every:
        return False
    return bool(decide(s, _STOP.is_set))


def build(cfg: TrainConfig, d: Dist, device: torch.device, precision: str, data: Data, run: Run | None,
          say: Callable, started: float, budget_s: float = 0.0) -> State:
    """A fresh model (seeded), its optimiser and schedule, the fp16 scaler and the EMA. A budgeted run
    has no total yet: its first steps are measured, then the schedule is sized (:func:`size_to_budget`)."""
    args = registry.model_args(cfg.model, cfg.preset, cfg.model_args)
    torch.manual_seed(cfg.seed)
    model = place(registry.build_from_args(cfg.model, args), cfg, device)
    # drop the last partial batch: a batch of one breaks BatchNorm, and equal steps keep DDP ranks in step
    steps_per_epoch = max(1, data.epoch_len(d.world) // cfg.batch_size)
    total = UNSIZED if budget_s else min(cfg.epochs * steps_per_epoch, cfg.max_steps or math.inf)
    return State(cfg=cfg, d=d, device=device, precision=precision, data=data, run=run, say=say, args=args,
                 model=model, optim=Optim(cfg, model, None if total == UNSIZED else total),
                 clock=Clock(budget_s, started) if budget_s else None, budgeted=bool(budget_s),
                 scaler=torch.amp.GradScaler(device.type, enabled=precision == "fp16"),
                 ema=EMA(model, cfg.ema) if cfg.ema > 0 else None, n_params=registry.count_parameters(model),
                 steps_per_epoch=steps_per_epoch, total=total)


def place(model: nn.Module, cfg: TrainConfig, device: torch.device) -> nn.Module:
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if cfg.channels_last else model


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
                s.say(f"warning: dataset {', '.join(u for u, _ in cfg.parts())} changed since the checkpoint was "
                      "written")
            s.resumed_from, s.resumed_step = entry["path"], int(entry["step"])
            s.resume_fallback = entry.get("fallback")
    if s.d.enabled:
        buf = [ckpt]
        dist.broadcast_object_list(buf, src=0)
        ckpt = buf[0]
    if ckpt is None:
        return
    s.args = ckpt["model"]["args"]
    s.model = place(registry.build_from_args(cfg.model, s.args), cfg, s.device)
    s.model.load_state_dict(ckpt["state_dict"])
    s.optim = Optim(cfg, s.model, None if s.total == UNSIZED else s.total)
    s.optim.load_state_dict(ckpt["optimizer"], ckpt.get("scheduler"))
    sched, was = s.optim.schedule, ckpt.get("budget")
    if was:  # sized by a budget: the schedule goes on; a budget now re-measures and re-sizes what is left
        s.total, s.budgeted, s.budget_record = sched.total, True, was
        if s.clock is not None:
            s.clock.fresh, s.clock.planned_step_s = False, was.get("step_s")
            if was.get("publish_s") is not None:  # measured where it was sized: a better first guess than 1 s
                s.clock.costs = budget.Costs(was["step_s"], was.get("val_s", 0.0), was["publish_s"])
    elif s.clock is not None:  # a budget for a run sized by epochs: the rest is sized after measuring
        s.clock.fresh = False
    elif sched.total != s.total:  # more (or fewer) epochs than the checkpoint's run: the same lr now, a new end
        sched.resize(ckpt["step"], s.total)
    s.scaler.load_state_dict(ckpt["scaler"])
    if s.ema is not None:
        s.ema = EMA(s.model, cfg.ema, int(ckpt.get("ema_updates", ckpt["step"])))
        if ckpt.get("ema"):
            s.ema.load(ckpt["ema"])
    # the weights were trained on the checkpoint's normalisation (an --init-from run: its source's)
    s.data.norm = Normalizer(**ckpt["normalisation"])
    s.initialised_from = ckpt.get("initialised_from")
    s.step, s.epoch, s.best, s.history = ckpt["step"], ckpt["epoch"], ckpt["best_val_mae"], list(ckpt["history"])
    set_rng_state(ckpt["rng"])
    s.say(f"resumed from {s.resumed_from or 'checkpoint'} at step {s.step} (epoch {s.epoch})"
          + (f"; an older checkpoint than the newest: {s.resume_fallback}" if s.resume_fallback else ""))


def init_weights(s: State) -> None:
    """``--init-from``: start from another run's (or file's) weights — its EMA weights when it has them —
    and the normalisation they were trained with. Every tensor must fit unless ``init_partial``; then
    those that fit are loaded and the log says how many."""
    cfg, ckpt = s.cfg, None
    if s.d.master:
        from ..runs import read_checkpoint

        ckpt, source = read_checkpoint(cfg.init_from)
        if ckpt.get("format") != "gwi-checkpoint":
            raise GwiError(f"init_from {cfg.init_from}: not a gwi checkpoint")
        ckpt = {"source": source, "model": ckpt["model"], "step": ckpt.get("step"),
                "weights": ckpt["ema"] if ckpt.get("ema") else ckpt["state_dict"],
                "ema": bool(ckpt.get("ema")), "normalisation": ckpt["normalisation"]}
    if s.d.enabled:
        buf = [ckpt]
        dist.broadcast_object_list(buf, src=0)
        ckpt = buf[0]
    src, own = ckpt["weights"], s.model.state_dict()
    missing = [k for k in own if k not in src]
    unexpected = [k for k in src if k not in own]
    misshaped = [f"{k} {tuple(src[k].shape)} -> {tuple(own[k].shape)}" for k in own
                 if k in src and src[k].shape != own[k].shape]
    fits = {k: v for k, v in src.items() if k in own and v.shape == own[k].shape}
    what = f"{ckpt['model']['name']} ({ckpt['model'].get('preset')}) weights from {ckpt['source']}"
    if (missing or unexpected or misshaped) and not cfg.init_partial:
        def listed(label, keys):
            return f"\n  {label} ({len(keys)}): " + ", ".join(keys[:8]) + (", ..." if len(keys) > 8 else "") \
                if keys else ""

        raise GwiError(f"init_from: the {what} do not fit {cfg.model} ({cfg.preset}): {len(fits)} of {len(own)} "
                       f"tensors match" + listed("missing", missing) + listed("unexpected", unexpected)
                       + listed("mis-shaped (checkpoint -> model)", misshaped)
                       + "\n  --init-partial loads the tensors that match and leaves the rest as initialised")
    s.model.load_state_dict(fits, strict=False)
    if s.ema is not None:
        s.ema = EMA(s.model, cfg.ema)  # the average starts from the loaded weights
    old = s.data.norm
    s.data.norm = Normalizer(**ckpt["normalisation"])
    s.initialised_from = {"source": ckpt["source"], "model": ckpt["model"]["name"], "step": ckpt["step"],
                          "ema": ckpt["ema"], "tensors": len(fits), "of": len(own)}
    s.say(f"initialised from the {what} (step {ckpt['step']}): {len(fits)} of {len(own)} tensors"
          + (f"; {len(own) - len(fits)} left as initialised (--init-partial)" if len(fits) < len(own) else "")
          + ("; using its normalisation" if asdict(old) != asdict(s.data.norm) else ""))


def start_heartbeat(s: State) -> Heartbeat:
    """Rank 0's heartbeat: to the run's own progress file, and to the attempt's when the scheduler
    launched this process (taking over the process-wide heartbeat there)."""
    cfg = s.cfg
    base = {"state": "starting", "model": cfg.model, "preset": cfg.preset, "run": cfg.run,
            "dataset": s.data.sources[0].url, "epoch": s.epoch, "epochs": cfg.epochs, "step": s.step,
            "total_steps": None if s.total == UNSIZED else s.total,
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
    at the end; a checkpoint every ``checkpoint_every`` steps and after every epoch. A budgeted run
    (:func:`on_the_clock`) is bounded by its sized steps instead of epochs, and validates and checkpoints
    on a time cadence instead of per epoch. Returns the last validation (empty when the run had
    nothing left to do)."""
    cfg = s.cfg
    loss_fn = LOSS_FNS[cfg.loss]
    s.net.train()
    s.t_loop, s.start_step = time.time(), s.step
    if s.clock is not None:
        s.clock.probe_from = s.step
        s.clock.probe_steps = budget.PROBE_STEPS if s.clock.fresh else budget.RESUME_PROBE_STEPS
    val = {}
    loader, sampler = make_loader(s.data.ds, cfg.workers, s.device, s.d.world)
    try:
        while s.step < s.total and (s.budgeted or s.epoch < cfg.epochs):
            sampler.batches = epoch_batches(s)
            t0, paused = time.perf_counter(), 0.0
            for k, (x, y) in enumerate(loader):
                if cfg.sample_log:
                    log_samples(s, sampler.batches[k][0])
                s.loss_sum = train_step(s, x, y, loss_fn) + (0 if s.loss_sum is None else s.loss_sum)
                s.loss_n += 1
                s.step += 1
                s.samples_seen += x.shape[0] * s.d.world
                s.loop_samples += x.shape[0] * s.d.world
                if s.step % cfg.log_every == 0:
                    read_loss(s)
                    if s.tracker is not None:
                        el = time.time() - s.t_loop
                        s.tracker.log(s.step, {"train/loss": s.last_loss, "train/lr": s.optim.lr,
                                               "train/samples_per_s": s.loop_samples / el if el > 0 else None})
                beat_step(s)
                tp = time.perf_counter()
                if s.clock is not None:
                    val = on_the_clock(s) or val
                in_epoch = s.step - s.epoch * s.steps_per_epoch
                if cfg.checkpoint_every and s.step % cfg.checkpoint_every == 0 and in_epoch < s.steps_per_epoch \
                        and s.step < s.total and s.total != UNSIZED:
                    publish(s)
                paused += time.perf_counter() - tp
                if cfg.fault_at_step and s.step == cfg.fault_at_step:
                    raise RuntimeError(f"injected fault at step {s.step} (fault_at_step)")
                if stop_requested(s):
                    read_loss(s)
                    publish(s)
                    raise Stopped(f"stopped by SIGTERM at step {s.step}: checkpoint saved, a resume continues from it")
                if s.step >= s.total:
                    break
            read_loss(s)  # waits for the device: the epoch's time below is its compute, not its queueing
            s.loop_s += time.perf_counter() - t0 - paused
            if s.step - s.epoch * s.steps_per_epoch >= s.steps_per_epoch:
                s.epoch += 1
            if s.clock is not None and s.step < s.total:
                continue  # validation and checkpoints keep the budget's cadence, not the epochs'
            if s.epoch % cfg.val_every == 0 or s.step >= s.total or s.epoch >= cfg.epochs:
                val = validate(s)
            publish(s)
    finally:
        close_loader(loader)
    return val


def on_the_clock(s: State) -> dict | None:
    """After each step of a run with a time budget: time the first steps and size (or re-size) the
    schedule from them, then validate and checkpoint every ``every`` steps, re-sizing from what those
    cost. Returns the validation when there was one."""
    c = s.clock
    done = s.step - c.probe_from
    probe = c.probe_steps
    if done == 1 or done == probe:
        read_loss(s)  # waits for the device: the times below are the steps' own
    if done == 1:  # the first step pays one-off costs (autotuning, compilation): not timed
        c.probe_t = time.perf_counter()
    if done == probe:
        step_s = (time.perf_counter() - c.probe_t) / (probe - 1)
        size_to_budget(s, step_s, probe)
        c.mark_t, c.mark_step = time.perf_counter(), s.step
    elif c.every and done > probe and (s.step - c.mark_step) % c.every == 0 and s.step < s.total:
        read_loss(s)
        step_s = (time.perf_counter() - c.mark_t) / (s.step - c.mark_step)
        t0 = time.perf_counter()
        val = validate(s)
        t1 = time.perf_counter()
        publish(s)
        c.costs = budget.Costs(step_s, t1 - t0, time.perf_counter() - t1)
        # this process's own plan is re-fitted to the rest of the budget; a resumed one stands while
        # the step time stays near the planned one and the rest still fits
        fit = s.step + decide(s, lambda: budget.replan(s.total - s.step, c.planned_step_s, c.costs,
                                                       c.budget_s - c.spent, c.every_s, c.sized_here))
        if fit != s.total:
            s.say(f"time budget: re-sized from {s.total} to {fit} steps ({step_s:.3g} s/step, planned "
                  f"{c.planned_step_s:.3g}; validation {c.costs.val_s:.3g} s, checkpoint {c.costs.publish_s:.3g} s)")
            s.total, c.planned_step_s = fit, step_s
            s.optim.schedule.resize(s.step, fit)
        c.mark_t, c.mark_step = time.perf_counter(), s.step
        return val
    return None


def decide(s: State, f: Callable[[], object]):
    """``f()`` on rank 0, the same value on every rank (the clocks of ranks differ)."""
    buf = [f() if s.d.master else None]
    if s.d.enabled:
        dist.broadcast_object_list(buf, src=0)
    return buf[0]


def size_to_budget(s: State, step_s: float, probe: int) -> None:
    """The schedule sized from the measured step time: a fresh run's whole schedule (refused when the
    budget cannot hold even a few steps, a validation and a checkpoint), a resumed run's remaining part
    (kept as it was when the step time is like the planned one and it still fits)."""
    c, cfg = s.clock, s.cfg
    t0 = time.perf_counter()
    one = evaluate(s.model, s.data.ds, s.data.val_idx[:cfg.batch_size * s.d.world], s.data.norm, s.data.families,
                   s.device, s.precision, cfg.batch_size, s.d)
    batches = math.ceil(len(s.data.val_idx) / s.d.world / cfg.batch_size) if one["val_samples"] else 0
    # a checkpoint's cost is measured by publishing one below; until then, a guess of 1 s
    c.costs = budget.Costs(step_s, (time.perf_counter() - t0) * batches, c.costs.publish_s if c.costs else 1.0)
    fmt = budget.format_duration

    def steps_left() -> int | str:
        remaining = c.budget_s - c.spent
        if c.fresh:
            need = budget.minimum_s(c.spent, c.costs)
            if c.budget_s < need:
                return (f"time_budget: {fmt(c.budget_s)} is shorter than the minimum measured here, {fmt(need)}: "
                        f"start-up {fmt(c.spent)}, {probe} steps of {step_s:.3g} s, a validation "
                        f"~{c.costs.val_s:.3g} s, a checkpoint ~{c.costs.publish_s:.3g} s and a margin")
        if c.fresh or not c.planned_step_s:
            return budget.steps_that_fit(remaining, c.costs, c.every_s)
        return budget.resize(s.total - s.step, c.planned_step_s, c.costs, remaining, c.every_s)

    left = decide(s, steps_left)
    if isinstance(left, str):
        raise GwiError(left)
    c.every = decide(s, lambda: max(1, int(c.every_s / step_s)))
    total = s.step + left
    if cfg.max_steps:
        total = min(total, max(cfg.max_steps, s.step))
    if c.fresh:
        s.optim.schedule.size(s.step, total, cfg.warmup_frac)
        s.total, c.fresh, c.sized_here = total, False, True
        t1 = time.perf_counter()
        publish(s)
        c.costs.publish_s = time.perf_counter() - t1
        # the checkpoint's cost was a guess until now: fit the steps again with it measured
        refit = s.step + decide(s, lambda: budget.steps_that_fit(c.budget_s - c.spent, c.costs, c.every_s))
        if cfg.max_steps:
            refit = min(refit, max(cfg.max_steps, s.step))
        if refit != s.total:
            s.optim.schedule.resize(s.step, refit)
            s.total = refit
        s.say(f"time budget {fmt(c.budget_s)}: {s.total} steps of {step_s:.3g} s (warm-up {s.optim.schedule.warmup}), "
              f"a validation (~{c.costs.val_s:.3g} s) and a checkpoint ({c.costs.publish_s:.3g} s) every {c.every} "
              f"steps, {fmt(c.spent)} spent so far")
    elif total != s.total:
        s.say(f"time budget {fmt(c.budget_s)}: the remaining {s.total - s.step} steps planned at "
              f"{c.planned_step_s or float('nan'):.3g} s/step re-sized to {total - s.step} at {step_s:.3g} s/step")
        s.optim.schedule.resize(s.step, total)
        s.total = total  # still the plan's time: later checkpoints keep it, they do not fill this budget
    else:
        s.say(f"time budget {fmt(c.budget_s)}: the remaining {s.total - s.step} steps fit "
              f"({step_s:.3g} s/step here); the schedule goes on unchanged")
    c.planned_step_s = step_s


def epoch_batches(s: State) -> list[tuple[np.ndarray, np.ndarray]]:
    """This rank's batches left in the current epoch (all of them, unless resuming inside it): each its
    sample indices, sorted so the reads walk the memory map forwards, and which of them to flip."""
    order = s.data.epoch(s.cfg.seed, s.epoch, s.d.rank, s.d.world)
    in_epoch = s.step - s.epoch * s.steps_per_epoch
    bs = min(s.cfg.batch_size, len(order))
    seed = s.cfg.seed * 1_000_003 + s.d.rank  # ranks flip independently, as they read different samples
    if hasattr(s.data.ds, "plan"):  # streamed: the cache fetches the coming shards ahead
        s.data.ds.plan(order[in_epoch * bs:], ahead=s.cfg.stream_window + 1)
    return [(np.sort(order[i:i + bs]), flip_mask(bs, s.cfg.flip, s.step + k, seed))
            for k, i in enumerate(range(in_epoch * bs, s.steps_per_epoch * bs, bs))]


def log_samples(s: State, idx: np.ndarray) -> None:
    """One line of ``cfg.sample_log``: the samples of the step about to run (a resume repeats the steps
    after its checkpoint: the last line of a step is the one the run kept)."""
    path = s.cfg.sample_log + (f".{s.d.rank}" if s.d.rank else "")
    with open(path, "a") as f:
        f.write(f"{s.epoch} {s.step} {' '.join(map(str, idx.tolist()))}\n")


def train_step(s: State, x: torch.Tensor, y: torch.Tensor, loss_fn) -> torch.Tensor:
    """One optimiser step on a batch; returns its loss, left on the device (reading it waits for the device)."""
    x, y = x.to(s.device, non_blocking=True), y.to(s.device, non_blocking=True)  # flipped by the reader
    x = s.data.norm.seismic(x)  # (B, 5, 1000, 70) float16 -> float32 in [-1, 1]
    y = s.data.norm.velocity(y)  # (B, 1, 70, 70)
    if s.cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with amp_context(s.device, s.precision):
        pred = s.net(x)
    loss = loss_fn(pred.float(), y)
    s.optim.zero_grad()
    s.scaler.scale(loss).backward()
    if s.cfg.grad_clip > 0:
        s.optim.unscale(s.scaler)
        nn.utils.clip_grad_norm_(s.net.parameters(), s.cfg.grad_clip)
    s.optim.step(s.scaler)
    if s.ema is not None:
        s.ema.update(s.model)
    return loss.detach()


def read_loss(s: State) -> None:
    """The mean loss since the last read, on the host: every ``log_every`` steps, at the end of an
    epoch and before a checkpoint, so a non-finite loss stops the run before its weights are saved."""
    if not s.loss_n:
        return
    s.last_loss = float(s.loss_sum) / s.loss_n
    s.loss_sum, s.loss_n = None, 0
    if not math.isfinite(s.last_loss):
        raise FloatingPointError(f"loss is {s.last_loss} by step {s.step}; lower --lr or use fp32")


def beat_step(s: State) -> None:
    if s.hb is None:
        return
    el = time.time() - s.t_loop
    rate = (s.step - s.start_step) / el if el > 0 else 0
    # an advance per step: host values only (the loss is read every log_every steps), no device sync
    s.hb.advance(state="running", phase="training", step=s.step, epoch=s.epoch, train_loss=s.last_loss,
                 samples_per_s=s.samples_seen / el if el > 0 else None, lr=s.optim.lr,
                 total_steps=None if s.total == UNSIZED else s.total,
                 eta_s=(s.total - s.step) / rate if rate > 0 and s.total != UNSIZED else None)


def publish(s: State) -> None:
    """Rank 0 publishes a checkpoint of everything an exact resume needs."""
    read_loss(s)  # every rank: a non-finite loss stops the run here, before its weights are saved
    if not s.d.master:
        return
    cfg, data = s.cfg, s.data
    s.hb.update(state="checkpointing")
    ckpt = {
        "format": "gwi-checkpoint", "format_version": 1, "gwi_version": __version__,
        "model": {"name": cfg.model, "preset": cfg.preset, "args": s.args},
        "state_dict": s.model.state_dict(),
        "ema": s.ema.state if s.ema else None, "ema_updates": s.ema.updates if s.ema else 0,
        "optimizer": s.optim.state_dict(), "scaler": s.scaler.state_dict(),
        "step": s.step, "epoch": s.epoch, "step_in_epoch": s.step - s.epoch * s.steps_per_epoch,
        "best_val_mae": s.best, "history": s.history, "rng": rng_state(),
        "normalisation": asdict(data.norm),
        "dataset": {"url": data.sources[0].url, "name": data.manifest.get("name"), "build": data.manifest.get("build"),
                    "manifest_sha256": data.manifest_sha, "families": data.families, "mix": data.mix(s.d.world)},
        "split": cfg.split, "precision": s.precision, "initialised_from": s.initialised_from,
        "config": asdict(cfg), "total_steps": s.total,
        "budget": s.clock.record() if s.clock else s.budget_record,
    }
    entry = s.run.publish_checkpoint(ckpt, s.step, cfg.keep_checkpoints)
    if s.tracker is not None:
        s.tracker.publish(s.history)
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
        "dataset": s.data.sources[0].url, "datasets": s.data.mix(s.d.world), "split": cfg.split, "steps": s.step, "total_steps": s.total, "epochs": s.epoch,
        "precision": s.precision,
        "time_budget_s": s.clock.budget_s if s.clock else None, "budget_used_s": s.clock.spent if s.clock else None,
        "device": s.device_text, "world_size": s.d.world, "wall_s": time.time() - t_start,
        "samples_per_s": s.samples_seen / max(1e-9, time.time() - s.t_loop),
        "loop_s": s.loop_s, "loop_samples": s.loop_samples, "initialised_from": s.initialised_from,
        "val_mae": val.get("val_mae"), "val_mae_per_family": val.get("val_mae_per_family", {}),
        "baseline_mae": val.get("baseline_mae"), "best_val_mae": s.best_or_none,
        "history": s.history, "rank_param_sha256": digests, "resumed_from": s.resumed_from,
        "gwi_version": __version__, "finished": progress.now_iso(),
    }
    if s.d.enabled:
        dist.barrier()  # no collective work left in flight when the group is torn down
    if s.d.master:
        if s.tracker is not None:
            s.tracker.close(s.history)
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
