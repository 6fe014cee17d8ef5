"""``gwi data prep``: competition folders → float16 shards + manifest in a store.

Source files are memory-mapped and converted a chunk at a time, so a 700 MB Kaggle file never sits
in RAM whole and a full 65,818-file test folder streams. With ``shard`` (i, N) only every N-th source
file from the i-th is converted, written as part ``i-of-N`` of the dataset: several machines prepare a
300 GB source together and ``gwi data merge`` joins the parts (as it does for augment).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from ..sharding import shard_of
from .layout import SEISMIC_SHAPE, discover_test, discover_train
from .shards import DatasetWriter, existing_dataset

CHUNK = 32  # samples per conversion step: ~45 MB of float32 seismic


def _progress(total: int, desc: str, enabled: bool | None):
    from ..console import progress

    return progress(total, desc, enabled=enabled)


def _load(path: Path) -> np.ndarray:
    try:
        a = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable .npy array ({e})") from None
    if not np.issubdtype(a.dtype, np.floating):
        raise DataError(f"{path}: dtype {a.dtype}, expected a floating-point array")
    return a


def _part(shard: tuple[int, int] | None) -> str | None:
    return f"{shard[0]}-of-{shard[1]}" if shard else None


def prep_train(src: str | Path, out: str, name: str, *, shard_size: int = 500, overwrite: bool = False,
               time_decimate: int = 1, velocity_tolerance: float = 1.0, progress: bool | None = None,
               shard: tuple[int, int] | None = None, exist_ok: bool = False) -> dict:
    pairs = discover_train(src)
    arrays = []
    for p in pairs:
        x, y = _load(p.x_path), _load(p.y_path)
        if x.ndim != 4:
            raise DataError(f"{p.x_path}: seismic shape {x.shape}, expected (n, 5, 1000, 70)")
        if y.shape[0] != x.shape[0]:
            raise DataError(f"{p.y_path}: {y.shape[0]} velocity samples, but {p.x_path} has {x.shape[0]} seismic samples")
        arrays.append((p, x, y))
    # the whole source describes every part alike (merge checks that the parts came from one command)
    source = {"kind": "kaggle-train", "path": str(Path(src).resolve()),
              "files": [{"family": p.family, "x": str(p.x_path), "y": str(p.y_path), "samples": int(x.shape[0])}
                        for p, x, _ in arrays], **({"shard": list(shard)} if shard else {})}
    if exist_ok and not overwrite and (done := existing_dataset(out, name, source, _part(shard))) is not None:
        return done  # a rerun job: this part is there, made from these files
    mine = shard_of(arrays, shard)
    total = sum(x.shape[0] for _, x, _ in mine)
    with DatasetWriter(out, name, source=source, labelled=True, shard_size=shard_size, overwrite=overwrite,
                       time_decimate=time_decimate, velocity_tolerance=velocity_tolerance, part=_part(shard)) as w, \
            _progress(total, f"prep {name}", progress) as bar:
        for p, x, y in mine:
            for i in range(0, x.shape[0], CHUNK):
                w.add(p.family, np.asarray(x[i:i + CHUNK]), np.asarray(y[i:i + CHUNK]),
                      src=str(p.x_path), y_src=str(p.y_path), first=i)
                bar.update(min(CHUNK, x.shape[0] - i))
        return w.finish()


def prep_test(test_dir: str | Path, out: str, name: str, *, shard_size: int = 500, overwrite: bool = False,
              time_decimate: int = 1, progress: bool | None = None, family: str = "test",
              shard: tuple[int, int] | None = None, exist_ok: bool = False) -> dict:
    every = discover_test(test_dir)
    source = {"kind": "kaggle-test", "path": str(Path(test_dir).resolve()), "files": len(every),
              **({"shard": list(shard)} if shard else {})}
    if exist_ok and not overwrite and (done := existing_dataset(out, name, source, _part(shard))) is not None:
        return done
    files = shard_of(every, shard)
    with DatasetWriter(out, name, source=source, labelled=False, shard_size=shard_size, overwrite=overwrite,
                       time_decimate=time_decimate, part=_part(shard)) as w, \
            _progress(len(files), f"prep {name}", progress) as bar:
        for i in range(0, len(files), CHUNK):
            part = files[i:i + CHUNK]
            xs = np.empty((len(part), *SEISMIC_SHAPE), np.float32)
            for b, (oid, path) in enumerate(part):
                a = _load(path)
                if tuple(a.shape) != SEISMIC_SHAPE:
                    raise DataError(f"{path}: shape {tuple(a.shape)}, expected {SEISMIC_SHAPE}")
                xs[b] = a
            # errors inside a chunk name the chunk's first file; re-check per file to name the culprit
            try:
                w.add(family, xs, None, src=str(part[0][1]), oids=[o for o, _ in part])
            except DataError:
                for b, (_, path) in enumerate(part):
                    w_check = xs[b:b + 1]
                    from .shards import check_seismic

                    check_seismic(w_check, str(path), 0)
                raise
            bar.update(len(part))
        return w.finish()
