"""Data-path benchmark: gwi's synth, prep and pull against the bare tool each one wraps, and
training from a stream (issue 25) against training from a pulled copy.

    .venv/bin/python bench/data.py [--quick] [--only stream]

Everything runs in this one process on the same data. Each gwi run is paired with a baseline run
right before or after it (the order swaps every repeat), and a ratio is the median over the pairs of
gwi speed / baseline speed: a burst of load from another process then spoils one pair, not the
result. The speed columns are each side's median. Progress goes to stderr; stdout holds only the
header and the result table. The exit status is 1 when a benchmark misses its target.

The streaming section puts a dataset 5x the cache limit in the moto S3 store, then times
``gwi.training.train`` (tiny inversionnet, CPU, ``max_steps`` fixed, no EMA) reading it through the
bounded cache (``--cache-limit`` = a fifth of its size) against the same run on a pulled copy
(``cache_limit="none"``), from the loop's own ``loop_samples / loop_s`` so start-up, the pull and
validation are not in it. While the streamed runs train, the stream folder's bytes are sampled every
second and every 50 ms (by child processes): the peak must stay within the limit plus one shard. Each
run's line under the table says what the cache did in the loop (seconds the reader waited in
``ShardCache.open``, shards fetched against shards read: more fetched than read plus the few
prefetched ahead means re-fetches) and the CPU the S3 server used meanwhile (it shares this machine's
cores with the training; a remote store would not). Last, the cache alone fetches every shard
(``ShardCache.prefetch`` with room for all, its default threads) against ``aws s3 cp --recursive``.
``--set FIELD=INT`` changes one size of the chosen Config, e.g. ``--only stream --set
stream_limit_shards=5 --set stream_shard_size=6`` for the smallest limit the cache admits at window 4.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Self

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import busy_text, load_text, machine_lines, scratch_home  # noqa: E402

MB = 1e6  # decimal megabytes, like `aws` and most disk tools report


@dataclass
class Config:
    synth_batch: int
    synth_repeats: int
    synth_e2e_samples: int
    synth_e2e_repeats: int
    prep_samples: int
    prep_file_samples: int
    prep_repeats: int
    shard_size: int
    pull_repeats: int
    # streaming (issue 25): a dataset of 5 x stream_limit_shards shards of stream_shard_size samples,
    # streamed through a cache of stream_limit_shards shards, stream_window shards shuffled together
    # (the cache admits a limit of stream_window + 1 shards or more)
    stream_shard_size: int = 4
    stream_limit_shards: int = 2
    stream_window: int = 1
    stream_batch: int = 4
    stream_steps: int = 8  # max_steps of each training run (FULL, QUICK: one epoch of the training split)
    stream_repeats: int = 2  # pairs of (streamed, pulled) runs
    prefetch_repeats: int = 2


# shard sizes are smaller than gwi's default 500 so a few hundred MB still spans several shards, as a
# real dataset does, and pull's per-shard parallelism is exercised
FULL = Config(synth_batch=16, synth_repeats=5, synth_e2e_samples=32, synth_e2e_repeats=3,
              prep_samples=400, prep_file_samples=100, prep_repeats=3, shard_size=100, pull_repeats=3,
              stream_shard_size=3, stream_limit_shards=10, stream_window=4, stream_batch=4, stream_steps=30,
              stream_repeats=2, prefetch_repeats=3)
QUICK = Config(synth_batch=16, synth_repeats=2, synth_e2e_samples=16, synth_e2e_repeats=1,
               prep_samples=50, prep_file_samples=50, prep_repeats=2, shard_size=25, pull_repeats=2,
               stream_shard_size=4, stream_limit_shards=2, stream_window=1, stream_batch=4, stream_steps=8,
               stream_repeats=1, prefetch_repeats=2)
SECTIONS = ("synth", "prep", "pull", "stream")


@dataclass
class Row:
    name: str
    unit: str
    gwi: float  # median speed
    base: float
    ratio: float  # median over pairs of gwi speed / baseline speed
    t_gwi: list[float]  # seconds per repeat, for the spread notes under the table
    t_base: list[float]
    target: float | None = None  # least acceptable ratio; None: informational
    target_text: str = "-"
    show_overhead: bool = False

    @property
    def passed(self) -> bool | None:
        return None if self.target is None else self.ratio >= self.target


def make_row(name: str, unit: str, work_gwi: float, work_base: float, t_gwi: list[float], t_base: list[float],
             **kw) -> Row:
    """Speeds are work / seconds; ``work_*`` is what one run of each side does (samples, MB)."""
    ratio = statistics.median((work_gwi / g) / (work_base / b) for g, b in zip(t_gwi, t_base))
    return Row(name, unit, work_gwi / statistics.median(t_gwi), work_base / statistics.median(t_base), ratio,
               t_gwi, t_base, **kw)


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def timed(fn, *a, **kw) -> float:
    t = time.perf_counter()
    fn(*a, **kw)
    return time.perf_counter() - t


def alternate(label: str, repeats: int, gwi_run: Callable[[int], float],
              base_run: Callable[[int], float]) -> tuple[list[float], list[float]]:
    """Run both sides back to back ``repeats`` times, swapping which goes first, so that neither
    always inherits the other's warm caches or dirty page cache. Each ``*_run(r)`` returns its own
    timed seconds, so it can set up and clean up outside the clock."""
    t_gwi, t_base = [], []
    for r in range(repeats):
        if r % 2:
            t_base.append(base_run(r))
            t_gwi.append(gwi_run(r))
        else:
            t_gwi.append(gwi_run(r))
            t_base.append(base_run(r))
        log(f"{label}: repeat {r + 1}/{repeats}: gwi {t_gwi[-1]:.2f}s, baseline {t_base[-1]:.2f}s")
    return t_gwi, t_base


# ------------------------------------------------------------------------------------------------
# header


def aws_exe() -> str:
    # the awscli installed next to this interpreter, so the baseline is the one the venv pins
    here = Path(sys.executable).with_name("aws")
    return str(here) if here.exists() else (shutil.which("aws") or "aws")


def machine_header(argv: list[str]) -> str:
    import boto3
    import deepwave
    import moto
    import torch

    awscli = subprocess.run([aws_exe(), "--version"], capture_output=True, text=True).stdout.strip()
    lines = machine_lines(argv, f"torch {torch.__version__} ({torch.get_num_threads()} threads)  "
                                f"deepwave {getattr(deepwave, '__version__', '?')}  numpy {np.__version__}")
    lines.insert(4, f"s3      : boto3 {boto3.__version__}  moto {moto.__version__}  {awscli or 'aws: not found'}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# 1. synthetic data


def bench_synth(cfg: Config, work: Path, device: str) -> list[Row]:
    import deepwave
    import torch

    from gwi.data.layout import FAMILIES, N_RECEIVERS, NT, RECEIVER_Z, SOURCE_X, SOURCE_Z
    from gwi import physics
    from gwi.data.synth import synthesize, velocity_batch
    from gwi.physics.openfwi import ricker

    b, ns = cfg.synth_batch, len(SOURCE_X)
    # the same wavelet gwi injects (negated, advanced one sample): it is data, not overhead
    w = -np.concatenate([ricker(15.0, 1e-3, NT)[1:], [0.0]])
    wavelet = torch.tensor(w, dtype=torch.float32, device=device)

    def bare(v: np.ndarray):
        """deepwave.scalar with gwi's arguments, its tensors built in the fewest steps."""
        vv = torch.from_numpy(v).to(device).repeat_interleave(ns, dim=0)
        sx = torch.tensor(SOURCE_X, device=device)
        src = torch.stack([torch.full_like(sx, SOURCE_Z), sx], -1)[:, None].repeat(b, 1, 1)
        rx = torch.arange(N_RECEIVERS, device=device)
        rec = torch.stack([torch.full_like(rx, RECEIVER_Z), rx], -1).expand(b * ns, -1, -1)
        amp = wavelet.expand(b * ns, 1, NT)
        with torch.no_grad():
            out = deepwave.scalar(vv, 10.0, 1e-3, source_amplitudes=amp, source_locations=src,
                                  receiver_locations=rec, accuracy=4, pml_width=20, pml_freq=15.0,
                                  courant_number=0.7, nt=1000,
                                  # gwi pins max_vel (see gwi.physics.deepwave_backend); same argument, same work
                                  max_vel=4500.0)
        if device.startswith("cuda"):
            torch.cuda.synchronize()  # gwi's copy to numpy waits for the GPU; so must we
        return out.receiver_amplitudes

    dw = physics.backend("deepwave", device=device)

    def fm(v: np.ndarray) -> np.ndarray:  # what synthesize does per batch
        with torch.no_grad():
            return dw(torch.from_numpy(v)).float().cpu().numpy()

    # warm-up, and a check that the two really compute the same thing
    log(f"synth: warm-up, batch {b} on {device}")
    fam0 = FAMILIES[0]
    v0 = velocity_batch(fam0, 0, 0, b)
    x_gwi = fm(v0)
    x_bare = bare(v0).cpu().numpy().reshape(b, ns, N_RECEIVERS, NT).transpose(0, 1, 3, 2)
    err = float(np.abs(x_gwi - x_bare).max() / (np.abs(x_bare).max() + 1e-30))
    if err > 1e-5:
        log(f"WARNING: gwi and bare outputs differ (max rel {err:.2e}): not the same computation")

    # velocity generation costs differ per family, so the repeats walk through them
    def gwi_batch(r: int) -> float:
        return timed(lambda: fm(velocity_batch(FAMILIES[r % len(FAMILIES)], 0, 0, b)))

    def bare_batch(r: int) -> float:
        v = velocity_batch(FAMILIES[r % len(FAMILIES)], 0, 0, b)  # the bare side's input, off the clock
        return timed(bare, v)

    t_gwi, t_bare = alternate("synth forward", cfg.synth_repeats, gwi_batch, bare_batch)

    n = cfg.synth_e2e_samples

    def gwi_e2e(r: int) -> float:
        store = work / f"synth-store-{r}"
        t = timed(synthesize, [fam0], n, f"file://{store}", "bench-synth", batch_size=b, device=device,
                  progress=False, backend="deepwave")
        shutil.rmtree(store)
        return t

    t_e2e, t_e2e_bare = alternate(f"synth synthesize() {n} samples", cfg.synth_e2e_repeats, gwi_e2e,
                                  lambda r: timed(bare, v0))
    return [
        make_row(f"synth: velocities + the deepwave backend, batch {b}", "samples/s", b, b, t_gwi, t_bare,
                 target=1 / 1.10, target_text="overhead <= 10%", show_overhead=True),
        make_row(f"synth: synthesize() end-to-end, {n} samples", "samples/s", n, b, t_e2e, t_e2e_bare,
                 show_overhead=True),
    ]


# ------------------------------------------------------------------------------------------------
# 2. prep


def write_kaggle(root: Path, n: int, per_file: int) -> list[tuple[Path, Path]]:
    """train_samples/FlatVel_A/data/dataK.npy + model/modelK.npy, like the competition's files."""
    rng = np.random.default_rng(0)
    fam = root / "train_samples" / "FlatVel_A"
    (fam / "data").mkdir(parents=True)
    (fam / "model").mkdir()
    pairs = []
    for k, first in enumerate(range(0, n, per_file), start=1):
        m = min(per_file, n - first)
        x = rng.standard_normal((m, 5, 1000, 70), dtype=np.float32)
        x *= 5.0
        y = rng.uniform(1500, 4500, (m, 1, 70, 70)).astype(np.float32)
        px, py = fam / "data" / f"data{k}.npy", fam / "model" / f"model{k}.npy"
        np.save(px, x)
        np.save(py, y)
        pairs.append((px, py))
    return pairs


def bench_prep(cfg: Config, work: Path) -> tuple[Row, Path]:
    from gwi.data.prep import prep_train

    src = work / "kaggle"
    log(f"prep: writing {cfg.prep_samples} float32 samples to {src}")
    pairs = write_kaggle(src, cfg.prep_samples, cfg.prep_file_samples)
    in_mb = sum(p.stat().st_size for pair in pairs for p in pair) / MB
    last_store = work / f"prep-store-{cfg.prep_repeats - 1}"

    def gwi_prep(r: int) -> float:
        store = work / f"prep-store-{r}"
        t = timed(prep_train, src, f"file://{store}", "bench-prep", shard_size=cfg.shard_size, progress=False)
        if store != last_store:  # the last build doubles as the dataset the pull benchmark fetches
            shutil.rmtree(store)
        return t

    def plain(r: int) -> float:
        out = work / f"prep-plain-{r}"
        out.mkdir()
        t = time.perf_counter()
        for px, py in pairs:
            for p in (px, py):
                np.save(out / p.name, np.load(p).astype(np.float16))
        t = time.perf_counter() - t
        shutil.rmtree(out)
        return t

    t_gwi, t_base = alternate("prep", cfg.prep_repeats, gwi_prep, plain)
    shutil.rmtree(src)
    row = make_row(f"prep: prep_train, {in_mb:.0f} MB float32 in", "MB/s", in_mb, in_mb, t_gwi, t_base)
    return row, last_store / "datasets" / "bench-prep"


# ------------------------------------------------------------------------------------------------
# 3. pull


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


MOTO_PIDS: dict[str, int] = {}  # endpoint -> the moto server's pid, for its CPU time (proc_cpu)


def proc_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) process ``pid`` has used so far; None where /proc cannot say."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


@contextlib.contextmanager
def moto_server():
    """moto's standalone S3 on a free local port, as its own process so it does not share our GIL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    MOTO_PIDS[f"http://127.0.0.1:{port}"] = proc.pid
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError("moto server exited at start")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("moto server did not start in 30 s") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def s3_env(endpoint: str, work: Path):
    """Point gwi (boto3) and the aws CLI at the same endpoint with the same default settings."""
    import gwi.store

    saved = dict(os.environ)
    os.environ.update({
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        # a user's ~/.aws config (e.g. s3.max_concurrent_requests) would tune one side only
        "AWS_CONFIG_FILE": str(work / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(work / "no-aws-credentials"),
    })
    for k in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION"):
        os.environ.pop(k, None)
    gwi.store._CLIENTS.clear()
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        gwi.store._CLIENTS.clear()


def dir_bytes(d: Path, skip: tuple[str, ...] = ()) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file() and p.name not in skip)


def bench_pull(cfg: Config, work: Path, dataset: Path) -> Row:
    import boto3

    import gwi.store
    from gwi.data.sync import VERIFIED, pull, push

    nbytes = dir_bytes(dataset)
    with moto_server() as endpoint, s3_env(endpoint, work):
        bucket = f"gwi-bench-{uuid.uuid4().hex[:8]}"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
        url = f"s3://{bucket}/bench/datasets/{dataset.name}"
        log(f"pull: pushing {nbytes / MB:.0f} MB to {url} on {endpoint}")
        push(dataset, url, progress=False)

        def fetched(dest: Path, who: str) -> None:
            got = dir_bytes(dest, skip=(VERIFIED,))
            if got != nbytes:
                log(f"WARNING: {who} fetched {got} bytes, the dataset has {nbytes}")
            shutil.rmtree(dest)

        def gwi_pull(r: int) -> float:
            # aws pays for its client set-up in every run; make gwi pay for its own too
            gwi.store._CLIENTS.clear()
            dest = work / f"pull-gwi-{r}"
            t = timed(pull, url, dest=dest, progress=False)
            fetched(dest, "gwi")
            return t

        def aws_cp(r: int) -> float:
            dest = work / f"pull-aws-{r}"
            t = timed(subprocess.run, [aws_exe(), "s3", "cp", "--recursive", "--only-show-errors",
                                       "--endpoint-url", endpoint, url + "/", str(dest)], check=True)
            fetched(dest, "aws")
            return t

        t_gwi, t_aws = alternate("pull", cfg.pull_repeats, gwi_pull, aws_cp)

        # the CLI's fixed cost, to read a small dataset's ratio against: a listing of an empty prefix
        t = timed(subprocess.run, [aws_exe(), "s3", "ls", "--endpoint-url", endpoint, f"s3://{bucket}/nothing/"],
                  capture_output=True)
        log(f"pull: aws CLI start-up + one request: {t:.2f}s")

    return make_row(f"pull: sync.pull vs aws s3 cp, {nbytes / MB:.0f} MB", "MB/s", nbytes / MB, nbytes / MB,
                    t_gwi, t_aws, target=0.90, target_text=">= 0.90x")


# ------------------------------------------------------------------------------------------------
# 4. streaming (issue 25): training through the bounded cache, its bound, its fetches


@dataclass
class Bound:
    """The stream folder's peak bytes on disk while the streamed runs trained, against the limit."""

    limit: int
    shard: int  # the largest unit (seismic + velocity file): the allowance the target gives
    peaks: dict[float, int]  # sampling interval (s) -> peak bytes seen
    counts: dict[float, int]  # sampling interval (s) -> samples taken

    @property
    def passed(self) -> bool:
        return all(p <= self.limit + self.shard for p in self.peaks.values())

    def text(self) -> str:
        seen = ", ".join(f"every {dt * 1e3:.0f} ms: {self.peaks[dt] / MB:.2f} MB ({self.counts[dt]} samples)"
                         for dt in sorted(self.peaks, reverse=True))
        over = max(self.peaks.values()) - self.limit
        return (f"cache bound: stream folder peak on disk {seen}; limit {self.limit / MB:.2f} MB, one shard "
                f"{self.shard / MB:.2f} MB, target peak <= limit + one shard = {(self.limit + self.shard) / MB:.2f} MB "
                f"(peak - limit = {over / 1e3:+,.1f} kB) -> {'PASS' if self.passed else 'FAIL'}")


# a temp name -> the file it becomes: gwi's .NAME.npy.PID.HEX.download and boto3's temp names inside it,
# boto3's NAME.mds.HEX (Mosaic), NAME.bin.tmp / .lock / .cnt (litdata)
_FINAL = re.compile(r"^\.*(.*?\.(?:npy|mds|bin|json))(?:\..*)?$")


def folder_bytes(root: Path) -> int:
    """Bytes of every file under ``root`` now, downloads in flight included. A download's temp names
    count as the file they become, once, at the largest size seen: a rename caught half-way is not
    counted twice. A file that vanishes while we look counts 0."""
    sizes: dict[str, int] = {}
    for p in list(root.rglob("*")):
        try:
            if not p.is_file():
                continue
            n = p.stat().st_size
        except (FileNotFoundError, NotADirectoryError):
            continue
        m = _FINAL.match(p.name)
        key = str(p.parent / (m.group(1) if m else p.name))
        sizes[key] = max(n, sizes.get(key, 0))
    return sum(sizes.values())


WATCH_S = (1.0, 0.05)  # the stream folder's bytes are sampled every second, and every 50 ms to be stricter


class DiskWatch:
    """Samples ``folder_bytes(root)`` every ``dt`` seconds while in the ``with`` block, in a child
    process (``bench/data.py --watch``): a thread of ours waking 20 times a second would take the GIL
    from the training loop it measures. ``peak`` and ``count`` are read when the block ends."""

    def __init__(self, root: Path, dt: float):
        self.root, self.dt = root, dt
        self.peak = self.count = 0

    def __enter__(self) -> Self:
        self._proc = subprocess.Popen([sys.executable, __file__, "--watch", str(self.root), str(self.dt)],
                                      stdout=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc) -> None:
        self._proc.terminate()  # the child prints what it saw and exits
        out, _ = self._proc.communicate(timeout=30)
        if len(out.split()) != 2:  # killed before it set its handler: a block shorter than its start-up
            log(f"WARNING: the disk watcher of {self.root} reported nothing")
            return
        self.peak, self.count = (int(v) for v in out.split())


def watch_main(root: str, dt: str) -> int:
    """The child of :class:`DiskWatch`: sample until SIGTERM, then print ``peak count``."""
    import signal

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    folder, every, peak, count = Path(root), float(dt), 0, 0
    while not stop.is_set():
        if folder.exists():
            peak = max(peak, folder_bytes(folder))
            count += 1
        stop.wait(every)
    print(peak, count, flush=True)
    return 0


def stream_dataset(store_url: str, name: str, shards: int, per_shard: int) -> str:
    """``shards`` equal shards of ``per_shard`` random samples (two families), written as prep writes."""
    from gwi.data.shards import DatasetWriter

    rng = np.random.default_rng(25)
    half = shards // 2 * per_shard
    with DatasetWriter(store_url, name, source={"kind": "bench"}, shard_size=per_shard) as w:
        for fam, n in (("FlatVel_A", half), ("CurveVel_A", shards * per_shard - half)):
            for first in range(0, n, per_shard):  # a shard at a time: the full run's data stays small in RAM
                m = min(per_shard, n - first)
                x = rng.standard_normal((m, 5, 1000, 70), dtype=np.float32)
                x *= 5.0
                y = rng.uniform(1500, 4500, (m, 1, 70, 70)).astype(np.float32)
                w.add(fam, x, y, src=f"bench:{fam}")
        w.finish()
    return f"{store_url.rstrip('/')}/datasets/{name}"


@dataclass
class LoopIO:
    """What the stream's cache did from the training loop's start (the first ``StreamedDataset.plan``):
    seconds the reader spent in ``ShardCache.open`` (waiting for a shard, or mapping one already here),
    shards fetched and evicted."""

    open_s: float = 0.0
    started: bool = False
    cache: object = None
    fetched0: int = 0
    evicted0: int = 0

    @property
    def fetched(self) -> int:
        return self.cache.fetched - self.fetched0 if self.cache is not None else 0

    @property
    def evicted(self) -> int:
        return self.cache.evicted - self.evicted0 if self.cache is not None else 0


@contextlib.contextmanager
def loop_io(on_start: Callable[[], None] = lambda: None):
    """Watch the stream's cache in the training loop (:class:`LoopIO`); ``on_start`` is called when the
    loop starts. The methods are wrapped, not changed."""
    from gwi.data.cache import ShardCache, StreamedDataset

    io = LoopIO()
    open_, plan_ = ShardCache.open, StreamedDataset.plan

    def open(self, k):
        t = time.perf_counter()
        try:
            return open_(self, k)
        finally:
            if io.started:
                io.open_s += time.perf_counter() - t

    def plan(self, idx, ahead):
        if not io.started:
            io.started, io.cache = True, self.cache
            io.fetched0, io.evicted0 = self.cache.fetched, self.cache.evicted
            on_start()
        return plan_(self, idx, ahead)

    ShardCache.open, StreamedDataset.plan = open, plan
    try:
        yield io
    finally:
        ShardCache.open, StreamedDataset.plan = open_, plan_


def bench_stream(cfg: Config, work: Path) -> tuple[list[Row], Bound, list[str]]:
    """The streaming rows, the cache bound and a line per timed training run."""
    import boto3

    import gwi.store
    from gwi.config import TrainConfig
    from gwi.data.cache import ShardCache
    from gwi.data.shards import load_manifest, x_shards, y_shard_for
    from gwi.data.sync import VERIFIED, cache_dir_for
    from gwi.training import train

    n_shards = 5 * cfg.stream_limit_shards
    window = cfg.stream_window
    if cfg.stream_limit_shards < window + 1:
        raise ValueError(f"stream_limit_shards {cfg.stream_limit_shards}: the cache needs the window ({window}) "
                         "and a shard arriving")
    with moto_server() as endpoint, s3_env(endpoint, work):
        bucket = f"gwi-bench-{uuid.uuid4().hex[:8]}"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
        log(f"stream: writing {n_shards} shards of {cfg.stream_shard_size} samples to s3://{bucket} on {endpoint}")
        url = stream_dataset(f"s3://{bucket}/bench", "bench-stream", n_shards, cfg.stream_shard_size)
        manifest = load_manifest(gwi.store.open_store(url))
        units = [int(xs["bytes"]) + int(y_shard_for(manifest, xs)["bytes"]) for xs in x_shards(manifest)]
        nbytes = sum(int(sh["bytes"]) for sh in manifest["shards"])
        shard = max(units)  # a unit: a shard's seismic file and its velocity file
        limit = nbytes // 5
        samples = int(sum(sh["shape"][0] for sh in manifest["shards"] if sh["kind"] == "x"))
        log(f"stream: {samples} samples, {nbytes / MB:.1f} MB in {len(units)} shards of {shard / MB:.2f} MB; cache "
            f"limit {limit / MB:.2f} MB = {cfg.stream_limit_shards} shards, window {window}; {cfg.stream_steps} steps "
            f"of {cfg.stream_batch} a run")
        stream_dir = cache_dir_for(url).with_name(cache_dir_for(url).name + "-stream-0")
        whole_dir = cache_dir_for(url)
        notes: list[str] = []

        # the peak bytes on disk of each side's folder, at each sampling interval; both sides are watched
        # (the watchers' CPU falls on both), the pulled copy's peak being the whole dataset
        peaks = {tag: {dt: 0 for dt in WATCH_S} for tag in ("stream", "pulled")}
        counts = {tag: {dt: 0 for dt in WATCH_S} for tag in ("stream", "pulled")}

        def run(tag: str, r: int, steps: int = cfg.stream_steps) -> float:
            for d in (stream_dir, whole_dir):  # cold: each run fetches what it reads
                shutil.rmtree(d, ignore_errors=True)
            gwi.store._CLIENTS.clear()
            lines: list[str] = []
            tc = TrainConfig(model="inversionnet", dataset=url, run=f"file://{work}/stream-runs/{tag}-{r}",
                             preset="tiny", epochs=1000, max_steps=steps, batch_size=cfg.stream_batch,
                             split="kfold:5:0", cache_limit=str(limit) if tag == "stream" else "none",
                             stream_window=window, ema=0.0, device="cpu", heartbeat_s=5.0,
                             sample_log=str(work / f"samples-{tag}-{r}.log"))
            watches = [DiskWatch(stream_dir if tag == "stream" else whole_dir, dt) for dt in WATCH_S]
            # the S3 server's CPU from the loop's start (streamed) or the run's (pulled) to its end: on this
            # machine it competes with the training's threads, as a remote store would not
            moto = [proc_cpu(MOTO_PIDS[endpoint])]
            with loop_io(lambda: moto.__setitem__(0, proc_cpu(MOTO_PIDS[endpoint]))) as io, \
                    watches[0], watches[1]:
                m = train(tc, log=lines.append)
            moto_s = (proc_cpu(MOTO_PIDS[endpoint]) or 0.0) - (moto[0] or 0.0)
            for w in watches:
                peaks[tag][w.dt] = max(peaks[tag][w.dt], w.peak)
                counts[tag][w.dt] += w.count
            streamed = any(ln.startswith("streaming bench-stream (") for ln in lines)
            if streamed != (tag == "stream"):
                raise RuntimeError(f"stream bench: the {tag} run {'did not stream' if tag == 'stream' else 'streamed'}")
            if m["loop_samples"] != steps * cfg.stream_batch:
                log(f"WARNING: {tag} run trained {m['loop_samples']} samples, expected {steps * cfg.stream_batch}")
            # the shards the loop read (all shards hold stream_shard_size samples)
            log_path = work / f"samples-{tag}-{r}.log"
            read = {int(v) // cfg.stream_shard_size for ln in log_path.read_text().splitlines() for v in ln.split()[2:]}
            log_path.unlink()
            notes.append(f"{tag} {r + 1}: {m['loop_samples'] / m['loop_s']:.2f} samples/s in the loop ({m['loop_s']:.1f} s"
                         + (f", of which {io.open_s:.1f} s in ShardCache.open: shard waits and maps; "
                            f"{io.fetched} shards fetched and {io.evicted} evicted for the {m['loop_samples']} samples "
                            f"of {len(read)} shards read" if streamed else "")
                         + f"), {m['samples_per_s']:.2f} samples/s with start-up and validation; peak on disk "
                         f"{max(w.peak for w in watches) / MB:.2f} MB; the S3 server used {moto_s:.1f} CPU s "
                         + ("from the loop's start on" if streamed else "in the whole run (the pull)"))
            for d in (stream_dir, whole_dir):
                shutil.rmtree(d, ignore_errors=True)
            shutil.rmtree(work / "stream-runs", ignore_errors=True)
            return float(m["loop_s"])

        # the first train() of a process pays once for what later ones reuse (torch's kernels and
        # allocator, lazy imports): a short untimed run first, so neither side inherits that cost
        log("train from stream: warm-up run (2 steps, pulled, untimed)")
        run("pulled", -1, steps=2)
        notes.clear()
        for tag in peaks:
            peaks[tag] = {dt: 0 for dt in WATCH_S}
            counts[tag] = {dt: 0 for dt in WATCH_S}
        t_stream, t_whole = alternate("train from stream", cfg.stream_repeats, lambda r: run("stream", r),
                                      lambda r: run("pulled", r))
        notes = [f"  {n}" for n in notes]
        for n in notes:
            log(f"stream:{n}")
        bound = Bound(limit, shard, peaks["stream"], counts["stream"])
        log(bound.text())

        # the cache alone: every shard fetched through ShardCache (room for all, its default 2 threads,
        # as training opens it) against the aws CLI copying the same prefix
        def cache_fetch(r: int) -> float:
            root = work / f"prefetch-gwi-{r}"
            gwi.store._CLIENTS.clear()  # aws pays for its client set-up in every run; so does gwi
            t = time.perf_counter()
            c = ShardCache(url, nbytes, root=root)
            try:
                c.prefetch(range(len(c.units)))
                with c.cond:
                    running = list(c.inflight.values())
                for f in running:
                    f.result()
                t = time.perf_counter() - t
                if c.fetched != len(c.units):
                    log(f"WARNING: the cache fetched {c.fetched} of {len(c.units)} shards")
            finally:
                c.close()
            got = dir_bytes(root, skip=(VERIFIED,))
            if got != nbytes:
                log(f"WARNING: the cache fetched {got} bytes, the shards are {nbytes}")
            shutil.rmtree(root)
            return t

        def aws_cp(r: int) -> float:
            dest = work / f"prefetch-aws-{r}"
            t = timed(subprocess.run, [aws_exe(), "s3", "cp", "--recursive", "--only-show-errors",
                                       "--endpoint-url", endpoint, url + "/", str(dest)], check=True)
            shutil.rmtree(dest)
            return t

        t_cache, t_aws = alternate("S3 prefetch", cfg.prefetch_repeats, cache_fetch, aws_cp)

    n = cfg.stream_steps * cfg.stream_batch
    rows = [
        make_row(f"train from stream: {n} samples, {nbytes / MB:.0f} MB = 5x cache limit ({cfg.stream_limit_shards} "
                 f"shards, window {window}), vs pulled copy",
                 "samples/s", n, n, t_stream, t_whole, target=0.90, target_text=">= 0.90x"),
        make_row(f"S3 prefetch: ShardCache, all {len(units)} shards, vs aws s3 cp, {nbytes / MB:.0f} MB", "MB/s",
                 nbytes / MB, nbytes / MB, t_cache, t_aws, target=0.90, target_text=">= 0.90x"),
    ]
    return rows, bound, notes


# ------------------------------------------------------------------------------------------------
# report


def table(rows: list[Row]) -> str:
    def ratio(r: Row) -> str:
        return f"{r.ratio:.2f}x" + (f" ({1 / r.ratio - 1:+.1%} time)" if r.show_overhead else "")

    head = ("benchmark", "gwi", "baseline", "ratio", "target", "pass/fail")
    body = [(r.name, f"{r.gwi:,.2f} {r.unit}", f"{r.base:,.2f} {r.unit}", ratio(r), r.target_text,
             "-" if r.passed is None else ("PASS" if r.passed else "FAIL")) for r in rows]
    widths = [max(len(c[i]) for c in (head, *body)) for i in range(len(head))]
    fmt = " | ".join(f"{{:<{w}}}" for w in widths)
    sep = "-+-".join("-" * w for w in widths)
    return "\n".join([fmt.format(*head).rstrip(), sep, *(fmt.format(*c).rstrip() for c in body)])


def spread(rows: list[Row]) -> str:
    """Each side's fastest..slowest repeat: a wide spread means other load on the machine, not gwi."""
    def span(ts):
        return f"{min(ts):.2f}..{max(ts):.2f} s (n={len(ts)})"

    out = ["repeats (seconds per run; ratio = median over back-to-back pairs of gwi/baseline speed):"]
    for r in rows:
        note = f"  {r.name.split(',')[0]}: gwi {span(r.t_gwi)}, baseline {span(r.t_base)}"
        if any(max(ts) > 1.3 * min(ts) for ts in (r.t_gwi, r.t_base)):
            note += "  <- noisy: >30% between repeats"
        out.append(note)
    return "\n".join(out)


def main(argv: list[str]) -> int:
    if argv[1:2] == ["--watch"]:  # DiskWatch's child process
        return watch_main(*argv[2:4])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller data and fewer repeats (2-6 min on 2 cores)")
    ap.add_argument("--only", default=",".join(SECTIONS), metavar="LIST",
                    help=f"the sections to run, comma-separated (default: all of {','.join(SECTIONS)}; pull "
                         "needs prep)")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=INT",
                    help="override a size of the chosen Config (e.g. --set stream_limit_shards=5)")
    args = ap.parse_args(argv[1:])
    cfg = QUICK if args.quick else FULL
    for kv in args.set:
        key, _, value = kv.partition("=")
        if key not in Config.__dataclass_fields__ or not value.lstrip("-").isdigit():
            ap.error(f"--set: expected FIELD=INT with FIELD one of {', '.join(Config.__dataclass_fields__)}, got {kv!r}")
        cfg = dataclasses.replace(cfg, **{key: int(value)})
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    bad = sorted(set(only) - set(SECTIONS))
    if bad or not only:
        ap.error(f"--only: expected some of {', '.join(SECTIONS)}, got {args.only!r}")
    if "pull" in only and "prep" not in only:
        ap.error("--only: pull fetches the dataset prep writes; add prep")

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(machine_header(argv))
    print(f"mode    : {'quick' if args.quick else 'full'}{''.join(' --set ' + kv for kv in args.set)}; sections "
          f"{','.join(only)}; synth on {device}")
    print(flush=True)

    start = time.perf_counter()
    rows: list[Row] = []
    bound: Bound | None = None
    notes: list[str] = []
    with scratch_home("gwi-bench-") as work:
        if "synth" in only:
            rows += bench_synth(cfg, work, device)
        if "prep" in only:
            prep_row, dataset = bench_prep(cfg, work)
            rows.append(prep_row)
            if "pull" in only:
                rows.append(bench_pull(cfg, work, dataset))
        if "stream" in only:
            stream_rows, bound, notes = bench_stream(cfg, work)
            rows += stream_rows

    print(table(rows))
    if bound is not None:
        print()
        print(bound.text())
        print("train from stream, each timed run:")
        print("\n".join(notes))
    print()
    print(spread(rows))
    print()
    print(f"total {time.perf_counter() - start:.0f} s; load {load_text()} at end; {busy_text()}")
    ok = all(r.passed is not False for r in rows) and (bound is None or bound.passed)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
