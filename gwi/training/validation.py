"""Validation: the MAE in m/s (on the EMA weights when there are some), kept in the history and reported."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
import torch.distributed as dist

from .. import budget
from ..inference import Normalizer
from .distributed import Dist
from .precision import amp_context
from .state import State


def validate(s: State) -> dict:
    """Validation MAE (all ranks), kept in the history and reported."""
    s.beat(state="validating")
    val = evaluate_model(s)
    if val["val_mae"] is not None:
        s.best = min(s.best, val["val_mae"])
    s.history.append({"epoch": s.epoch, "step": s.step, "train_loss": s.last_loss, **val})
    if s.tracker is not None:
        s.tracker.log(s.step, {"val/mae": val["val_mae"], **{f"val/mae_{f}": v for f, v in val["val_mae_per_family"].items()}})
    s.beat(state="running", epoch=s.epoch, val_mae=val["val_mae"], val_mae_per_family=val["val_mae_per_family"],
           baseline_mae=val["baseline_mae"], best_val_mae=s.best_or_none,
           validations=len(s.history))  # a sweep's pruner counts its rungs in validations
    nan = float("nan")
    where = (f"step {s.step}/{s.total} ({budget.format_duration(s.clock.spent)} of "
             f"{budget.format_duration(s.clock.budget_s)})" if s.clock else
             f"epoch {s.epoch}/{s.cfg.epochs} step {s.step}/{s.total}")
    s.say(f"{where} loss {s.last_loss if s.last_loss is not None else nan:.4f} "
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
