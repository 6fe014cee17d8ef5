"""gwi's bounded shard cache against MosaicML ``streaming`` and Lightning ``litdata``, on the same data
from the same S3 endpoint (moto): the measuring plan of docs/design/streaming.md §4, on a small scale.

    python3 -m venv /tmp/libvenv
    /tmp/libvenv/bin/pip install torch==2.13.0 mosaicml-streaming litdata numpy boto3 'moto[server]'
    /tmp/libvenv/bin/python bench/stream_libs.py [--shards 25] [--per-shard 6] [--repeats 2]

Run it in a venv of its own: the libraries pull in transformers, azure, oci, obstore and friends that
gwi's venv does not carry. gwi itself is imported from this checkout (its data modules need only
numpy and boto3).

1. A gwi dataset (``--shards`` float16 shards of ``--per-shard`` random samples, two families) is
   written, pushed to a moto S3 bucket, and converted to MDS (``MDSWriter``, raw ndarray columns, a
   shard per gwi shard) and to litdata's format (``optimize``, a chunk per gwi shard); the conversion
   times and bytes are reported, and both copies are uploaded next to gwi's.
2. Read throughput: one shuffled epoch through each reader, cold cache, cache limit = a fifth of
   the dataset (5 shards: Mosaic refuses less than 4), batches of 4, in this process (no DataLoader
   workers): gwi's ``ShardCache`` + ``StreamedDataset`` in ``stream_order`` (window 4 shards, fetched
   ahead as training does), Mosaic's ``StreamingDataset`` (py1e shuffle, block = the same 4 shards),
   litdata's ``StreamingDataset`` (shuffle). Each cache folder is sampled every 50 ms by a child
   process; its peak is reported against the limit.
3. Resume: each reader stops after half the epoch, a new reader (and a new, cold cache) starts from
   the state it gave, and the sample ids it reads are compared with the rest of the uninterrupted
   epoch. Every sample read is also checked against gwi's local copy (a fingerprint of its bytes).

Progress goes to stderr; stdout holds the header and the tables.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import hashlib
import importlib.util
import os
import shutil
import statistics
import sys
import time
import types
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # gwi, from this checkout
sys.path.insert(0, str(HERE))
from _common import busy_text, load_text, machine_lines, scratch_home, table

MB = 1e6
BATCH = 4
WINDOW = 4  # shards shuffled together: gwi's stream_window default; Mosaic's shuffle block in samples
LIMIT_SHARDS = 5  # the cache limit, in shards: the dataset is 5x it by default


def _bench_data():
    """bench/data.py's moto server, S3 environment, dataset writer and disk watcher."""
    spec = importlib.util.spec_from_file_location("gwi_bench_data", HERE / "data.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gwi_bench_data"] = mod
    spec.loader.exec_module(mod)
    return mod


bd = _bench_data()
log = bd.log


def import_libraries():
    """Import both libraries. ``streaming`` imports transformers, which imports torchvision: the PyPI
    torchvision wheel beside the CPU torch wheel fails with "operator torchvision::nms does not exist",
    worked around as gwi.models.timm_compat does (its compiled ops are never used here)."""
    try:
        import torchvision
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
        for m in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[m]
        sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
        import torchvision  # noqa: F401
    import litdata
    import litdata.streaming.downloader as lit_dl
    import streaming

    # litdata fetches chunks with obstore (Rust) where installed, and obstore refuses a plain-http
    # endpoint unless told: allowed here, so litdata runs its default fast path against moto, as it
    # would against https S3
    lit_dl._OBSTORE_CLIENT_OPTIONS["allow_http"] = True
    return streaming, litdata


def fingerprint(x: np.ndarray) -> str:
    """A cheap digest of one sample's seismic bytes (every 101st value): the same sample reads the same."""
    return hashlib.blake2b(np.ascontiguousarray(x).reshape(-1)[::101].tobytes(), digest_size=8).hexdigest()


# ------------------------------------------------------------------------------------------------
# conversion


def lit_item(root: str, i: int) -> dict:
    """litdata's ``optimize`` fn: sample ``i`` of the local gwi copy at ``root`` (top level: picklable)."""
    ds = _open_local(root)
    x, y = ds.batch(np.array([i]), dtype=np.float16)
    return {"id": int(i), "x": x[0], "y": y[0]}


@functools.lru_cache(maxsize=2)
def _open_local(root: str):
    from gwi.data.shards import ShardedDataset

    return ShardedDataset(Path(root))


def to_mds(local: Path, out: Path, per_shard: int) -> tuple[float, int, int]:
    """(seconds, bytes, shards) of writing the local gwi copy as MDS, a shard per gwi shard."""
    from streaming import MDSWriter

    ds = _open_local(str(local))
    shape = tuple(int(v) for v in ds.manifest["seismic_shape"]) if "seismic_shape" in ds.manifest else (5, 1000, 70)
    columns = {"id": "int64", "x": f"ndarray:float16:{','.join(map(str, shape))}", "y": "ndarray:float16:1,70,70"}
    sample = 2 * (int(np.prod(shape)) + 70 * 70) + 8
    t = time.perf_counter()
    # a shard closes when the next sample would pass size_limit: room for per_shard samples, not one more
    with MDSWriter(out=str(out), columns=columns, compression=None, size_limit=per_shard * sample + sample // 2,
                   hashes=["sha256"]) as w:
        for s in range(0, len(ds), 64):
            idx = np.arange(s, min(len(ds), s + 64))
            x, y = ds.batch(idx, dtype=np.float16)
            for j, i in enumerate(idx):
                w.write({"id": int(i), "x": x[j], "y": y[j]})
    t = time.perf_counter() - t
    return t, bd.dir_bytes(out), len(list(out.glob("*.mds")))


def to_lit(local: Path, out: Path, per_shard: int) -> tuple[float, int, int]:
    """(seconds, bytes, chunks) of litdata's ``optimize`` over the local gwi copy, a chunk per gwi shard."""
    from litdata import optimize

    n = len(_open_local(str(local)))
    t = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # its progress lines
        optimize(fn=functools.partial(lit_item, str(local)), inputs=list(range(n)), output_dir=str(out),
                 chunk_size=per_shard, num_workers=1, mode="overwrite")
    t = time.perf_counter() - t
    return t, bd.dir_bytes(out), len(list(out.glob("*.bin")))


def upload(folder: Path, bucket: str, prefix: str, endpoint: str) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            s3.upload_file(str(p), bucket, f"{prefix}/{p.relative_to(folder).as_posix()}")


# ------------------------------------------------------------------------------------------------
# readers: each yields (ids, seismic batch) for one epoch; ``start`` resumes from a saved state


@dataclass
class Epoch:
    ids: list[int] = field(default_factory=list)
    prints: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0
    peak: int = 0
    state: object = None  # the state saved after ``stop_after`` samples, when asked
    fetched: int | None = None  # shards downloaded (gwi's cache counts them; the libraries' do not say)


class GwiReader:
    def __init__(self, url: str, limit: int, seed: int, window: int = WINDOW):
        self.url, self.limit, self.seed, self.window = url, limit, seed, window
        self.name = f"gwi ShardCache, window {window}"

    def epoch(self, cache: Path, stop_after: int | None = None, state=None) -> Epoch:
        from gwi.data.cache import ShardCache, StreamedDataset, stream_order

        out = Epoch()
        t = time.perf_counter()
        c = ShardCache(self.url, self.limit, root=cache, at_once=self.window + 1)
        try:
            ds = StreamedDataset(c)
            # the state is the position: the order is a pure function of (seed, epoch)
            order = stream_order(ds.units(np.arange(len(ds))), self.seed, 0, 0, 1, self.window)[0]
            start = int(state or 0)
            ds.plan(order[start:], ahead=self.window + 1)  # as training plans it
            for i in range(start, len(order), BATCH):
                idx = np.sort(order[i:i + BATCH])
                x, _ = ds.batch(idx, dtype=np.float16)
                for j, k in enumerate(idx.tolist()):
                    out.ids.append(k)
                    out.prints[k] = fingerprint(x[j])
                if stop_after is not None and len(out.ids) >= stop_after:
                    out.state = start + len(out.ids)
                    break
        finally:
            c.close()
        out.seconds = time.perf_counter() - t
        out.fetched = c.fetched
        return out


def read_batches(loader, out: Epoch, stop_after: int | None) -> bool:
    """A library loader's batches (``{"x", "id"}``) into ``out``; at ``stop_after`` samples its state is
    kept for the resume check and True is returned (stopped early)."""
    for b in loader:
        x = b["x"].numpy()
        for j, k in enumerate(b["id"].tolist()):
            out.ids.append(int(k))
            out.prints[int(k)] = fingerprint(x[j])
        if stop_after is not None and len(out.ids) >= stop_after:
            out.state = loader.state_dict()
            return True
    return False


class MosaicReader:
    name = "Mosaic streaming"

    def __init__(self, remote: str, limit: int, seed: int, per_shard: int):
        self.remote, self.limit, self.seed, self.per_shard = remote, limit, seed, per_shard

    def epoch(self, cache: Path, stop_after: int | None = None, state=None) -> Epoch:
        from streaming import StreamingDataLoader, StreamingDataset
        from streaming.base.util import clean_stale_shared_memory

        clean_stale_shared_memory()
        out = Epoch()
        t = time.perf_counter()
        ds = StreamingDataset(remote=self.remote, local=str(cache), shuffle=True, shuffle_seed=self.seed,
                              shuffle_algo="py1e", shuffle_block_size=WINDOW * self.per_shard, cache_limit=self.limit,
                              batch_size=BATCH, num_canonical_nodes=1)
        loader = StreamingDataLoader(ds, batch_size=BATCH, num_workers=0)
        if state is not None:
            loader.load_state_dict(state)
        if read_batches(loader, out, stop_after):
            # leaving an epoch early leaves its download threads running until the next epoch
            # starts, and the process then never exits: stop them as that next epoch would
            ds._iterator.exit()
        out.seconds = time.perf_counter() - t
        del loader, ds
        gc.collect()
        clean_stale_shared_memory()
        return out


class LitReader:
    name = "litdata"

    def __init__(self, remote: str, limit: int, seed: int, endpoint: str):
        self.remote, self.limit, self.seed, self.endpoint = remote, limit, seed, endpoint

    def epoch(self, cache: Path, stop_after: int | None = None, state=None) -> Epoch:
        from litdata import StreamingDataLoader, StreamingDataset
        from litdata.streaming.resolver import Dir

        out = Epoch()
        t = time.perf_counter()
        cache.mkdir(parents=True, exist_ok=True)
        ds = StreamingDataset(Dir(path=str(cache), url=self.remote), shuffle=True, seed=self.seed,
                              max_cache_size=self.limit, storage_options={"endpoint_url": self.endpoint})
        loader = StreamingDataLoader(ds, batch_size=BATCH, num_workers=0)
        if state is not None:
            loader.load_state_dict(state)
        read_batches(loader, out, stop_after)
        out.seconds = time.perf_counter() - t
        del loader, ds
        gc.collect()
        return out


# ------------------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", type=int, default=5 * LIMIT_SHARDS, help="shards in the dataset (default 25)")
    ap.add_argument("--per-shard", type=int, default=6, help="samples a shard (default 6: 4.3 MB a shard)")
    ap.add_argument("--repeats", type=int, default=2, help="cold epochs per reader, in alternating order")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv[1:])

    streaming, litdata = import_libraries()
    import boto3
    import moto
    import torch

    print("\n".join(machine_lines(argv, f"torch {torch.__version__}  numpy {np.__version__}  mosaicml-streaming "
                                        f"{streaming.__version__}  litdata {litdata.__version__}  boto3 "
                                        f"{boto3.__version__}  moto {moto.__version__}")))
    print(flush=True)
    start = time.perf_counter()
    failed = False
    with scratch_home("gwi-libs-") as work, bd.moto_server() as endpoint, bd.s3_env(endpoint, work):
        os.environ["S3_ENDPOINT_URL"] = endpoint  # Mosaic's variable for a non-AWS endpoint
        bucket = f"gwi-libs-{uuid.uuid4().hex[:8]}"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)

        # 1. the data, three ways
        log(f"writing a gwi dataset: {args.shards} shards of {args.per_shard} samples")
        local_url = bd.stream_dataset(f"file://{work}/store", "libs", args.shards, args.per_shard)
        local = Path(local_url.removeprefix("file://"))
        from gwi.data.sync import push

        url = f"s3://{bucket}/gwi/datasets/libs"
        push(local, url, progress=False)
        gwi_bytes = bd.dir_bytes(local)
        n = len(_open_local(str(local)))
        log("converting to MDS")
        t_mds, mds_bytes, mds_shards = to_mds(local, work / "mds", args.per_shard)
        log("converting with litdata.optimize")
        t_lit, lit_bytes, lit_chunks = to_lit(local, work / "lit", args.per_shard)
        t = time.perf_counter()
        upload(work / "mds", bucket, "mds", endpoint)
        upload(work / "lit", bucket, "lit", endpoint)
        log(f"uploaded both conversions in {time.perf_counter() - t:.1f} s")

        from gwi.data.shards import load_manifest, x_shards, y_shard_for
        from gwi.store import open_store

        m = load_manifest(open_store(url))
        shard = max(int(xs["bytes"]) + int(y_shard_for(m, xs)["bytes"]) for xs in x_shards(m))
        limit = LIMIT_SHARDS * shard
        conv = [
            ("gwi shards (prep's output, as is)", f"{args.shards} shards", f"{gwi_bytes / MB:.2f} MB", "-", "sha256 per file"),
            ("MDS (MDSWriter, no compression)", f"{mds_shards} shards", f"{mds_bytes / MB:.2f} MB",
             f"{t_mds:.2f} s ({gwi_bytes / MB / t_mds:.0f} MB/s)", "sha256 per shard (its own)"),
            ("litdata (optimize, 1 worker)", f"{lit_chunks} chunks", f"{lit_bytes / MB:.2f} MB",
             f"{t_lit:.2f} s ({gwi_bytes / MB / t_lit:.0f} MB/s)", "none"),
        ]

        # 2. throughput and the cache bound, 3. resume
        readers = [GwiReader(url, limit, args.seed), GwiReader(url, limit, args.seed, window=1),
                   MosaicReader(f"s3://{bucket}/mds", limit, args.seed, args.per_shard),
                   LitReader(f"s3://{bucket}/lit", limit, args.seed, endpoint)]
        truth: dict[int, str] = {}
        ds = _open_local(str(local))
        for s in range(0, n, 64):
            idx = np.arange(s, min(n, s + 64))
            x, _ = ds.batch(idx, dtype=np.float16)
            truth.update({int(i): fingerprint(x[j]) for j, i in enumerate(idx)})

        runs: dict[str, list[Epoch]] = {r.name: [] for r in readers}
        errors: dict[str, str] = {}
        for rep in range(args.repeats):
            for r in (readers if rep % 2 == 0 else readers[::-1]):
                if r.name in errors:
                    continue
                cache = work / f"cache-{readers.index(r)}-{rep}"
                try:
                    with bd.DiskWatch(cache, 0.05) as w:
                        e = r.epoch(cache)
                except Exception as ex:  # noqa: BLE001 - a library that cannot run here is reported, not fatal
                    errors[r.name] = f"{type(ex).__name__}: {str(ex)[:300]}"
                    log(f"{r.name}: FAILED: {errors[r.name]}")
                    continue
                e.peak = w.peak
                runs[r.name].append(e)
                log(f"{r.name}: epoch {rep + 1}: {len(e.ids)} samples in {e.seconds:.2f} s, peak {e.peak / MB:.2f} MB")
                shutil.rmtree(cache, ignore_errors=True)

        rows, resume_rows = [], []
        for r in readers:
            es = runs[r.name]
            if not es:
                rows.append((r.name, "-", "-", "-", "-", "-", "-", "-", f"FAILED: {errors.get(r.name, '?')[:80]}"))
                continue
            first = es[0]
            complete = sorted(first.ids) == list(range(n))
            right = all(truth[k] == p for e in es for k, p in e.prints.items())
            sec = statistics.median(e.seconds for e in es)
            peak = max(e.peak for e in es)
            notes = []
            if not complete:
                notes.append(f"epoch: {len(first.ids)} ids, {len(set(first.ids))} distinct of {n}")
            if not right:
                notes.append("DATA DIFFERS from gwi's copy")
            failed |= not (complete and right)
            rows.append((r.name, f"{n / sec:.1f}", f"{gwi_bytes / MB / sec:.1f}",
                         f"{min(e.seconds for e in es):.2f}..{max(e.seconds for e in es):.2f}",
                         f"{peak / MB:.3f} / {limit / MB:.3f}", f"{(peak - limit) / 1e3:+,.1f} kB",
                         "yes" if peak <= limit + shard else "NO",
                         "-" if first.fetched is None else f"{max(e.fetched for e in es)} of {args.shards}",
                         "; ".join(notes) or "every sample once, bytes equal gwi's"))

            # resume: stop half-way, start a new reader from the state, compare with the rest of the epoch
            # the same cache folder, emptied in between (litdata's state names its folder): a restart
            # on a fresh machine
            half = (n // 2) // BATCH * BATCH
            folder = work / f"resume-{readers.index(r)}"
            try:
                a = r.epoch(folder, stop_after=half)
                shutil.rmtree(folder, ignore_errors=True)
                b = r.epoch(folder, state=a.state)
            except Exception as ex:  # noqa: BLE001
                resume_rows.append((r.name, str(half), "-", "-", f"FAILED: {type(ex).__name__}: {str(ex)[:120]}"))
                failed = True
                continue
            rest = first.ids[len(a.ids):]
            same_head = a.ids == first.ids[:len(a.ids)]
            exact = b.ids == rest
            union = sorted(a.ids + b.ids) == list(range(n))
            resume_rows.append((r.name, str(len(a.ids)), str(len(b.ids)),
                                f"{'yes' if same_head else 'no'} / {'yes' if exact else 'no'}",
                                "every sample once" if union else
                                f"{len(a.ids) + len(b.ids)} read, {len(set(a.ids) | set(b.ids))} distinct of {n}"))
            failed |= not (exact and union)
            for d in work.glob("resume-*"):
                shutil.rmtree(d, ignore_errors=True)

    print(f"data: {n} samples, {args.shards} gwi shards of {args.per_shard} ({shard / MB:.2f} MB), "
          f"{gwi_bytes / MB:.1f} MB; cache limit {limit / MB:.2f} MB = {LIMIT_SHARDS} shards "
          f"({gwi_bytes / limit:.1f}x smaller than the data); batches of {BATCH}; window {WINDOW} shards")
    print()
    print(table(("format", "units", "bytes", "conversion", "checksums"), conv))
    print()
    print(table(("reader (one shuffled epoch, cold cache)", "samples/s", "MB/s", "epoch s (min..max)",
                 "peak disk / limit MB", "peak - limit", "<= limit + 1 shard", "fetches", "check"), rows))
    print()
    print(table(("resume after half an epoch", "read before", "read after",
                 "same head / rest == uninterrupted", "union"), resume_rows))
    print()
    print(f"total {time.perf_counter() - start:.0f} s; load {load_text()} at end; {busy_text()}")
    return 1 if failed or errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
