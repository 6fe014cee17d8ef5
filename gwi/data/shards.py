"""float16 shards and their manifest: the one on-store format for datasets, written by ``prep`` and
``synth`` alike, read by training and prediction.

A dataset ``STORE/datasets/<name>/`` holds::

    manifest.json                         written last: a reader never sees missing shards
    shards/<build>/<family>-<k>.x.npy     (n, 5, T, 70) float16 seismic
    shards/<build>/<family>-<k>.y.npy     (n, 1, 70, 70) float16 velocity (absent for test data)

Shards are plain ``.npy`` so they memory-map. Each build writes under its own ``<build>`` folder, so
re-building a dataset (``--overwrite``) never touches the shards an existing manifest points at until
the new manifest has replaced it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import DataError, IntegrityError, StoreError
from ..store import FileStore, Store, open_store
from .layout import NT, SEISMIC_SHAPE, VELOCITY_SHAPE, VMAX, VMIN

FORMAT = "gwi-dataset"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
F16_MAX = float(np.finfo(np.float16).max)  # 65504
F16_TINY = float(np.finfo(np.float16).tiny)  # smallest normal: relative error is measured above it
HEADER_BYTES = 128  # fixed .npy header so a shard can be streamed before its length is known


# ------------------------------------------------------------------------------------------------
# normalisation (OpenFWI)


def log_transform(x):
    """OpenFWI's seismic transform ``log1p(|x|)·sign(x)``; numpy or torch."""
    if isinstance(x, np.ndarray) or np.isscalar(x):
        return np.sign(x) * np.log1p(np.abs(x))
    import torch

    return torch.sign(x) * torch.log1p(torch.abs(x))


def sha256_file(path: str | os.PathLike, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------
# streaming .npy writer


class NpyStreamWriter:
    """Appends samples to a ``.npy`` file whose first dimension is fixed only at :meth:`close`.

    The header is a fixed 128 bytes, rewritten at close with the final count, so samples stream to disk
    and memory stays bounded whatever the shard size.
    """

    def __init__(self, path: Path, sample_shape: tuple[int, ...], dtype=np.float16):
        self.path = Path(path)
        self.sample_shape = tuple(sample_shape)
        self.dtype = np.dtype(dtype)
        self.n = 0
        self._f = open(self.path, "wb")
        self._f.write(self._header(0))

    def _header(self, n: int) -> bytes:
        d = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
             "shape": (n, *self.sample_shape)}
        body = repr(d).encode("latin1")
        pre = b"\x93NUMPY\x01\x00"
        room = HEADER_BYTES - len(pre) - 2 - 1  # 2-byte length field, trailing newline
        if len(body) > room:
            raise ValueError(f"npy header too long for {d}")
        body = body + b" " * (room - len(body)) + b"\n"
        return pre + len(body).to_bytes(2, "little") + body

    def append(self, a: np.ndarray) -> None:
        if a.shape[1:] != self.sample_shape:
            raise ValueError(f"expected samples of shape {self.sample_shape}, got {a.shape[1:]}")
        self._f.write(np.ascontiguousarray(a, dtype=self.dtype).tobytes())
        self.n += a.shape[0]

    def close(self) -> None:
        self._f.seek(0)
        self._f.write(self._header(self.n))
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()

    def discard(self) -> None:
        if not self._f.closed:
            self._f.close()
        self.path.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------
# validation


def check_seismic(x: np.ndarray, src: str, first: int, time_samples: int = NT) -> None:
    """Stop on a wrong shape, NaN/Inf or a float16 overflow, naming ``src`` and the sample index."""
    expected = (SEISMIC_SHAPE[0], time_samples, SEISMIC_SHAPE[2])
    if x.ndim != 4 or tuple(x.shape[1:]) != expected:
        raise DataError(f"{src}: seismic shape {tuple(x.shape)}, expected (n, {', '.join(map(str, expected))})")
    flat = x.reshape(x.shape[0], -1)
    bad = ~np.isfinite(flat).all(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{src}: sample {first + i} holds NaN or Inf")
    amax = np.abs(flat).max(axis=1)
    over = amax > F16_MAX
    if over.any():
        i = int(np.argmax(over))
        raise DataError(
            f"{src}: sample {first + i} has |value| {float(amax[i]):.6g} > {F16_MAX:g}, which overflows float16"
        )


def coerce_velocity(y: np.ndarray, src: str) -> np.ndarray:
    """(n,70,70) or (n,1,70,70) → (n,1,70,70); anything else is an error naming the file."""
    if y.ndim == 3 and tuple(y.shape[1:]) == VELOCITY_SHAPE[1:]:
        return y[:, None]
    if y.ndim == 4 and tuple(y.shape[1:]) == VELOCITY_SHAPE:
        return y
    raise DataError(f"{src}: velocity shape {tuple(y.shape)}, expected (n, 1, 70, 70) or (n, 70, 70)")


def check_velocity(y: np.ndarray, src: str, first: int, tol: float) -> None:
    flat = y.reshape(y.shape[0], -1)
    bad = ~np.isfinite(flat).all(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{src}: sample {first + i} holds NaN or Inf")
    lo, hi = flat.min(axis=1), flat.max(axis=1)
    out = (lo < VMIN - tol) | (hi > VMAX + tol)
    if out.any():
        i = int(np.argmax(out))
        raise DataError(
            f"{src}: sample {first + i} has velocity {float(lo[i]):.1f}..{float(hi[i]):.1f} m/s, outside "
            f"{VMIN:.0f}-{VMAX:.0f} m/s (tolerance {tol:g})"
        )


# ------------------------------------------------------------------------------------------------
# time decimation


@dataclass
class Decimator:
    """Zero-phase anti-alias low-pass, then keep every K-th time sample.

    Zero phase (``sosfiltfilt``) keeps arrival times where they were: a shifted first break is a
    velocity error to the network. The cut-off sits at 0.8 of the new Nyquist, like ``scipy.signal
    .decimate``. The energy above the new Nyquist is measured before filtering, per dataset.
    """

    factor: int
    dt: float = 1e-3
    energy_total: float = 0.0  # spectral units (sum of |rfft|²)
    energy_above: float = 0.0
    energy_time: float = 0.0  # time-domain units (sum of x²), for the filter's share
    energy_removed: float = 0.0

    def __post_init__(self):
        from scipy import signal

        if not isinstance(self.factor, int) or self.factor < 2:
            raise ValueError(f"time decimation factor: expected an integer >= 2, got {self.factor!r}")
        self.sos = signal.cheby1(8, 0.05, 0.8 / self.factor, output="sos")

    def __call__(self, x: np.ndarray) -> np.ndarray:  # (n, 5, T, 70) -> (n, 5, T // K, 70)
        from scipy import signal

        x64 = x.astype(np.float64)
        spec = np.abs(np.fft.rfft(x64, axis=2)) ** 2
        freqs = np.fft.rfftfreq(x.shape[2], d=self.dt)
        nyq_new = 0.5 / (self.dt * self.factor)
        self.energy_total += float(spec.sum())
        self.energy_above += float(spec[:, :, freqs > nyq_new].sum())
        y = signal.sosfiltfilt(self.sos, x64, axis=2)
        self.energy_time += float((x64**2).sum())
        self.energy_removed += float(((x64 - y) ** 2).sum())
        return y[:, :, :: self.factor].astype(np.float32)

    def report(self) -> dict:
        tot = max(self.energy_total, 1e-300)
        return {
            "factor": self.factor,
            "dt_s": self.dt * self.factor,
            "nyquist_hz": 0.5 / (self.dt * self.factor),
            "filter": "Chebyshev-I order 8, 0.05 dB ripple, cut-off 0.8×new Nyquist, zero-phase (sosfiltfilt)",
            "energy_above_new_nyquist_fraction": self.energy_above / tot,
            "energy_removed_by_filter_fraction": self.energy_removed / max(self.energy_time, 1e-300),
        }


# ------------------------------------------------------------------------------------------------
# writer


@dataclass
class _FamilyStats:
    samples: int = 0
    x_min: float = float("inf")
    x_max: float = float("-inf")
    y_sum: float = 0.0
    y_count: int = 0
    y_min: float = float("inf")
    y_max: float = float("-inf")


@dataclass
class _OpenShard:
    family: str
    index: int
    x: NpyStreamWriter
    y: NpyStreamWriter | None
    sources: list = field(default_factory=list)
    oids: list | None = None
    first_sample: int = 0


class DatasetWriter:
    """Streams validated samples into float16 shards in a store, then publishes the manifest.

    Use as a context manager: an exception removes everything this build wrote, so a failed run
    leaves neither a manifest nor orphan shards, and an existing dataset of the same name is intact.
    """

    def __init__(
        self,
        store_url: str,
        name: str,
        *,
        source: dict,
        labelled: bool = True,
        shard_size: int = 500,
        overwrite: bool = False,
        time_decimate: int = 1,
        velocity_tolerance: float = 1.0,
        extra: dict | None = None,
        part: str | None = None,
    ):
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"dataset name: expected a plain name like 'kaggle-train-f16', got {name!r}")
        if not isinstance(shard_size, int) or shard_size < 1:
            raise ValueError(f"shard size: expected a positive integer, got {shard_size!r}")
        self.store = open_store(store_url).child(f"datasets/{name}")
        self.name = name
        # a part (``--shard i/N``) publishes its own manifest; ``merge_parts`` joins them into the dataset's
        self.key = part_key(part)
        self.previous = None
        if self.store.exists(self.key):
            if not overwrite:
                raise DataError(
                    f"{'part ' + part + ' of ' if part else ''}dataset {self.store.url} already exists; pass "
                    "--overwrite to replace it (the old one stays readable until the new manifest is published)"
                )
            self.previous = json.loads(self.store.get_bytes(self.key))
        self.source = source
        self.labelled = labelled
        self.shard_size = shard_size
        self.tol = float(velocity_tolerance)
        self.extra = extra or {}
        self.decimator = Decimator(time_decimate) if time_decimate and time_decimate > 1 else None
        self.time_samples = NT // time_decimate if self.decimator else NT
        self.build = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        # stage next to the destination when it is a folder, so publishing a shard is a rename
        if isinstance(self.store, FileStore):
            self.store.path("").mkdir(parents=True, exist_ok=True)
            self.staging = Path(tempfile.mkdtemp(prefix=f".build-{self.build}-", dir=self.store.path("")))
        else:
            self.staging = Path(tempfile.mkdtemp(prefix=f"gwi-build-{self.build}-"))
        self.shards: list[dict] = []
        self.stats: dict[str, _FamilyStats] = {}
        self.err = {"x": [0.0, 0.0], "y": [0.0, 0.0]}  # [max_abs, max_rel]
        self.open: dict[str, _OpenShard] = {}
        self._uploads: list[Future] = []
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="gwi-upload")
        self._written_keys: list[str] = []
        self.manifest: dict | None = None

    # -- public API ------------------------------------------------------------------------------

    def add(self, family: str, x: np.ndarray, y: np.ndarray | None, *, src: str, first: int = 0,
            y_src: str | None = None, oids: list[str] | None = None) -> None:
        """Validate and append samples ``x`` (n,5,1000,70) and ``y`` (n,1,70,70) of one family.

        ``src``/``first`` name the file and the index of ``x[0]`` in it, for error messages.
        """
        check_seismic(x, src, first)
        n = x.shape[0]
        if self.labelled:
            if y is None:
                raise DataError(f"{src}: labelled dataset but no velocity given")
            y_src = y_src or src
            y = coerce_velocity(y, y_src)
            if y.shape[0] != n:
                raise DataError(f"{y_src}: {y.shape[0]} velocity samples, but {src} has {n} seismic samples")
            check_velocity(y, y_src, first, self.tol)
        if oids is not None and len(oids) != n:
            raise ValueError(f"expected {n} oids, got {len(oids)}")

        st = self.stats.setdefault(family, _FamilyStats())
        xf = np.asarray(x, dtype=np.float32)
        if self.decimator is not None:
            xf = self.decimator(xf)
        st.x_min = min(st.x_min, float(xf.min()))
        st.x_max = max(st.x_max, float(xf.max()))
        x16 = xf.astype(np.float16)
        self._track_error("x", xf, x16)
        y16 = None
        if self.labelled:
            yf = np.asarray(y, dtype=np.float32)
            y16 = yf.astype(np.float16)
            self._track_error("y", yf, y16)
            st.y_sum += float(yf.sum(dtype=np.float64))
            st.y_count += yf.size
            st.y_min, st.y_max = min(st.y_min, float(yf.min())), max(st.y_max, float(yf.max()))

        done = 0
        while done < n:
            sh = self._shard(family)
            take = min(n - done, self.shard_size - sh.x.n)
            sh.x.append(x16[done:done + take])
            if sh.y is not None:
                sh.y.append(y16[done:done + take])
            sh.sources.append({"file": src, "first": first + done, "count": take})
            if sh.oids is not None:
                sh.oids.extend(oids[done:done + take])
            done += take
            if sh.x.n >= self.shard_size:
                self._close_shard(family)
        st.samples += n

    def finish(self) -> dict:
        """Close open shards, wait for uploads, publish ``manifest.json``; returns the manifest."""
        for fam in list(self.open):
            self._close_shard(fam)
        for f in self._uploads:
            f.result()
        self._pool.shutdown()
        if not self.shards:
            raise DataError(f"dataset {self.name}: no samples were written")
        manifest = self._manifest()
        self.store.put_bytes(self.key, json.dumps(manifest, indent=1).encode())
        shutil.rmtree(self.staging, ignore_errors=True)
        if self.previous:
            # the new manifest is live: shards only the old one referenced can go
            keep = {s["path"] for s in manifest["shards"]}
            for s in self.previous.get("shards", []):
                if s["path"] not in keep:
                    try:
                        self.store.delete(s["path"])
                    except StoreError:
                        pass
        self.manifest = manifest
        return manifest

    def abort(self) -> None:
        for sh in self.open.values():
            sh.x.discard()
            if sh.y is not None:
                sh.y.discard()
        self.open.clear()
        for f in self._uploads:
            try:
                f.result()
            except Exception:  # noqa: BLE001 - we are cleaning up after the first error
                pass
        self._pool.shutdown()
        try:
            self.store.delete_prefix(f"shards/{self.build}")
        except StoreError:
            pass
        shutil.rmtree(self.staging, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, et, ev, tb):
        if et is not None:
            self.abort()
        return False

    # -- internals -------------------------------------------------------------------------------

    def _track_error(self, kind: str, a: np.ndarray, a16: np.ndarray) -> None:
        diff = a16.astype(np.float32)
        np.subtract(diff, a, out=diff)
        np.abs(diff, out=diff)
        self.err[kind][0] = max(self.err[kind][0], float(diff.max(initial=0.0)))
        # relative error above float16's smallest normal; below it the spacing is absolute.
        # In place, without boolean-mask gathers: they dominated prep time.
        mag = np.abs(a)
        mag[mag < F16_TINY] = np.inf
        np.divide(diff, mag, out=diff)
        self.err[kind][1] = max(self.err[kind][1], float(diff.max(initial=0.0)))

    def _shard(self, family: str) -> _OpenShard:
        sh = self.open.get(family)
        if sh is None:
            k = sum(1 for s in self.shards if s["family"] == family and s["kind"] == "x")
            base = self.staging / f"{family}-{k:05d}"
            xw = NpyStreamWriter(base.with_suffix(".x.npy"), (SEISMIC_SHAPE[0], self.time_samples, SEISMIC_SHAPE[2]))
            yw = NpyStreamWriter(base.with_suffix(".y.npy"), VELOCITY_SHAPE) if self.labelled else None
            oids = [] if not self.labelled else None
            # samples already in closed shards of this family precede this one
            first = sum(s["samples"] for s in self.shards if s["family"] == family and s["kind"] == "x")
            sh = _OpenShard(family, k, xw, yw, oids=oids, first_sample=first)
            self.open[family] = sh
        return sh

    def _close_shard(self, family: str) -> None:
        sh = self.open.pop(family)
        for kind, w in (("x", sh.x), ("y", sh.y)):
            if w is None:
                continue
            w.close()
            rel = f"shards/{self.build}/{w.path.name}"
            entry = {
                "path": rel,
                "family": family,
                "kind": kind,
                "shape": [w.n, *w.sample_shape],
                "dtype": "float16",
                "sha256": sha256_file(w.path),
                "bytes": w.path.stat().st_size,
                "samples": w.n,
                "first_sample": sh.first_sample,
                "sources": sh.sources,
            }
            if kind == "x" and sh.oids is not None:
                entry["oids"] = sh.oids
            self.shards.append(entry)
            self._written_keys.append(rel)
            self._uploads.append(self._pool.submit(self.store.put_file, w.path, rel, move=True))
        # bound local disk: never more than a few shards waiting for upload
        while sum(not f.done() for f in self._uploads) > 4:
            next(f for f in self._uploads if not f.done()).result()
        for f in self._uploads:
            if f.done() and f.exception() is not None:
                raise f.exception()

    def _manifest(self) -> dict:
        fams = {}
        for fam, st in sorted(self.stats.items()):
            d = {"samples": st.samples}
            if self.labelled and st.y_count:
                d["velocity_mean"] = st.y_sum / st.y_count
                d["velocity_min"], d["velocity_max"] = st.y_min, st.y_max
            fams[fam] = d
        per_family = {
            fam: {"min": float(log_transform(st.x_min)), "max": float(log_transform(st.x_max)),
                  "raw_min": st.x_min, "raw_max": st.x_max}
            for fam, st in sorted(self.stats.items())
        }
        gmin = min(st.x_min for st in self.stats.values())
        gmax = max(st.x_max for st in self.stats.values())
        total_y = sum(st.y_count for st in self.stats.values())
        m = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "build": self.build,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "gwi_version": __version__,
            "host": socket.gethostname(),
            "source": self.source,
            "labelled": self.labelled,
            "num_samples": sum(st.samples for st in self.stats.values()),
            "families": fams,
            "seismic_shape": [SEISMIC_SHAPE[0], self.time_samples, SEISMIC_SHAPE[2]],
            "velocity_shape": list(VELOCITY_SHAPE) if self.labelled else None,
            "dt_s": 1e-3 * (self.decimator.factor if self.decimator else 1),
            "normalisation": {
                "seismic": {
                    "transform": "sign(x)*log1p(|x|), then min-max to [-1, 1]",
                    "per_family": per_family,
                    "global": {"min": float(log_transform(gmin)), "max": float(log_transform(gmax)),
                               "raw_min": gmin, "raw_max": gmax},
                },
                "velocity": {"min": VMIN, "max": VMAX,
                             "mean": (sum(st.y_sum for st in self.stats.values()) / total_y) if total_y else None},
            },
            "float16_error": {
                kind: {"max_abs": e[0], "max_rel": e[1], "rel_measured_above": F16_TINY}
                for kind, e in self.err.items() if kind == "x" or self.labelled
            },
            "time_decimation": self.decimator.report() if self.decimator else None,
            "shards": self.shards,
        }
        m.update(self.extra)
        return m


# ------------------------------------------------------------------------------------------------
# parts: one dataset written by several attempts (``--shard i/N``)


def part_key(part: str | None) -> str:
    """Where a part's manifest lives in the dataset folder (``None``: the dataset's own manifest)."""
    return f"parts/{part}.json" if part else MANIFEST


def existing_dataset(out: str, name: str, want: dict, part: str | None = None,
                     defaults: dict | None = None) -> dict | None:
    """The manifest of dataset ``name`` (or of its ``part``) in store ``out`` when one was made with the
    settings ``want`` (keys of its ``source``; ``defaults`` for keys older manifests lack): a rerun job
    has nothing to do. ``None`` when there is none; an error naming the differences otherwise."""
    store = open_store(out).child(f"datasets/{name}")
    key = part_key(part)
    try:
        if not store.exists(key):
            return None
    except StoreError:
        return None
    m = parse_manifest(store.get_bytes(key), store.key_url(key))
    have, defaults = m.get("source", {}), defaults or {}
    diff = {k: (have.get(k, defaults.get(k)), v) for k, v in want.items() if have.get(k, defaults.get(k)) != v}
    if diff:
        raise ValueError(f"{'part ' + part + ' of ' if part else ''}dataset {name} exists in {out} with other "
                         "settings (" + ", ".join(f"{k}: {a!r} there, {b!r} asked" for k, (a, b) in diff.items())
                         + "); use --overwrite or another --name")
    return m


def merge_parts(out: str, name: str, parts: int, *, overwrite: bool = False) -> dict:
    """Join the manifests of parts ``1-of-N`` ... ``N-of-N`` of dataset ``name`` into its manifest: every
    part must be there and made with the same settings. Shards stay where the parts wrote them. A
    manifest already joined from these very parts is returned as it is (a rerun job)."""
    if not isinstance(parts, int) or parts < 1:
        raise ValueError(f"parts: expected a positive integer, got {parts!r}")
    store = open_store(out).child(f"datasets/{name}")
    keys = [part_key(f"{i}-of-{parts}") for i in range(1, parts + 1)]
    missing = [str(i) for i, k in enumerate(keys, 1) if not store.exists(k)]
    if missing:
        found = sorted(k[len("parts/"):-len(".json")] for k in store.list("parts/") if k.endswith(".json"))
        raise DataError(f"dataset {store.url}: part(s) {', '.join(missing)} of {parts} are missing "
                        f"(parts/<i>-of-{parts}.json); found: {', '.join(found) or 'no parts'}")
    ms = [parse_manifest(store.get_bytes(k), store.key_url(k)) for k in keys]
    builds = [m["build"] for m in ms]
    if store.exists(MANIFEST):
        old = parse_manifest(store.get_bytes(MANIFEST), store.key_url(MANIFEST))
        if old.get("merged_from") == builds:
            return old
        if not overwrite:
            raise DataError(f"dataset {store.url} already exists; pass --overwrite to replace it with its parts")
    first = ms[0]
    common = {k: v for k, v in first["source"].items() if k not in ("shard", "device")}
    for k, m in zip(keys, ms):
        for f in ("labelled", "seismic_shape", "velocity_shape", "dt_s"):
            if m.get(f) != first.get(f):
                raise DataError(f"{store.key_url(k)}: {f} is {m.get(f)!r}, part 1 has {first.get(f)!r}")
        for f, v in common.items():
            if m["source"].get(f) != v:
                raise DataError(f"{store.key_url(k)}: source.{f} is {m['source'].get(f)!r}, part 1 has {v!r}; "
                                "the parts were made by different commands")
    merged = _joined(ms)
    merged.update(name=name, build="merged-" + uuid.uuid4().hex[:6], created=time.strftime("%Y-%m-%dT%H:%M:%SZ",
                  time.gmtime()), gwi_version=__version__, host=socket.gethostname(),
                  source={**common, "parts": parts}, merged_from=builds)
    store.put_bytes(MANIFEST, json.dumps(merged, indent=1).encode())
    return merged


def _joined(ms: list[dict]) -> dict:
    """One manifest holding the shards of ``ms`` in order, with their statistics combined."""
    out = json.loads(json.dumps(ms[0]))
    fams: dict[str, dict] = {}
    seen: dict[str, int] = {}  # samples of each family in earlier parts: the next part's shards follow them
    shards = []
    for m in ms:
        for fam, d in m["families"].items():
            f = fams.setdefault(fam, {"samples": 0})
            if "velocity_mean" in d:
                n = f["samples"] + d["samples"]
                f["velocity_mean"] = (f.get("velocity_mean", 0.0) * f["samples"] + d["velocity_mean"] * d["samples"]) / n
                f["velocity_min"] = min(f.get("velocity_min", VMAX), d["velocity_min"])
                f["velocity_max"] = max(f.get("velocity_max", VMIN), d["velocity_max"])
            f["samples"] += d["samples"]
        for s in m["shards"]:
            shards.append({**s, "first_sample": s.get("first_sample", 0) + seen.get(s["family"], 0)})
        for fam, d in m["families"].items():
            seen[fam] = seen.get(fam, 0) + d["samples"]
    seis = out["normalisation"]["seismic"]
    per = {}
    for m in ms:
        for fam, d in m["normalisation"]["seismic"]["per_family"].items():
            p = per.setdefault(fam, {"raw_min": d["raw_min"], "raw_max": d["raw_max"]})
            p["raw_min"], p["raw_max"] = min(p["raw_min"], d["raw_min"]), max(p["raw_max"], d["raw_max"])
    for p in per.values():
        p["min"], p["max"] = float(log_transform(p["raw_min"])), float(log_transform(p["raw_max"]))
    gmin, gmax = min(p["raw_min"] for p in per.values()), max(p["raw_max"] for p in per.values())
    seis["per_family"] = dict(sorted(per.items()))
    seis["global"] = {"min": float(log_transform(gmin)), "max": float(log_transform(gmax)), "raw_min": gmin,
                      "raw_max": gmax}
    total = sum(f["samples"] for f in fams.values())
    if out["normalisation"]["velocity"].get("mean") is not None:
        out["normalisation"]["velocity"]["mean"] = sum(
            f["velocity_mean"] * f["samples"] for f in fams.values()) / total
    for kind, e in out["float16_error"].items():
        for k in ("max_abs", "max_rel"):
            e[k] = max(m["float16_error"][kind][k] for m in ms)
    out.update(families=dict(sorted(fams.items())), num_samples=total, shards=shards)
    return out


# ------------------------------------------------------------------------------------------------
# reading


REQUIRED_SHARD_KEYS = ("path", "family", "kind", "shape", "dtype", "sha256")


def parse_manifest(data: bytes | str, where: str) -> dict:
    """Load and check a manifest; errors name ``where`` and the field."""
    try:
        m = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise DataError(f"{where}: not a gwi dataset manifest (field 'format' should be {FORMAT!r})")
    if m.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{where}: format_version {m.get('format_version')!r}, this gwi reads {FORMAT_VERSION}; upgrade gwi"
        )
    for key, kind in (("name", str), ("num_samples", int), ("families", dict), ("seismic_shape", list),
                      ("normalisation", dict)):
        if not isinstance(m.get(key), kind):
            got = "missing" if key not in m else f"a {type(m[key]).__name__}"
            raise DataError(f"{where}: field {key!r} should be a {kind.__name__}, got {got}")
    shards = m.get("shards")
    if not isinstance(shards, list) or not shards:
        raise DataError(f"{where}: field 'shards' should be a non-empty list")
    for i, s in enumerate(shards):
        missing = [k for k in REQUIRED_SHARD_KEYS if k not in s]
        if missing:
            raise DataError(f"{where}: shards[{i}] lacks {', '.join(missing)}")
        if s["kind"] not in ("x", "y"):
            raise DataError(f"{where}: shards[{i}].kind is {s['kind']!r}, expected 'x' or 'y'")
        if ".." in Path(s["path"]).parts or s["path"].startswith("/"):
            raise DataError(f"{where}: shards[{i}].path {s['path']!r} leaves the dataset folder")
    return m


def load_manifest(store_or_dir: Store | str | os.PathLike) -> dict:
    if isinstance(store_or_dir, Store):
        return parse_manifest(store_or_dir.get_bytes(MANIFEST), store_or_dir.key_url(MANIFEST))
    p = Path(store_or_dir) / MANIFEST
    if not p.is_file():
        raise DataError(f"{p}: no manifest; is {store_or_dir} a gwi dataset?")
    return parse_manifest(p.read_bytes(), str(p))


def x_shards(manifest: dict) -> list[dict]:
    """Seismic shards in sample order (the order every index in gwi refers to)."""
    return [s for s in manifest["shards"] if s["kind"] == "x"]


def y_shard_for(manifest: dict, xs: dict) -> dict | None:
    want = xs["path"][: -len(".x.npy")] + ".y.npy"
    for s in manifest["shards"]:
        if s["kind"] == "y" and s["path"] == want:
            return s
    return None


class ShardedDataset:
    """Memory-mapped samples of a dataset folder on local disk (see :func:`gwi.data.sync.pull`).

    ``ds[i]`` is ``(x, y, family)`` with x a float16 view (5, T, 70) and y (1, 70, 70) or ``None``;
    nothing is read until a sample is touched, so a 65 GB dataset opens instantly.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.manifest = load_manifest(self.root)
        self._x, self._y, fams, oids = [], [], [], []
        self.offsets = [0]
        for xs in x_shards(self.manifest):
            ys = y_shard_for(self.manifest, xs)
            if self.manifest.get("labelled", True) and ys is None:
                raise DataError(f"{self.root / MANIFEST}: shard {xs['path']} has no matching velocity shard")
            self._x.append(self._open(xs))
            self._y.append(self._open(ys) if ys else None)
            n = self._x[-1].shape[0]
            if ys is not None and self._y[-1].shape[0] != n:
                raise IntegrityError(f"{ys['path']}: {self._y[-1].shape[0]} samples, seismic shard has {n}")
            fams.extend([xs["family"]] * n)
            oids.extend(xs.get("oids") or [None] * n)
            self.offsets.append(self.offsets[-1] + n)
        self.families = np.array(fams)
        self.oids = oids if any(o is not None for o in oids) else None

    def _open(self, s: dict) -> np.ndarray:
        p = self.root / s["path"]
        try:
            a = np.load(p, mmap_mode="r")
        except FileNotFoundError:
            raise IntegrityError(f"{p}: shard listed in the manifest is missing") from None
        except ValueError as e:
            raise IntegrityError(f"{p}: unreadable shard ({e})") from None
        if list(a.shape) != list(s["shape"]) or str(a.dtype) != s["dtype"]:
            raise IntegrityError(f"{p}: shape {a.shape} {a.dtype}, manifest says {s['shape']} {s['dtype']}")
        return a

    def __len__(self) -> int:
        return self.offsets[-1]

    def locate(self, i: int) -> tuple[int, int]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample {i} out of range for {len(self)} samples")
        i %= len(self)
        k = int(np.searchsorted(self.offsets, i, side="right") - 1)
        return k, i - self.offsets[k]

    def __getitem__(self, i: int):
        k, j = self.locate(i)
        y = self._y[k][j] if self._y[k] is not None else None
        return self._x[k][j], y, str(self.families[i])

    def batch(self, idx, dtype=np.float32, flip=None) -> tuple[np.ndarray, np.ndarray | None]:
        """Gather samples (any order) into arrays ``(B,5,T,70)``, ``(B,1,70,70)`` of ``dtype``.

        ``float16`` skips the conversion: training converts on the device, moving half the bytes.
        ``flip`` (one bool per sample) reads those samples mirrored, as :func:`gwi.inference.flip_seismic`
        and ``flip_velocity`` would make them (receivers and the order of the five sources reversed, the
        map left-right), in the same copy: a strided read costs ~1 ms a batch on a CPU, flipping the
        batch afterwards took 6-25 ms.
        """
        idx = np.asarray(idx)
        flip = np.zeros(len(idx), bool) if flip is None else np.asarray(flip, bool)
        if flip.shape != idx.shape:
            raise ValueError(f"flip: expected one flag per sample, shape {idx.shape}, got shape {flip.shape}")
        xs = np.empty((len(idx), *self._x[0].shape[1:]), dtype)
        ys = np.empty((len(idx), *VELOCITY_SHAPE), dtype) if self._y[0] is not None else None
        for b, (i, f) in enumerate(zip(idx, flip)):
            k, j = self.locate(int(i))
            xs[b] = self._x[k][j, ::-1, :, ::-1] if f else self._x[k][j]  # (5, T, 70)
            if ys is not None:
                ys[b] = self._y[k][j, ..., ::-1] if f else self._y[k][j]  # (1, 70, 70)
        return xs, ys
