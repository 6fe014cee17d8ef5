"""``gwi refine``: full-waveform inversion of each test file, starting from a submission or a model.

What the 2nd place of the competition did (a public model's predictions, 28.8 → 7.6 m/s), as a
command: for a batch of test files, the velocity maps are moved to make the forward model's
recordings match the file's, by gradient descent through the (differentiable) forward model:

* **misfit**: squared difference of the traces, each shot weighted by 1/RMS of its observed traces
  (so quiet far shots count as much as loud near ones), averaged per file;
* **regularisation** (priors, :mod:`gwi.physics.priors`): total variation of the map (in km/s per
  cell), ``--tv`` times; the mean squared Laplacian, ``--smooth`` times; the mean squared difference
  to the start map, ``--pull`` times. ``--priors auto`` picks a set per file from its start map:
  TV for a layered map, the Laplacian for a smooth one; ``--tune-on`` chooses each set's weights on
  labelled validation samples (:func:`tune`, recorded in ``OUT.tuning.json``);
* **keep the start**: a file whose refined map does not lower the data misfit gets its start map;
* **a model as the start** (``--init RUN`` or ``CKPT.pt``): its predictions by ``gwi.predict``,
  written to ``OUT.init.csv`` first and reused on resume;
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
before and after per file, and ``OUT.priors.csv``: each file's prior set, its weights, the misfits
and which map was written), so an interrupted run resumes where it stopped; ``OUT`` itself is
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
from .priors import classify, laplacian, pull
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


def _descend(u: torch.Tensor, loss_fn: Callable[[], torch.Tensor], n: int, cfg: RefineConfig) -> torch.Tensor:
    """``n`` iterations of ``cfg.optimizer`` on ``u`` (B, nz, nx) km/s, kept in range; the last loss."""
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
        return loss
    if cfg.optimizer == "adam":
        opt = torch.optim.Adam([u], lr=cfg.lr / 1000.0)
        for _ in range(n):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn()
            loss.backward()
            opt.step()
            with torch.no_grad():
                u.clamp_(VMIN / 1000.0, VMAX / 1000.0)
        return loss
    opt = torch.optim.LBFGS([u], lr=1.0, max_iter=n, history_size=10, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        return loss

    loss = opt.step(closure)
    with torch.no_grad():
        u.clamp_(VMIN / 1000.0, VMAX / 1000.0)
    return loss


def fwi(fwd, obs: torch.Tensor, v0: torch.Tensor, cfg: RefineConfig, log: Callable[[str], None] = lambda _: None,
        tick: Callable[[int], None] = lambda _: None,
        weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Refine ``v0`` (B, nz, nx) against ``obs`` (B, S, nt, R); returns (v, misfit before, misfit after),
    misfits on the full band. ``weights`` (B, 3): each file's (tv, smooth, pull), by default the
    config's for all. ``tick(k)`` at each of the ``k`` evaluations of the loss (progress)."""
    dt = fwd.g.dt
    w_full = shot_weights(obs)
    if weights is None:
        weights = torch.tensor([cfg.weights("fixed")] * v0.shape[0])
    tv_w, smooth_w, pull_w = weights.to(v0.device, v0.dtype).unbind(dim=1)  # (B,) each
    with torch.no_grad():
        before = data_misfit(fwd(v0), obs, w_full)
    if cfg.scale_range > 0:
        v0 = scale_scan(fwd, obs, v0, cfg)
    # the pull is toward the map the iterations start from: after the scan, whose factor the data chose
    anchor = v0.clone()
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
            v = u * 1000.0
            loss = scale * data_misfit(lowpass(fwd(v), band, dt), obs_b, w)
            # a prior is computed only where some file weighs it: an all-zero term costs a pass for nothing
            if bool((tv_w > 0).any()):
                loss = loss + tv_w * total_variation(v)
            if bool((smooth_w > 0).any()):
                loss = loss + smooth_w * laplacian(v)
            if bool((pull_w > 0).any()):
                loss = loss + pull_w * pull(v, anchor)
            return loss.sum()

        loss = _descend(u, loss_fn, n, cfg)
        log(f"  band {'full' if band <= 0 else f'<= {band:g} Hz'}: {n} iterations, loss {float(loss.detach()):.4g}")
    v = u.detach() * 1000.0
    with torch.no_grad():
        after = data_misfit(fwd(v), obs, w_full)
    return v, before, after


def keep_start(v: torch.Tensor, v0: torch.Tensor, before: torch.Tensor,
               after: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(maps, kept (B,) bool): the start ``v0`` wherever the refined ``v`` did not lower the misfit.
    A data fit that got no better is no evidence against the model's map, and the model's is the
    better guess where the inversion wandered (cycle skipping, a poorly lit deep part)."""
    kept = ~(after < before)  # (B,); a NaN misfit keeps the start too
    return torch.where(kept[:, None, None], v0, v), kept


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


# what a resumed refine needs beside its output: the rows refined so far, misfits and prior sets per
# file, the start predicted from a model (--init RUN), the weights chosen on validation (--tune-on)
WORK_SUFFIXES = (".partial", ".misfit.csv", ".priors.csv", ".init.csv", ".tuning.json")
PRIORS_HEADER = "oid,prior,tv,smooth,pull,misfit_before,misfit_after,kept"


def refine(test: str, init: str, out: str, cfg: RefineConfig, *, shard: tuple[int, int] | None = None,
           only: list[str] | None = None, rank: str | None = None, worst: float = 1.0,
           save: Callable[[], None] = lambda: None, log: Callable[[str], None] = print) -> dict:
    """Refine the test files of ``test`` (a folder of ``<oid>.npy`` or a dataset) from the rows of
    ``init``: those in ``only``, then the ``worst`` fraction by the misfits in ``rank``, then this
    ``shard`` of them. Without a shard ``out`` is a whole submission (files not refined keep their
    ``init`` rows); with one it holds the shard's files only, for ``gwi merge --base INIT``.
    ``save`` is called after each batch, once the work files are written (see ``resumable_output``).
    ``OUT.priors.csv`` records each file's prior set, its weights, the misfits and which map was
    written (``kept``: ``refined``, or ``start`` where refinement did not lower the misfit)."""
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
    part, side, record = (out_p.with_name(out_p.name + sfx) for sfx in WORK_SUFFIXES[:3])
    mine = set(oids)
    done = {o: r for o, r in _complete_rows(part).items() if o in mine}
    # rewrite what was kept: a line cut by a crash must not end up glued to the next batch's first row
    with atomic_open(part) as f:
        f.write("".join("\n".join(done[o]) + "\n" for o in oids if o in done))
    for path, head in ((side, "oid,misfit_before,misfit_after"), (record, PRIORS_HEADER)):
        if not path.is_file() or not done:
            with atomic_open(path) as f:
                f.write(head + "\n")
    todo = [o for o in oids if o not in done]
    if done:
        log(f"resuming: {len(done)} of {len(oids)} files already refined in {part}")
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    fwd = backend(cfg.backend, device=device, **cfg.backend_options)
    log(f"refining {len(todo)} files with {cfg.backend} on {device}: {cfg.iterations} iterations "
        f"({cfg.optimizer}, bands {', '.join('full' if b <= 0 else f'{b:g} Hz' for b in cfg.bands)}), "
        f"batches of {cfg.batch_size}, priors {cfg.priors}")
    batches = _Batches(lambda o: src.read(index[o]), start, fwd, device, cfg, (part, side, record), save, log)
    stopped = batches.run(todo, t0, len(done), len(oids))
    refined = _complete_rows(part)
    with atomic_open(out_p) as f:
        f.write(HEADER + "\n")
        for o in written:
            f.write("\n".join(refined[o]) + "\n" if o in refined else rows_csv([o], start[o][None]))
    n_ref = sum(o in refined for o in oids)
    if n_ref == len(oids):
        part.unlink(missing_ok=True)
    log(f"wrote {out_p}: {len(written)} files, {n_ref} refined"
        + (f"; {stopped}" if stopped else "") + f" ({time.monotonic() - t0:.0f} s); misfits in {side}, "
        f"prior sets in {record}")
    return {"files": len(written), "refined": n_ref, "chosen": len(oids), "out": str(out_p), "misfit": str(side),
            "priors": str(record), "stopped": stopped}


class _Batches:
    """The files to refine, batch after batch, each batch's rows and records appended to the work
    files (``part``, ``side``, ``record``) before ``save``; stops before a batch that would overrun
    the time budget."""

    def __init__(self, read, start: dict, fwd, device, cfg: RefineConfig, work: tuple[Path, Path, Path],
                 save: Callable[[], None], log: Callable[[str], None]):
        self.read, self.start, self.fwd, self.device, self.cfg = read, start, fwd, device, cfg
        self.part, self.side, self.record = work
        self.save, self.log = save, log

    def run(self, todo: list[str], t0: float, done: int, total: int) -> str | None:
        """Refine ``todo``; None when all were, else why it stopped."""
        per_batch = 0.0
        for s in range(0, len(todo), self.cfg.batch_size):
            chunk = todo[s:s + self.cfg.batch_size]
            if time.monotonic() - t0 + per_batch > self.cfg.time_budget_s:
                return f"time budget: {len(todo) - s} files left unrefined (rerun to resume)"
            t = time.monotonic()
            finished = done + s

            def tick(k: int) -> None:  # every iteration is progress: a batch can take minutes on a CPU
                report_progress(state="running", done=finished, total=total, unit="files", iteration=k)

            self.one(chunk, tick)
            per_batch = time.monotonic() - t
            report_progress(state="running", done=finished + len(chunk), total=total, unit="files")
        return None

    def one(self, chunk: list[str], tick: Callable[[int], None]) -> None:
        from ..predict import rows_csv

        cfg, fwd = self.cfg, self.fwd
        obs = torch.from_numpy(np.stack([self.read(o) for o in chunk])).to(self.device, fwd.dtype)  # (B, S, nt, R)
        v0 = torch.from_numpy(np.stack([self.start[o] for o in chunk])).to(self.device, fwd.dtype)  # (B, 70, 70)
        # the family is read off the start map: the truth is what is unknown here
        priors = [classify(self.start[o]) if cfg.priors == "auto" else "fixed" for o in chunk]
        weights = [cfg.weights(p) for p in priors]
        v, before, after = fwi(fwd, obs, v0, cfg, log=self.log, tick=tick, weights=torch.tensor(weights))
        kept = torch.zeros(len(chunk), dtype=torch.bool)
        if cfg.keep_start:
            v, kept = keep_start(v, v0, before, after)
        _append(self.part, rows_csv(chunk, v.float().cpu().numpy()))
        b_a = list(zip(before.tolist(), after.tolist()))
        _append(self.side, "".join(f"{o},{b:.6g},{a:.6g}\n" for o, (b, a) in zip(chunk, b_a)))
        _append(self.record, "".join(
            f"{o},{p},{w[0]:g},{w[1]:g},{w[2]:g},{b:.6g},{a:.6g},{'start' if k else 'refined'}\n"
            for o, p, w, (b, a), k in zip(chunk, priors, weights, b_a, kept.tolist())))
        self.save()
        for o, p, (b, a), k in zip(chunk, priors, b_a, kept.tolist()):
            self.log(f"{o}: misfit {b:.4g} -> {a:.4g} ({a / max(b, 1e-30):.2f}x), prior {p}"
                     + ("; not lower: the start map is kept" if k else ""))


# ------------------------------------------------------------------------------------------------
# starting from a model, and weights chosen on validation


def is_model(init: str) -> bool:
    """Whether ``--init`` names a model (a ``.pt`` checkpoint, or a run: a folder or store URL of
    checkpoints) rather than a submission (a path or URL ending ``.csv``, or any local file)."""
    if init.endswith(".pt"):
        return True
    if init.endswith(".csv"):
        return False
    if "://" not in init or init.startswith("file://"):
        return Path(init.removeprefix("file://")).is_dir()
    return True


def model_start(model: str, test: str, out: str, *, shard: tuple[int, int] | None = None,
                device: str | None = None, log: Callable[[str], None] = print) -> str:
    """The submission to start from when ``--init`` is a model: its predictions of ``test`` by
    :func:`gwi.predict.predict`, in ``OUT.init.csv`` (a work file: a resumed refine reuses it rather
    than predict again; predict renames it into place only whole). ``shard``: predict only those files."""
    from ..predict import predict

    path = Path(out).with_name(Path(out).name + ".init.csv")
    if path.is_file():
        log(f"starting from {path} (an earlier attempt's predictions of {model}; delete it to predict again)")
        return str(path)
    r = predict([model], test, str(path), device=device, shard=shard, progress=False, log=log)
    log(f"starting from {path}: {r['files']} files predicted by {model} in {r['seconds']:.0f} s")
    return str(path)


def validation_starts(dataset: str, k: int, model: str,
                      device: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """(recordings (k, S, nt, R), ``model``'s maps (k, 70, 70), true maps (k, 70, 70), sample indices)
    for ``k`` labelled samples of ``dataset`` spread evenly over it (datasets are written family by
    family, so a spread meets each)."""
    from ..data.shards import ShardedDataset
    from ..inference import predict_batch, resolve_device_precision
    from ..runs import load_model

    if not isinstance(k, int) or k < 1:
        raise ValueError(f"tune_files: expected an integer >= 1, got {k!r}")
    local = dataset.removeprefix("file://")
    if "://" in dataset and not dataset.startswith("file://"):
        from ..data.sync import pull as pull_dataset

        local = pull_dataset(dataset, progress=False)
    ds = ShardedDataset(local)
    if not ds.manifest.get("labelled", True):
        raise DataError(f"{dataset}: expected a labelled dataset (true maps to score against), got an unlabelled one")
    idx = sorted({int(i) for i in np.linspace(0, len(ds) - 1, min(k, len(ds))).round()})
    x, y = ds.batch(np.array(idx))  # (k, S, nt, R), (k, 1, 70, 70)
    dev, precision = resolve_device_precision(device, None)
    v0 = predict_batch([load_model(model, dev)], [1.0], x, dev, precision)
    return x, v0, y[:, 0], idx


def tune(fwd, obs: torch.Tensor, v0: torch.Tensor, truth: torch.Tensor, cfg: RefineConfig,
         grid: dict | None = None, log: Callable[[str], None] = print) -> dict:
    """Each prior set's weights chosen on labelled files: every point of its ``grid`` list
    (default ``priors.TUNING_GRID``) refines the files whose start map ``v0`` (B, nz, nx) is of that set
    (``classify``), as ``refine`` would (keep-the-start rule included), and the point with the lowest
    MAE against ``truth`` is chosen. A set no file falls in (or with no points) keeps its defaults (not in ``chosen``).
    Returns ``{"chosen": {set: weights}, "scores": {set: [weights + mae]}, "start_mae": {set: mae},
    "files": {set: n}}``."""
    from .priors import TUNING_GRID
    from .refine_config import PRIOR_KEYS

    grid = TUNING_GRID if grid is None else grid
    fams = [classify(m) for m in v0.cpu().numpy()]
    result: dict = {"chosen": {}, "scores": {}, "start_mae": {}, "files": {}}
    for name, points in grid.items():
        idx = [i for i, f in enumerate(fams) if f == name]
        result["files"][name] = len(idx)
        if not idx or not points:
            log(f"tuning {name}: {'no grid' if idx else 'no validation file of this set'}; its default weights stay")
            continue
        result["start_mae"][name] = float((v0[idx] - truth[idx]).abs().mean())
        # each (point, file) pair is one map of a batch: a batch's loss is a sum of per-file terms
        pairs = [(p, i) for p in range(len(points)) for i in idx]
        err = torch.zeros(len(points), dtype=torch.float64)
        for s in range(0, len(pairs), cfg.batch_size):
            ps, ii = zip(*pairs[s:s + cfg.batch_size])
            w = torch.tensor([[float(points[p][key]) for key in PRIOR_KEYS] for p in ps])
            v, before, after = fwi(fwd, obs[list(ii)], v0[list(ii)], cfg, weights=w)
            if cfg.keep_start:
                v, _ = keep_start(v, v0[list(ii)], before, after)
            err.index_add_(0, torch.tensor(ps), (v - truth[list(ii)]).abs().mean(dim=(1, 2)).double().cpu())
        err /= len(idx)
        result["scores"][name] = [{**points[p], "mae": float(err[p])} for p in range(len(points))]
        best = int(err.argmin())
        result["chosen"][name] = {key: float(points[best][key]) for key in PRIOR_KEYS}
        log(f"tuning {name} on {len(idx)} files: MAE {result['start_mae'][name]:.1f} at the start, "
            f"{float(err[best]):.1f} m/s with {result['chosen'][name]}")
    return result


def tuned_weights(out: str, dataset: str, k: int, model: str, cfg: RefineConfig,
                  log: Callable[[str], None] = print) -> dict:
    """:func:`tune` on ``k`` samples of ``dataset`` started from ``model``'s maps, recorded in
    ``OUT.tuning.json`` (grid, scores, chosen weights, samples); an existing one is reused (resume)."""
    import json

    from . import backend
    from .priors import TUNING_GRID

    path = Path(out).with_name(Path(out).name + ".tuning.json")
    if path.is_file():
        result = json.loads(path.read_text())
        log(f"weights from {path} (an earlier attempt's tuning; delete it to tune again): {result['chosen']}")
        return result
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    fwd = backend(cfg.backend, device=device, **cfg.backend_options)
    x, v0, y, idx = validation_starts(dataset, k, model, cfg.device)
    as_t = lambda a: torch.from_numpy(np.asarray(a, np.float32)).to(device, fwd.dtype)
    log(f"tuning the priors' weights on {len(idx)} samples of {dataset} ({sum(map(len, TUNING_GRID.values()))} "
        f"grid points)")
    result = tune(fwd, as_t(x), as_t(np.clip(v0, VMIN, VMAX)), as_t(y), cfg, log=log)
    result.update(dataset=dataset, samples=idx, model=model, grid=TUNING_GRID,
                  settings={"backend": cfg.backend, "iterations": cfg.iterations, "bands": list(cfg.bands),
                            "lr": cfg.lr, "optimizer": cfg.optimizer, "scale_range": cfg.scale_range})
    with atomic_open(path) as f:
        json.dump(result, f, indent=1)
    return result
