"""Data-path benchmark: gwi's synth, prep and pull against the bare tool each one wraps.

    .venv/bin/python bench/data.py [--quick]

Everything runs in this one process on the same data. Each gwi run is paired with a baseline run
right before or after it (the order swaps every repeat), and a ratio is the median over the pairs of
gwi speed / baseline speed: a burst of load from another process then spoils one pair, not the
result. The speed columns are each side's median. Progress goes to stderr; stdout holds only the
header and the result table. The exit status is 1 when a benchmark misses its target.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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


# shard sizes are smaller than gwi's default 500 so a few hundred MB still spans several shards, as a
# real dataset does, and pull's per-shard parallelism is exercised
FULL = Config(synth_batch=16, synth_repeats=5, synth_e2e_samples=32, synth_e2e_repeats=3,
              prep_samples=400, prep_file_samples=100, prep_repeats=3, shard_size=100, pull_repeats=3)
QUICK = Config(synth_batch=16, synth_repeats=2, synth_e2e_samples=16, synth_e2e_repeats=1,
               prep_samples=50, prep_file_samples=50, prep_repeats=2, shard_size=25, pull_repeats=2)


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


@contextlib.contextmanager
def moto_server():
    """moto's standalone S3 on a free local port, as its own process so it does not share our GIL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller data and fewer repeats (~1 min)")
    args = ap.parse_args(argv[1:])
    cfg = QUICK if args.quick else FULL

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(machine_header(argv))
    print(f"mode    : {'quick' if args.quick else 'full'}; synth on {device}")
    print(flush=True)

    start = time.perf_counter()
    with scratch_home("gwi-bench-") as work:
        rows = bench_synth(cfg, work, device)
        prep_row, dataset = bench_prep(cfg, work)
        rows += [prep_row, bench_pull(cfg, work, dataset)]

    print(table(rows))
    print()
    print(spread(rows))
    print()
    print(f"total {time.perf_counter() - start:.0f} s; load {load_text()} at end; {busy_text()}")
    return 0 if all(r.passed is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
