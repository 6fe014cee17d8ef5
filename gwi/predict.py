"""``gwi predict`` and ``gwi submission check``: checkpoints → a valid Kaggle ``submission.csv``, offline.

The competition format (DESIGN.md §2): header ``oid_ypos,x_1,x_3,...,x_69`` (35 odd columns), then
70 rows per test file, id ``<oid>_y_<row>``, values in m/s. Prediction streams: test files are read
by a few threads ahead of the model, each batch's rows are written as soon as it is predicted, so
memory stays bounded for the full 65,818-file test set. The CSV is written to ``<out>.partial`` and
renamed at the end: a crash never leaves a truncated file that looks like a submission.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import postprocess
from .data.layout import SEISMIC_SHAPE, VMAX, VMIN, discover_test
from .data.shards import MANIFEST, ShardedDataset
from .errors import DataError
from .inference import predict_batch, resolve_device_precision
from .models.ensemble import crf_smooth, load_ensemble, mc_dropout_std, write_plots
from .progress import update as report_progress
from .runs import LoadedModel, load_model
from .sharding import shard_of

COLUMNS = list(range(1, 70, 2))  # x_1, x_3, ..., x_69
HEADER = "oid_ypos," + ",".join(f"x_{c}" for c in COLUMNS)
ROWS = 70


# ------------------------------------------------------------------------------------------------
# reading test data


class TestSource:
    """Test samples from a folder of ``<oid>.npy`` or a prepared (unlabelled) dataset folder/URL."""

    def __init__(self, ref: str, skip_bad: bool = False, shard: tuple[int, int] | None = None):
        self.skip_bad = skip_bad
        self.bad: list[tuple[str, str]] = []
        ref = str(ref)
        local = Path(ref[len("file://"):] if ref.startswith("file://") else ref)
        if "://" in ref and not ref.startswith("file://") or (local / MANIFEST).is_file():
            from .data.sync import pull

            root = pull(ref, progress=False) if "://" in ref and not ref.startswith("file://") else local
            self.ds = ShardedDataset(root)
            self.files = None
            # a labelled dataset has no oids: its sample indices stand in (validation submissions)
            oids = list(self.ds.oids) if self.ds.oids is not None else [f"{i:06d}" for i in range(len(self.ds))]
        else:
            self.ds = None
            self.files = discover_test(local)
            oids = [o for o, _ in self.files]
        # with ``shard`` (i, N): every N-th sample from the i-th; ``index`` maps to the whole source
        self.index = shard_of(list(range(len(oids))), shard)
        self.oids = [oids[j] for j in self.index]

    def __len__(self) -> int:
        return len(self.oids)

    def families(self) -> list[str] | None:
        """Family of each sample when the input is a prepared dataset that records real ones."""
        if self.ds is None:
            return None
        fams = [str(self.ds.families[j]) for j in self.index]
        return None if set(fams) <= {"test"} else fams

    def read(self, i: int) -> np.ndarray | None:
        i = self.index[i]
        if self.ds is not None:
            return np.asarray(self.ds[i][0], dtype=np.float32)
        oid, path = self.files[i]
        try:
            a = np.load(path, mmap_mode="r", allow_pickle=False)
            if tuple(a.shape) != SEISMIC_SHAPE:
                raise DataError(f"{path}: shape {tuple(a.shape)}, expected {SEISMIC_SHAPE}")
            a = np.asarray(a, dtype=np.float32)
            if not np.isfinite(a).all():
                raise DataError(f"{path}: holds NaN or Inf")
            return a
        except (DataError, ValueError, OSError, EOFError) as e:
            msg = str(e) if isinstance(e, DataError) else f"{path}: unreadable ({e})"
            if not self.skip_bad:
                raise DataError(msg + " (use --skip-bad to fill it with the training mean and go on)") from None
            self.bad.append((oid, msg))
            return None

    def batches(self, batch_size: int, workers: int = 4):
        """Yield ``(oids, x (B,5,1000,70) float32, ok mask)`` in order, reading ahead in threads."""
        def load(start: int):
            idx = range(start, min(start + batch_size, len(self)))
            x = np.zeros((len(idx), *SEISMIC_SHAPE), np.float32)
            ok = np.ones(len(idx), bool)
            for b, i in enumerate(idx):
                a = self.read(i)
                if a is None:
                    ok[b] = False
                else:
                    x[b] = a
            return [self.oids[i] for i in idx], x, ok

        starts = list(range(0, len(self), batch_size))
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            pending = [pool.submit(load, s) for s in starts[:workers + 1]]
            nxt = len(pending)
            while pending:
                f = pending.pop(0)
                if nxt < len(starts):
                    pending.append(pool.submit(load, starts[nxt]))
                    nxt += 1
                yield f.result()


# ------------------------------------------------------------------------------------------------
# prediction


def read_submission(path: str | os.PathLike, oids: list[str] | None = None) -> dict[str, np.ndarray]:
    """``{oid: (70, 70) float32 m/s}`` from a submission (``oids``: only those, each required). The
    file is checked first (every problem with its line); the even columns it does not hold are filled
    from their neighbours (x_0 from x_1), which is what refinement starts from."""
    summary, problems = check_submission(path)
    if problems:
        raise DataError(f"{path}: not a valid submission:\n  " + "\n  ".join(problems))
    want = None if oids is None else set(oids)
    out: dict[str, np.ndarray] = {}
    with open(path, newline="") as f:
        reader = csv.reader(f)
        next(reader)
        for rec in reader:
            oid, row = _ID.match(rec[0]).groups()
            if want is not None and oid not in want:
                continue
            m = out.setdefault(oid, np.zeros((ROWS, 70), np.float32))
            m[int(row), COLUMNS] = [float(v) for v in rec[1:]]
    if want is not None and want - set(out):
        missing = sorted(want - set(out))
        raise DataError(f"{path}: no rows for {len(missing)} test file(s): {', '.join(missing[:5])}"
                        f"{' ...' if len(missing) > 5 else ''}")
    for m in out.values():
        fill_even(m)
    return out


def fill_even(m: np.ndarray) -> np.ndarray:
    """A (70, 70) map holding a submission's odd columns, its even ones filled in place from their
    neighbours (x_0 from x_1, x_2 ... x_68 between their odd neighbours); returns it."""
    m[:, 0] = m[:, 1]
    m[:, 2:69:2] = 0.5 * (m[:, 1:68:2] + m[:, 3:70:2])
    return m


def rows_csv(oids: list[str], v: np.ndarray) -> str:
    """The submission rows for a batch: 70 per oid, odd columns only."""
    cols = v[:, :, COLUMNS]  # (B, 70, 35)
    buf = io.StringIO()
    fmt = ",".join(["%.2f"] * len(COLUMNS))
    for oid, m in zip(oids, cols):
        for r in range(ROWS):
            buf.write(f"{oid}_y_{r},")
            buf.write(fmt % tuple(m[r].tolist()))
            buf.write("\n")
    return buf.getvalue()


@dataclass
class Members:
    """The models that predict, their weights (global, and per family when the input names its
    families), the CRF that smooths their mean, and where and how they run."""

    models: list[LoadedModel]
    weights: list[float]
    family_weights: dict
    crf: dict | None
    device: torch.device
    precision: str
    tta: bool
    post: tuple = ()  # gwi.postprocess steps, after the CRF

    def velocity(self, x: np.ndarray, fams: list[str] | None) -> np.ndarray:
        """(B,5,1000,70) raw seismic → (B,70,70) m/s; ``fams`` (one per sample) picks family weights."""
        if fams is None:
            v = predict_batch(self.models, self.weights, x, self.device, self.precision, self.tta)
        else:
            bf = np.array(fams)
            v = np.empty((len(x), ROWS, 70), np.float32)
            for fam in sorted(set(bf.tolist())):
                sel = np.flatnonzero(bf == fam)
                v[sel] = predict_batch(self.models, self.family_weights[fam], x[sel], self.device, self.precision,
                                       self.tta)
        if self.crf:
            v = crf_smooth(torch.from_numpy(v), self.crf["lambda"], self.crf["sigma"]).numpy()
        return postprocess.apply(v, self.post)

    def std(self, x: np.ndarray, mc_samples: int) -> np.ndarray:
        """Weighted MC-dropout std (B,70,70) m/s."""
        xt = torch.from_numpy(x).to(self.device)
        std = sum(w * mc_dropout_std(m, xt, mc_samples, nullcontext) for m, w in zip(self.models, self.weights))
        return std.cpu().numpy()


def predict(checkpoints: list[str], test: str, out: str, *, weights: list[float] | None = None, tta: bool = False,
            precision: str | None = None, device: str | None = None, batch_size: int = 32, skip_bad: bool = False,
            ensemble: str | None = None, uncertainty: str | None = None, mc_samples: int = 8,
            plots: str | None = None, progress: bool | None = None, misfit: str | None = None,
            misfit_backend: str = "openfwi", shard: tuple[int, int] | None = None, post: str | None = None,
            log=print) -> dict:
    """Write ``out`` (submission CSV); returns a summary (files, rows, bad files, seconds).

    ``shard`` (i, N): only every N-th test file from the i-th (``gwi merge`` joins the parts).
    ``misfit``: also re-simulate every prediction with ``misfit_backend`` and write ``oid,misfit`` (the
    data misfit ``gwi refine`` starts from) to that CSV, so the worst files can be refined first.
    ``ensemble``: an ``ensemble.json`` (members, weights, CRF) instead of ``checkpoints``.
    ``uncertainty``: also write MC-dropout per-pixel std (m/s) as ``.npy`` (N, 70, 70) float16, with
    the oids beside it in ``<file>.oids.json``.
    ``post``: :mod:`gwi.postprocess` steps applied to every map (``plateau[:TOL]``).
    """
    from .console import progress as console_progress

    posts = postprocess.parse(post)  # a bad step fails before any model is loaded
    checkpoints, weights, crf, family_weights = chosen_members(checkpoints, weights, ensemble)
    dev, precision = resolve_device_precision(device, precision)
    models = [load_model(c, dev) for c in checkpoints]
    if weights is None:
        weights = [1.0 / len(models)] * len(models)
    if len(weights) != len(models) or abs(sum(weights) - 1) > 1e-6:
        raise ValueError(f"weights: expected {len(models)} weights summing to 1, got {weights}")
    src = TestSource(test, skip_bad, shard)
    fam_of, family_weights = _families(src, family_weights, log)
    members = Members(models, weights, family_weights, crf, dev, precision, tta, posts)
    log(f"predicting {len(src)} test samples with {len(models)} model(s) "
        f"({', '.join(m.name for m in models)}) on {dev} in {precision}" + (" with flip TTA" if tta else ""))
    fill = models[0].norm.vel_mean or (VMIN + VMAX) / 2
    fwd = None
    if misfit:
        from .physics import backend

        fwd = backend(misfit_backend, device=dev)
    t0 = time.time()
    with _partial_outputs(out, uncertainty, src.oids) as (f, unc), _misfit_file(misfit) as mf, \
            console_progress(len(src), "predict", unit="file", enabled=progress) as bar:
        n, plot_keep = 0, []
        for oids, x, ok in src.batches(batch_size):
            v = members.velocity(x, None if fam_of is None else fam_of[n:n + len(oids)])
            v[~ok] = fill
            std = None
            if unc is not None or (plots and len(plot_keep) < 4):
                std = members.std(x, mc_samples)
                if unc is not None:
                    unc[n:n + len(oids)] = std
            if plots and len(plot_keep) < 4:
                plot_keep.extend((v[i], None if std is None else std[i], oids[i]) for i in range(min(4, len(oids))))
            f.write(rows_csv(oids, v))
            if mf is not None:
                from .physics.misfit import RANK_BAND_HZ, file_misfit

                m = file_misfit(fwd, torch.from_numpy(v), torch.from_numpy(x), RANK_BAND_HZ).tolist()
                mf.write("".join(f"{o},{mi:.6g}\n" if ok_i else f"{o},nan\n" for o, mi, ok_i in zip(oids, m, ok)))
            n += len(oids)
            bar.update(len(oids))
            report_progress(state="running", done=bar.n, total=len(src), unit="files")
    if plots and plot_keep:
        _plot(plots, plot_keep[:4])
    dt = time.time() - t0
    for oid, msg in src.bad:
        log(f"warning: {msg}; {oid} filled with the training mean {fill:.0f} m/s")
    return {"files": n, "rows": n * ROWS, "bad": [o for o, _ in src.bad], "seconds": dt,
            "files_per_s": n / dt if dt > 0 else None, "device": str(dev), "precision": precision,
            "models": [m.source for m in models]}


def chosen_members(checkpoints: list[str], weights: list[float] | None, ensemble: str | None):
    """(checkpoints, weights, CRF or None, family weights) from the arguments or an ``ensemble.json``."""
    crf, family_weights = None, {}
    if ensemble:
        if checkpoints:
            raise ValueError("give --checkpoint or --ensemble, not both")
        e = load_ensemble(ensemble)
        checkpoints = [m["resolved"] for m in e["members"]]
        weights = [m["weight"] for m in e["members"]]
        crf = e["crf"] if e.get("crf", {}).get("enabled") else None
        family_weights = e.get("family_weights") or {}
    if not checkpoints:
        raise ValueError("checkpoints: expected at least one run or .pt file")
    return checkpoints, weights, crf, family_weights


def _families(src: TestSource, family_weights: dict, log) -> tuple[list[str] | None, dict]:
    """(family of each sample, family weights) when the input names families the ensemble has
    weights for; otherwise (None, {}): the global weights are used."""
    fam_of = src.families()
    if family_weights and fam_of is not None and set(fam_of) <= set(family_weights):
        log(f"using per-family ensemble weights for {', '.join(sorted(set(fam_of)))}")
        return fam_of, family_weights
    if family_weights:
        log("the test input does not name families the ensemble has weights for: using the global weights")
    return None, {}


def _partial(p: Path) -> Path:
    return p.with_name(p.name + ".partial")


@contextmanager
def _partial_outputs(out: str, uncertainty: str | None, oids: list[str]):
    """The CSV (header written) and the uncertainty memmap (or None) to fill, under ``.partial``
    names that are renamed when the block succeeds and removed when it fails."""
    out_p = Path(out)
    out_p.parent.mkdir(parents=True, exist_ok=True)
    tmp = _partial(out_p)
    unc_p = Path(uncertainty) if uncertainty else None
    unc = None
    if unc_p is not None:
        unc_p.parent.mkdir(parents=True, exist_ok=True)
        unc = np.lib.format.open_memmap(_partial(unc_p), mode="w+", dtype=np.float16, shape=(len(oids), ROWS, 70))
    try:
        with open(tmp, "w", newline="") as f:
            f.write(HEADER + "\n")
            yield f, unc
        os.replace(tmp, out_p)
        if unc is not None:
            unc.flush()
            del unc
            os.replace(_partial(unc_p), unc_p)
            unc_p.with_name(unc_p.name + ".oids.json").write_text(json.dumps(oids))
    except BaseException:
        tmp.unlink(missing_ok=True)
        if unc_p is not None:
            _partial(unc_p).unlink(missing_ok=True)
        raise


@contextmanager
def _misfit_file(path: str | None):
    """``oid,misfit`` lines into ``<path>.partial``, renamed when prediction succeeds (None: no file)."""
    if not path:
        yield None
        return
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = _partial(p)
    try:
        with open(tmp, "w", newline="") as f:
            f.write("oid,misfit\n")
            yield f
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _plot(folder: str, keep: list) -> None:
    pv = np.stack([k[0] for k in keep])
    ps = np.stack([k[1] for k in keep]) if keep[0][1] is not None else None
    write_plots(folder, pv, None, np.array(["test"] * len(pv)), ps, per_family=4, ids=[k[2] for k in keep])


# ------------------------------------------------------------------------------------------------
# checking a submission

_ID = re.compile(r"^(.+)_y_(\d+)$")


def check_submission(path: str | os.PathLike, test: str | None = None, max_report: int = 20) -> tuple[dict, list[str]]:
    """Validate a submission; returns (summary, problems). Problems name the line and what is wrong."""
    path = Path(path)
    problems: list[str] = []

    def bad(msg: str) -> None:
        if len(problems) < max_report:
            problems.append(msg)
        elif len(problems) == max_report:
            problems.append("... more problems not shown")

    if not path.is_file():
        return {}, [f"{path}: no such file"]
    rows_per: dict[str, set[int]] = {}
    order: list[str] = []
    lines = 0
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return {}, [f"{path}: empty file"]
        if ",".join(header) != HEADER:
            bad(f"line 1: header should be '{HEADER[:40]}...' (oid_ypos then x_1,x_3,...,x_69), "
                f"got '{','.join(header)[:60]}'")
        for ln, rec in enumerate(reader, start=2):
            lines += 1
            if len(rec) != 1 + len(COLUMNS):
                bad(f"line {ln}: {len(rec)} fields, expected {1 + len(COLUMNS)}")
                continue
            m = _ID.match(rec[0])
            if not m:
                bad(f"line {ln}: id {rec[0]!r} is not <oid>_y_<row>")
                continue
            oid, row = m.group(1), int(m.group(2))
            if row >= ROWS:
                bad(f"line {ln}: row {row} out of range 0..69 in {rec[0]!r}")
            seen = rows_per.setdefault(oid, set())
            if not seen:
                order.append(oid)
            if row in seen:
                bad(f"line {ln}: duplicate id {rec[0]!r}")
            seen.add(row)
            try:
                vals = [float(v) for v in rec[1:]]
            except ValueError:
                bad(f"line {ln}: non-numeric value in {rec[0]!r}")
                continue
            for c, v in zip(COLUMNS, vals):
                if not math.isfinite(v) or v < VMIN - 1 or v > VMAX + 1:
                    bad(f"line {ln}: x_{c} = {v} in {rec[0]!r} is outside {VMIN:.0f}-{VMAX:.0f} m/s")
                    break
    for oid in order:
        if len(rows_per[oid]) != ROWS:
            missing = sorted(set(range(ROWS)) - rows_per[oid])
            bad(f"oid {oid}: {len(rows_per[oid])} rows, expected 70 (missing {missing[:5]}{'...' if len(missing) > 5 else ''})")
    if test is not None:
        expected = {o for o, _ in discover_test(test)}
        got = set(rows_per)
        for o in sorted(expected - got)[:max_report]:
            bad(f"oid {o}: in the test folder but not in the submission")
        for o in sorted(got - expected)[:max_report]:
            bad(f"oid {o}: in the submission but not in the test folder")
    summary = {"rows": lines, "oids": len(rows_per)}
    return summary, problems
