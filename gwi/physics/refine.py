"""``gwi refine``: full-waveform inversion of each test file, starting from a submission.

What the 2nd place of the competition did (a public model's predictions, 28.8 → 7.6 m/s), as a
command: for a batch of test files, the velocity maps are moved to make the forward model's
recordings match the file's, by gradient descent through the (differentiable) forward model:

* **misfit**: squared difference of the traces, each shot weighted by 1/RMS of its observed traces
  (so quiet far shots count as much as loud near ones), averaged per file;
* **regularisation**: total variation of the map (in km/s per cell), ``--tv`` times;
* **multi-scale**: the iterations are split over bands, low-passed first (``--bands 5,10,0``: 5 Hz,
  then 10 Hz, then the full band): long wavelengths first avoid cycle skipping;
* **scale scan** first (``scale_range``): each map times the factor in 1 ± 10 % that fits the first
  band best; a best factor at an end of the range leaves the map as it was (its error is no scale);
* velocities stay in 1500–4500 m/s (projected after every step);
* ``gd`` (default): steepest descent with the gradient scaled by depth (deep cells are seen through
  weaker waves) and each file's step set so its largest change is ``lr`` m/s, decaying to half over a
  band. Measured on eight held-out maps (deepwave, blurred truth ×1.03 as the start, 60 iterations,
  bench/refine.py): MAE ×0.76 alone, ×0.59 after the scan. Adam at 10–20 m/s fit the data as well but
  *raised* the MAE (119 → 184): its per-cell normalisation moves poorly constrained deep cells as
  much as the rest. ``lbfgs`` is there; it stalled in these trials.

Files of a batch are independent (the loss is a sum of per-file terms; Adam's update is per element).

Output: rows are appended to ``OUT.partial`` after every batch (with ``OUT.misfit.csv``: misfit
before and after per file), so an interrupted run resumes where it stopped; ``OUT`` itself is
written whole at the end (a temp file renamed), never half: every test file, the unrefined ones
with their starting rows. With ``--shard i/N`` a run takes every N-th chosen file (the i-th of each
N, in oid order) and writes only their rows; ``gwi merge --base`` joins shards over the start. The
CLI keeps the work files beside a store URL ``OUT`` (``store.resumable_output``), so another
machine resumes.
"""

from __future__ import annotations

import csv
import math
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..data.layout import VMAX, VMIN
from ..errors import DataError
from ..paths import atomic_open
from ..progress import update as report_progress
from ..sharding import shard_of
from .misfit import data_misfit, lowpass, shot_weights
from .refine_config import RefineConfig


# ------------------------------------------------------------------------------------------------
# the inversion


def total_variation(v: torch.Tensor) -> torch.Tensor:
    """(B,) mean isotropic TV of each map in km/s per cell (smoothed at zero)."""
    k = v / 1000.0
    dz = k[:, 1:, :-1] - k[:, :-1, :-1]
    dx = k[:, :-1, 1:] - k[:, :-1, :-1]
    return (dz.pow(2) + dx.pow(2) + 1e-8).sqrt().mean(dim=(1, 2))


@torch.no_grad()
def scale_scan(fwd, obs: torch.Tensor, v0: torch.Tensor, cfg: RefineConfig) -> torch.Tensor:
    """``v0`` (B, nz, nx) times the factor in 1 ± ``scale_range`` that fits ``obs`` best on the first
    band: a grid of ``scale_steps`` factors, then the vertex of the parabola through the best and its
    neighbours. Each file keeps its own factor; a file whose best factor is an end of the range keeps
    its map."""
    dt = fwd.g.dt
    obs_b = lowpass(obs, cfg.bands[0], dt)
    w = shot_weights(obs_b)
    factors = torch.linspace(1 - cfg.scale_range, 1 + cfg.scale_range, cfg.scale_steps, dtype=v0.dtype,
                             device=v0.device)
    b = v0.shape[0]
    misfit = torch.empty(cfg.scale_steps, b, dtype=v0.dtype, device=v0.device)
    per_call = cfg.batch_size  # files x factors per forward call: what the batch size allows
    trials = [(k, i) for k in range(cfg.scale_steps) for i in range(b)]
    for s in range(0, len(trials), per_call):
        chunk = trials[s:s + per_call]
        ks, idx = [k for k, _ in chunk], [i for _, i in chunk]
        v = (v0[idx] * factors[ks, None, None]).clamp(VMIN, VMAX)
        misfit[ks, idx] = data_misfit(lowpass(fwd(v), cfg.bands[0], dt), obs_b[idx], w[idx])
    best = misfit.argmin(dim=0)  # (B,)
    step = factors[1] - factors[0]
    out = []
    for i in range(b):
        k = int(best[i])
        if not 0 < k < cfg.scale_steps - 1:
            # a fit still improving at the end of the range is no minimum: the map's error is not a
            # scale (measured: a blurred slow top layer over a 4 km/s one pulled the scan to -10 %,
            # doubling the MAE); the map is kept as it is
            out.append(v0[i])
            continue
        lo, mid, hi = misfit[k - 1, i], misfit[k, i], misfit[k + 1, i]
        curv = lo - 2 * mid + hi
        f = factors[k] - step * 0.5 * (hi - lo) / curv if curv > 0 else factors[k]
        out.append((v0[i] * f).clamp(VMIN, VMAX))
    return torch.stack(out)


def fwi(fwd, obs: torch.Tensor, v0: torch.Tensor, cfg: RefineConfig, log: Callable[[str], None] = lambda _: None,
        tick: Callable[[int], None] = lambda _: None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Refine ``v0`` (B, nz, nx) against ``obs`` (B, S, nt, R); returns (v, misfit before, misfit after),
    misfits on the full band. ``tick(k)`` at each of the ``k`` evaluations of the loss (progress)."""
    dt = fwd.g.dt
    w_full = shot_weights(obs)
    with torch.no_grad():
        before = data_misfit(fwd(v0), obs, w_full)
    if cfg.scale_range > 0:
        v0 = scale_scan(fwd, obs, v0, cfg)
    # the unknown in km/s and each file's misfit relative to where its band started: gradients near
    # 1, so L-BFGS's tolerances and Adam's step (``lr`` m/s) mean the same for every file and band
    u = (v0 / 1000.0).clone().requires_grad_(True)
    evals = 0
    per_band = [cfg.iterations // len(cfg.bands) + (i < cfg.iterations % len(cfg.bands)) for i in range(len(cfg.bands))]
    for band, n in zip(cfg.bands, per_band):
        if n == 0:
            continue
        obs_b = lowpass(obs, band, dt)
        w = shot_weights(obs_b)
        with torch.no_grad():
            scale = 1.0 / data_misfit(lowpass(fwd(u * 1000.0), band, dt), obs_b, w).clamp_min(1e-30)

        def loss_fn() -> torch.Tensor:
            nonlocal evals
            evals += 1
            tick(evals)
            sim = lowpass(fwd(u * 1000.0), band, dt)
            return (scale * data_misfit(sim, obs_b, w) + cfg.tv * total_variation(u * 1000.0)).sum()

        if cfg.optimizer == "gd":  # steepest descent, each file's step scaled to move its largest cell by lr
            # deeper cells are seen through weaker (spread) waves: the gradient is scaled by depth
            depth = torch.arange(1, u.shape[1] + 1, dtype=u.dtype, device=u.device)[:, None] / u.shape[1]
            for k in range(n):
                u.grad = None
                loss = loss_fn()
                loss.backward()
                with torch.no_grad():
                    g = u.grad * depth
                    g = g / g.abs().amax(dim=(1, 2), keepdim=True).clamp_min(1e-30)
                    u.sub_(g * (cfg.lr / 1000.0) * (1.0 - 0.5 * k / n)).clamp_(VMIN / 1000.0, VMAX / 1000.0)
        elif cfg.optimizer == "adam":
            opt = torch.optim.Adam([u], lr=cfg.lr / 1000.0)
            for _ in range(n):
                opt.zero_grad(set_to_none=True)
                loss = loss_fn()
                loss.backward()
                opt.step()
                with torch.no_grad():
                    u.clamp_(VMIN / 1000.0, VMAX / 1000.0)
        else:
            opt = torch.optim.LBFGS([u], lr=1.0, max_iter=n, history_size=10, line_search_fn="strong_wolfe")

            def closure() -> torch.Tensor:
                opt.zero_grad(set_to_none=True)
                loss = loss_fn()
                loss.backward()
                return loss

            loss = opt.step(closure)
            with torch.no_grad():
                u.clamp_(VMIN / 1000.0, VMAX / 1000.0)
        log(f"  band {'full' if band <= 0 else f'<= {band:g} Hz'}: {n} iterations, loss {float(loss.detach()):.4g}")
    v = u.detach() * 1000.0
    with torch.no_grad():
        after = data_misfit(fwd(v), obs, w_full)
    return v, before, after


# ------------------------------------------------------------------------------------------------
# the command: files in, rows out, resumable


def _complete_rows(path: Path) -> dict[str, list[str]]:
    """``{oid: its 70 CSV lines}`` for the oids whose 70 rows a partial file holds complete."""
    from ..predict import COLUMNS, ROWS, _ID

    rows: dict[str, dict[int, str]] = {}
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        for rec in csv.reader(f):
            m = _ID.match(rec[0]) if rec else None
            if m is None or len(rec) != 1 + len(COLUMNS):
                continue
            try:
                if not all(math.isfinite(float(x)) for x in rec[1:]):
                    continue
            except ValueError:
                continue
            rows.setdefault(m.group(1), {})[int(m.group(2))] = ",".join(rec)
    return {o: [r[i] for i in range(ROWS)] for o, r in rows.items() if len(r) == ROWS}


def _append(path: Path, text: str) -> None:
    with open(path, "a", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def worst_files(misfit_csv: str, oids: list[str], fraction: float) -> list[str]:
    """The ``fraction`` of ``oids`` with the largest misfit in ``misfit_csv`` (``oid,misfit``, what
    ``gwi predict --misfit`` writes), worst first; at least one file."""
    if not 0 < fraction <= 1:
        raise ValueError(f"worst: expected a fraction in (0, 1], got {fraction!r}")
    score: dict[str, float] = {}
    with open(misfit_csv, newline="") as f:
        reader = csv.reader(f)
        head = next(reader, None)
        if head is None or len(head) < 2 or head[0] != "oid":
            raise DataError(f"{misfit_csv}: expected a header 'oid,misfit', got {','.join(head or []) or 'nothing'}")
        for n, rec in enumerate(reader, start=2):
            try:
                score[rec[0]] = float(rec[1])
            except (IndexError, ValueError):
                raise DataError(f"{misfit_csv}:{n}: expected oid,misfit, got {','.join(rec)!r}") from None
    missing = [o for o in oids if o not in score]
    if missing:
        raise DataError(f"{misfit_csv}: no misfit for {len(missing)} test file(s): {', '.join(missing[:5])}"
                        f"{' ...' if len(missing) > 5 else ''}")
    ranked = sorted(oids, key=lambda o: -score[o] if math.isfinite(score[o]) else -math.inf)
    return ranked[:max(1, math.ceil(fraction * len(oids)))]


def _chosen(test: str, oids: list[str], only: list[str] | None, rank: str | None, worst: float) -> list[str]:
    """The files to refine, in test order: those in ``only``, then the ``worst`` fraction by ``rank``."""
    if only is not None:
        known, wanted = set(oids), set(only)
        unknown = [o for o in only if o not in known]
        if unknown:
            raise DataError(f"{test}: no test file for {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
        oids = [o for o in oids if o in wanted]
    if rank is not None:
        keep = set(worst_files(rank, oids, worst))
        oids = [o for o in oids if o in keep]
    return list(oids)


WORK_SUFFIXES = (".partial", ".misfit.csv")  # what a resumed refine needs beside its output


def refine(test: str, init: str, out: str, cfg: RefineConfig, *, shard: tuple[int, int] | None = None,
           only: list[str] | None = None, rank: str | None = None, worst: float = 1.0,
           save: Callable[[], None] = lambda: None, log: Callable[[str], None] = print) -> dict:
    """Refine the test files of ``test`` (a folder of ``<oid>.npy`` or a dataset) from the rows of
    ``init``: those in ``only``, then the ``worst`` fraction by the misfits in ``rank``, then this
    ``shard`` of them. Without a shard ``out`` is a whole submission (files not refined keep their
    ``init`` rows); with one it holds the shard's files only, for ``gwi merge --base INIT``.
    ``save`` is called after each batch, once the work files are written (see ``resumable_output``)."""
    from . import backend
    from ..predict import HEADER, TestSource, read_submission, rows_csv

    cfg.check()
    t0 = time.monotonic()
    src = TestSource(test)
    index = {o: i for i, o in enumerate(src.oids)}
    oids = shard_of(_chosen(test, src.oids, only, rank, worst), shard)
    # every file goes into a whole submission; a shard writes only its own
    written = oids if shard is not None else list(src.oids)
    # checked row by row (1 m/s of slack for rounding), then kept strictly inside the physics' range
    start = {o: np.clip(m, VMIN, VMAX) for o, m in read_submission(init, written).items()}
    out_p = Path(out)
    out_p.parent.mkdir(parents=True, exist_ok=True)
    part, side = (out_p.with_name(out_p.name + sfx) for sfx in WORK_SUFFIXES)
    mine = set(oids)
    done = {o: r for o, r in _complete_rows(part).items() if o in mine}
    # rewrite what was kept: a line cut by a crash must not end up glued to the next batch's first row
    with atomic_open(part) as f:
        f.write("".join("\n".join(done[o]) + "\n" for o in oids if o in done))
    if not side.is_file() or not done:
        with atomic_open(side) as f:
            f.write("oid,misfit_before,misfit_after\n")
    todo = [o for o in oids if o not in done]
    if done:
        log(f"resuming: {len(done)} of {len(oids)} files already refined in {part}")
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    fwd = backend(cfg.backend, device=device, **cfg.backend_options)
    log(f"refining {len(todo)} files with {cfg.backend} on {device}: {cfg.iterations} iterations "
        f"({cfg.optimizer}, bands {', '.join('full' if b <= 0 else f'{b:g} Hz' for b in cfg.bands)}), "
        f"batches of {cfg.batch_size}")
    per_batch = 0.0
    stopped = None
    for s in range(0, len(todo), cfg.batch_size):
        chunk = todo[s:s + cfg.batch_size]
        spent = time.monotonic() - t0
        if spent + per_batch > cfg.time_budget_s:
            stopped = f"time budget: {len(todo) - s} files left unrefined (rerun to resume)"
            break
        t = time.monotonic()
        obs = torch.from_numpy(np.stack([src.read(index[o]) for o in chunk])).to(device, fwd.dtype)
        v0 = torch.from_numpy(np.stack([start[o] for o in chunk])).to(device, fwd.dtype)
        finished = len(done) + s

        def tick(k: int) -> None:  # every iteration is progress: a batch can take minutes on a CPU
            report_progress(state="running", done=finished, total=len(oids), unit="files", iteration=k)

        v, before, after = fwi(fwd, obs, v0, cfg, log=log, tick=tick)
        _append(part, rows_csv(chunk, v.float().cpu().numpy()))
        _append(side, "".join(f"{o},{b:.6g},{a:.6g}\n" for o, b, a in zip(chunk, before.tolist(), after.tolist())))
        save()
        for o, b, a in zip(chunk, before.tolist(), after.tolist()):
            log(f"{o}: misfit {b:.4g} -> {a:.4g} ({a / max(b, 1e-30):.2f}x)")
        per_batch = time.monotonic() - t
        report_progress(state="running", done=finished + len(chunk), total=len(oids), unit="files")
    refined = _complete_rows(part)
    with atomic_open(out_p) as f:
        f.write(HEADER + "\n")
        for o in written:
            f.write("\n".join(refined[o]) + "\n" if o in refined else rows_csv([o], start[o][None]))
    n_ref = sum(o in refined for o in oids)
    if n_ref == len(oids):
        part.unlink(missing_ok=True)
    log(f"wrote {out_p}: {len(written)} files, {n_ref} refined"
        + (f"; {stopped}" if stopped else "") + f" ({time.monotonic() - t0:.0f} s); misfits in {side}")
    return {"files": len(written), "refined": n_ref, "chosen": len(oids), "out": str(out_p), "misfit": str(side),
            "stopped": stopped}
