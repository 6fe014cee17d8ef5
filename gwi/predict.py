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
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .progress import update as report_progress
from .data.layout import SEISMIC_SHAPE, VMAX, VMIN, discover_test
from .data.shards import MANIFEST, ShardedDataset
from .errors import DataError, GwiError
from .models import registry

COLUMNS = list(range(1, 70, 2))  # x_1, x_3, ..., x_69
HEADER = "oid_ypos," + ",".join(f"x_{c}" for c in COLUMNS)
ROWS = 70


# ------------------------------------------------------------------------------------------------
# loading models


@dataclass
class LoadedModel:
    name: str
    model: torch.nn.Module
    norm: "Normalizer"  # noqa: F821 - gwi.train.Normalizer
    source: str
    step: int | None
    split: str | None = None  # the validation split it was trained with


def load_checkpoint(ref: str, device: torch.device, *, use_ema: bool = True) -> LoadedModel:
    """A run URL (``.../runs/RUN``: its ``latest.json``, verified) or a ``.pt`` file/URL."""
    from .store import open_store, resolve_url
    from .train import Normalizer, RunStore

    ref = str(ref)
    if ref.endswith(".pt"):
        ref = resolve_url(ref)  # an offline mirror of the store (GWI_STORE_MAP) serves it
        p = Path(ref[len("file://"):] if ref.startswith("file://") else ref)
        if "://" in ref and not ref.startswith("file://"):
            base, _, name = ref.rpartition("/")
            tmp = RunStore(base).scratch / name
            open_store(base).get_file(name, tmp)
            p = tmp
        if not p.is_file():
            raise GwiError(f"checkpoint {ref}: no such file")
        try:
            ck = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is one clear error
            raise GwiError(f"checkpoint {ref}: cannot be loaded ({type(e).__name__}: {e})") from None
        source = ref
    else:
        run = RunStore(ref)
        ck, entry = run.load_latest(lambda msg: print(f"gwi: {msg}", file=sys.stderr))
        if ck is None:
            raise GwiError(f"{ref}: no usable checkpoint (expected checkpoints/latest.json in the run folder)")
        source = f"{ref.rstrip('/')}/{entry['path']}"
    if ck.get("format") != "gwi-checkpoint":
        raise GwiError(f"checkpoint {ref}: not a gwi checkpoint")
    name, args = ck["model"]["name"], ck["model"]["args"]
    model = registry.build_from_args(name, args)
    state = ck["ema"] if use_ema and ck.get("ema") else ck["state_dict"]
    model.load_state_dict(state)
    model.to(device).eval()
    n = ck["normalisation"]
    norm = Normalizer(n["seis_min"], n["seis_max"], n["vel_min"], n["vel_max"], n.get("vel_mean"))
    return LoadedModel(name, model, norm, source, ck.get("step"), ck.get("split"))


# ------------------------------------------------------------------------------------------------
# reading test data


class TestSource:
    """Test samples from a folder of ``<oid>.npy`` or a prepared (unlabelled) dataset folder/URL."""

    def __init__(self, ref: str, skip_bad: bool = False):
        self.skip_bad = skip_bad
        self.bad: list[tuple[str, str]] = []
        ref = str(ref)
        local = Path(ref[len("file://"):] if ref.startswith("file://") else ref)
        if "://" in ref and not ref.startswith("file://") or (local / MANIFEST).is_file():
            from .data.sync import pull

            root = pull(ref, progress=False) if "://" in ref and not ref.startswith("file://") else local
            self.ds = ShardedDataset(root)
            # a labelled dataset has no oids: its sample indices stand in (validation submissions)
            self.oids = list(self.ds.oids) if self.ds.oids is not None else [f"{i:06d}" for i in range(len(self.ds))]
            self.files = None
        else:
            self.ds = None
            self.files = discover_test(local)
            self.oids = [o for o, _ in self.files]

    def __len__(self) -> int:
        return len(self.oids)

    def families(self) -> list[str] | None:
        """Family of each sample when the input is a prepared dataset that records real ones."""
        if self.ds is None:
            return None
        fams = [str(f) for f in self.ds.families]
        return None if set(fams) == {"test"} else fams

    def _read(self, i: int) -> np.ndarray | None:
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
                a = self._read(i)
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


def flip_tta(x: torch.Tensor) -> torch.Tensor:
    """Mirror receivers and reverse the source order: the recording of the mirrored velocity map
    (approximately: sources sit at 17 and 52, not exactly symmetric)."""
    return x.flip(-1).flip(1)


def resolve_device_precision(device: str | None, precision: str | None) -> tuple[torch.device, str]:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if precision in (None, "auto"):
        precision = "fp16" if dev.type == "cuda" else "fp32"
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision: expected one of fp32, bf16, fp16, got {precision!r}")
    if dev.type == "cpu" and precision == "fp16":
        raise ValueError("precision: fp16 inference needs CUDA; on CPU use bf16 or fp32")
    return dev, precision


@torch.no_grad()
def predict_batch(models: list[LoadedModel], weights: list[float], x: np.ndarray, device, precision: str,
                  tta: bool = False) -> np.ndarray:
    """(B,5,1000,70) raw seismic → (B,70,70) float32 m/s, clipped to 1500–4500."""
    xt = torch.from_numpy(x).to(device)
    acc = None
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    for m, w in zip(models, weights):
        xn = m.norm.seismic(xt)  # each checkpoint's own normalisation constants
        views = [xn, flip_tta(xn)] if tta else [xn]
        outs = []
        for k, v in enumerate(views):
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                p = m.model(v)
            p = m.norm.denorm_velocity(p.float())  # (B, 1, 70, 70) float32 m/s
            outs.append(p.flip(-1) if k == 1 else p)
        p = torch.stack(outs).mean(0)
        acc = p * w if acc is None else acc + p * w
    return acc[:, 0].clamp(VMIN, VMAX).cpu().numpy().astype(np.float32)


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


def predict(checkpoints: list[str], test: str, out: str, *, weights: list[float] | None = None, tta: bool = False,
            precision: str | None = None, device: str | None = None, batch_size: int = 32, skip_bad: bool = False,
            ensemble: str | None = None, uncertainty: str | None = None, mc_samples: int = 8,
            plots: str | None = None, progress: bool | None = None, log=print) -> dict:
    """Write ``out`` (submission CSV); returns a summary (files, rows, bad files, seconds).

    ``ensemble``: an ``ensemble.json`` (members, weights, CRF) instead of ``checkpoints``.
    ``uncertainty``: also write MC-dropout per-pixel std (m/s) as ``.npy`` (N, 70, 70) float16, with
    the oids beside it in ``<file>.oids.json``.
    """
    import time
    from contextlib import nullcontext

    from tqdm import tqdm

    from .models.ensemble import crf_smooth, load_ensemble, mc_dropout_std, write_plots

    crf = None
    family_weights: dict = {}
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
    dev, precision = resolve_device_precision(device, precision)
    models = [load_checkpoint(c, dev) for c in checkpoints]
    if weights is None:
        weights = [1.0 / len(models)] * len(models)
    if len(weights) != len(models) or abs(sum(weights) - 1) > 1e-6:
        raise ValueError(f"weights: expected {len(models)} weights summing to 1, got {weights}")
    src = TestSource(test, skip_bad)
    fam_of = src.families()
    if family_weights and fam_of is not None and set(fam_of) <= set(family_weights):
        log(f"using per-family ensemble weights for {', '.join(sorted(set(fam_of)))}")
    else:
        if family_weights:
            log("the test input does not name families the ensemble has weights for: using the global weights")
        family_weights, fam_of = {}, None
    pos = 0
    log(f"predicting {len(src)} test samples with {len(models)} model(s) "
        f"({', '.join(m.name for m in models)}) on {dev} in {precision}" + (" with flip TTA" if tta else ""))
    fill = models[0].norm.vel_mean or (VMIN + VMAX) / 2
    out_p = Path(out)
    out_p.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_p.with_name(out_p.name + ".partial")
    unc = None
    if uncertainty:
        unc_p = Path(uncertainty)
        unc_p.parent.mkdir(parents=True, exist_ok=True)
        unc = np.lib.format.open_memmap(unc_p.with_name(unc_p.name + ".partial"), mode="w+", dtype=np.float16,
                                        shape=(len(src), ROWS, 70))
    plot_keep: list = []
    t0 = time.time()
    n = 0
    try:
        with open(tmp, "w", newline="") as f, tqdm(total=len(src), unit="file", desc="predict",
                                                    disable=None if progress is None else not progress) as bar:
            f.write(HEADER + "\n")
            for oids, x, ok in src.batches(batch_size):
                if family_weights:
                    bf = np.array(fam_of[pos:pos + len(oids)])
                    v = np.empty((len(oids), ROWS, 70), np.float32)
                    for fam in sorted(set(bf.tolist())):
                        sel = np.flatnonzero(bf == fam)
                        v[sel] = predict_batch(models, family_weights[fam], x[sel], dev, precision, tta)
                else:
                    v = predict_batch(models, weights, x, dev, precision, tta)
                pos += len(oids)
                if crf:
                    v = crf_smooth(torch.from_numpy(v), crf["lambda"], crf["sigma"]).numpy()
                v[~ok] = fill
                std = None
                if unc is not None or (plots and len(plot_keep) < 4):
                    xt = torch.from_numpy(x).to(dev)
                    std = sum(w * mc_dropout_std(m, xt, mc_samples, nullcontext) for m, w in zip(models, weights))
                    std = std.cpu().numpy()
                    if unc is not None:
                        unc[n:n + len(oids)] = std
                if plots and len(plot_keep) < 4:
                    plot_keep.extend((v[i], None if std is None else std[i], oids[i]) for i in range(min(4, len(oids))))
                f.write(rows_csv(oids, v))
                n += len(oids)
                bar.update(len(oids))
                report_progress(state="running", done=bar.n, total=len(src), unit="files")
        os.replace(tmp, out_p)
        if unc is not None:
            unc.flush()
            del unc
            os.replace(unc_p.with_name(unc_p.name + ".partial"), unc_p)
            unc_p.with_name(unc_p.name + ".oids.json").write_text(json.dumps(src.oids))
    except BaseException:
        tmp.unlink(missing_ok=True)
        if uncertainty:
            Path(uncertainty).with_name(Path(uncertainty).name + ".partial").unlink(missing_ok=True)
        raise
    if plots and plot_keep:
        keep = plot_keep[:4]
        pv = np.stack([k[0] for k in keep])
        ps = np.stack([k[1] for k in keep]) if keep[0][1] is not None else None
        write_plots(plots, pv, None, np.array(["test"] * len(pv)), ps, per_family=4, ids=[k[2] for k in keep])
    dt = time.time() - t0
    for oid, msg in src.bad:
        log(f"warning: {msg}; {oid} filled with the training mean {fill:.0f} m/s")
    return {"files": n, "rows": n * ROWS, "bad": [o for o, _ in src.bad], "seconds": dt,
            "files_per_s": n / dt if dt > 0 else None, "device": str(dev), "precision": precision,
            "models": [m.source for m in models]}


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
