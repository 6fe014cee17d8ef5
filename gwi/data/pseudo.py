"""``gwi data pseudo``: a labelled dataset made from predictions of the test set (pseudo-labels).

The competition's winners trained, predicted the test set, forward-modelled the predicted maps and
trained again with those pairs added. A predicted map need not be right to be useful: its recording
is computed from it, so each pair is physically consistent, and the maps look like the test set's.

Input: the predicted maps, as a submission CSV (the format :mod:`gwi.predict` writes: 70 rows per test
file, the odd columns ``x_1 .. x_69``; the even columns are filled from their neighbours, as
``predict.read_submission`` fills them for refinement) or a predict run's folder (its
``submission.csv``); and the test data they were predicted from (a folder of ``<oid>.npy`` or a
prepared test dataset), which the manifest records and the CSV is checked against.

Each kept map is forward-modelled with a backend of :mod:`gwi.physics` and written through
``DatasetWriter`` (float16 shards, family ``pseudo``: a test file has no known family). A map that is
not finite or leaves 1500-4500 m/s (beyond :data:`TOLERANCE`) is skipped, never written, and listed
in the manifest's ``source.skipped``. With ``flip`` each map is followed by its mirror, made with
``inference.flip_seismic``/``flip_velocity`` (the flip training and predict's TTA use). With
``shard`` (i, N) only every N-th kept map from the i-th is written, as part i of N (``gwi data merge``
joins the parts, as it does augment's). :func:`sample_oids` says which test file each sample is of.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError, cut
from ..physics import BACKENDS, DEFAULT_BACKEND
from ..progress import update as report_progress
from ..sharding import shard_of
from .layout import NX, VMAX, VMIN

PSEUDO_VERSION = 1
FAMILY = "pseudo"
# m/s a value may lie outside 1500-4500 and still be used (then clipped into the range): the
# tolerance `gwi submission check` and the dataset writer's velocity check allow, so a map they accept
# is accepted here; predict clamps and writes 2 decimals, so only another tool's rounding gets near it.
# Beyond it the map is a failed prediction (an unclamped or diverged model), not a subsurface.
TOLERANCE = 1.0


@dataclass
class Predictions:
    """A submission's maps as stored: odd columns only, with the line of each file's first row."""

    odd: dict[str, np.ndarray] = field(default_factory=dict)  # kept oid -> (70, 35) float32 m/s: x_1, x_3 .. x_69
    skipped: dict[str, str] = field(default_factory=dict)  # oid -> why its map is not used
    first_line: dict[str, int] = field(default_factory=dict)  # every oid, kept or skipped


def predictions_file(ref: str) -> str:
    """The submission CSV of ``ref``: a ``.csv`` path or URL as it is, else a predict run's folder."""
    from ..runs import Run

    ref = str(ref)
    if ref.lower().endswith(".csv") or ("://" not in ref and Path(ref).is_file()):
        return ref
    return Run(ref).submission_url


def read_predictions(path: str | Path, where: str) -> Predictions:
    """The maps of the submission at local ``path`` (``where`` names it in errors). A malformed file
    (header, fields, ids, rows, non-numbers, a file without its 70 rows) is one error naming the line;
    a non-finite or out-of-range value only marks its map skipped."""
    from ..predict import COLUMNS, HEADER, ROWS

    p = Predictions()
    seen: dict[str, np.ndarray] = {}  # oid -> (70,) bool: rows read
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or ",".join(header) != HEADER:
            got = "an empty file" if header is None else repr(cut(",".join(header), 60))
            raise DataError(f"{where}, line 1: expected the header 'oid_ypos,x_1,x_3,...,x_69', got {got}")
        for rec in reader:
            ln = reader.line_num
            oid, row, vals = _parse_row(rec, ln, where, ROWS, COLUMNS)
            if oid not in seen:
                seen[oid] = np.zeros(ROWS, bool)
                p.odd[oid] = np.empty((ROWS, len(COLUMNS)), np.float32)
                p.first_line[oid] = ln
            if seen[oid][row]:
                raise DataError(f"{where}, line {ln}: id {rec[0]!r} appears twice (test file {oid} from line "
                                f"{p.first_line[oid]}); expected one row each")
            seen[oid][row] = True
            bad = ~np.isfinite(vals) | (vals < VMIN - TOLERANCE) | (vals > VMAX + TOLERANCE)
            if bad.any() and oid not in p.skipped:
                c = int(np.argmax(bad))
                p.skipped[oid] = (f"line {ln}: x_{COLUMNS[c]} = {vals[c]:g} m/s, expected a finite velocity in "
                                  f"{VMIN:.0f}-{VMAX:.0f} m/s (tolerance {TOLERANCE:g})")
            if oid not in p.skipped:  # (a skipped map is not kept: no float32 overflow of its huge values)
                p.odd[oid][row] = vals
    for oid, rows in seen.items():
        if not rows.all():
            missing = np.flatnonzero(~rows).tolist()
            raise DataError(f"{where}, line {p.first_line[oid]}: test file {oid} has {int(rows.sum())} of {ROWS} "
                            f"rows, expected all (missing {oid}_y_{missing[0]}{' ...' if len(missing) > 1 else ''})")
    for oid in p.skipped:
        del p.odd[oid]
    return p


def _parse_row(rec: list[str], ln: int, where: str, rows: int, columns: list[int]) -> tuple[str, int, np.ndarray]:
    """(oid, row, the 35 values as float64) of one CSV record, or an error naming ``where`` and line."""
    from ..predict import _ID  # the id pattern of the submission format, <oid>_y_<row>

    if len(rec) != 1 + len(columns):
        raise DataError(f"{where}, line {ln}: expected {1 + len(columns)} fields (oid_ypos, x_1 .. x_69), "
                        f"got {len(rec)}")
    m = _ID.match(rec[0])
    if not m or int(m.group(2)) >= rows:
        raise DataError(f"{where}, line {ln}: expected an id <oid>_y_<row> with row 0..{rows - 1}, got {rec[0]!r}")
    vals = np.empty(len(columns))  # float64: a huge value is reported as it is, not as float32's inf
    for k, text in enumerate(rec[1:]):
        try:
            vals[k] = float(text)
        except ValueError:
            raise DataError(f"{where}, line {ln}: x_{columns[k]} of {rec[0]}: expected a number, "
                            f"got {cut(text, 30)!r}") from None
    return m.group(1), int(m.group(2)), vals


def full_map(odd: np.ndarray) -> np.ndarray:
    """(70, 35) odd columns -> (70, 70) m/s, the even columns filled as ``predict.read_submission`` fills
    them (x_0 from x_1, x_2 .. x_68 between their odd neighbours), then clipped into 1500-4500 m/s: what
    is simulated is what is stored, within the range the network's output is scaled to."""
    from ..predict import COLUMNS, fill_even

    m = np.empty((odd.shape[0], NX), np.float32)
    m[:, COLUMNS] = odd
    return np.clip(fill_even(m), VMIN, VMAX)


def oids_of_test(test: str) -> list[str]:
    """The oids of the test data: a folder of ``<oid>.npy`` or a prepared (unlabelled) test dataset, of
    which only the manifest is read."""
    from ..store import is_url, open_store
    from .layout import discover_test
    from .shards import MANIFEST, load_manifest, x_shards

    ref = str(test)
    local = ref.removeprefix("file://")  # a file:// folder of .npy files is a folder
    if not is_url(local) and not (Path(local) / MANIFEST).is_file():
        return [o for o, _ in discover_test(local)]
    m = load_manifest(open_store(ref))
    if m.get("labelled", True):
        raise DataError(f"{ref}: a labelled dataset; expected the test data the predictions are of (a folder of "
                        "<oid>.npy or a dataset made by 'gwi data prep --test-dir')")
    oids = [o for s in x_shards(m) for o in (s.get("oids") or [])]
    if len(oids) != m["num_samples"]:
        raise DataError(f"{ref}: the manifest names {len(oids)} oids for {m['num_samples']} samples, expected one "
                        "per sample")
    return oids


def check_against_test(p: Predictions, oids: list[str], where: str, test: str) -> None:
    """The submission is of this test data: each of its files is there, and each file has a map."""
    known = set(oids)
    extra = [o for o in p.first_line if o not in known]
    if extra:
        o = extra[0]
        raise DataError(f"{where}, line {p.first_line[o]}: test file {o!r} is not in {test} ({len(extra)} such "
                        "file(s)); expected predictions of that test data")
    missing = sorted(known - set(p.first_line))
    if missing:
        raise DataError(f"{where}: no rows for {len(missing)} of the {len(known)} test files of {test} "
                        f"({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}); expected a map of "
                        "every file ('gwi merge' joins the parts of 'gwi predict --shard')")


def _resolved(ref: str) -> str:
    """A local path made absolute (the manifest says where, wherever the command ran); a URL as it is."""
    return ref if "://" in str(ref) else str(Path(ref).resolve())


def pseudo(predictions: str, test: str, out: str, name: str, *, backend: str = DEFAULT_BACKEND, flip: bool = False,
           shard: tuple[int, int] | None = None, batch_size: int = 16, device: str | None = None,
           shard_size: int = 500, overwrite: bool = False, exist_ok: bool = False,
           progress: bool | None = None) -> dict:
    """Dataset ``name`` in store ``out`` from the maps of ``predictions`` (a submission CSV or a predict
    run, path or URL) of the test data ``test``, forward-modelled with ``backend``; returns its manifest
    (or, with ``shard``, its part's). ``exist_ok``: the dataset (part) made by the same command from the
    same CSV bytes is returned without work."""
    from ..store import staged_input
    from .shards import existing_dataset, sha256_file

    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch size: expected a positive integer, got {batch_size!r}")
    csv_ref = _resolved(predictions_file(predictions))
    oids = oids_of_test(test)
    with staged_input(csv_ref) as local:
        if not Path(local).is_file():
            raise DataError(f"{csv_ref}: no such file; expected a submission CSV or a predict run's folder")
        # the CSV's bytes, not only its name: a rerun over a new prediction is new work
        settings = {"kind": "pseudo", "predictions": _resolved(predictions), "predictions_csv": csv_ref,
                    "predictions_sha256": sha256_file(local), "test": _resolved(test), "backend": backend,
                    "flip": bool(flip), "pseudo_version": PSEUDO_VERSION}
        part = f"{shard[0]}-of-{shard[1]}" if shard else None
        if exist_ok and not overwrite:
            done = existing_dataset(out, name, settings, part)
            if done is not None:
                return done
        p = read_predictions(local, csv_ref)
    check_against_test(p, oids, csv_ref, _resolved(test))
    kept = sorted(p.odd)  # by oid, the order test files keep everywhere
    if not kept:
        raise DataError(f"{csv_ref}: all {len(p.first_line)} maps are skipped (not finite, or outside "
                        f"{VMIN:.0f}-{VMAX:.0f} m/s); nothing to write")
    mine = shard_of(kept, shard)
    if not mine:
        raise DataError(f"shard {shard[0]}/{shard[1]}: no map of the {len(kept)} kept falls in this part; "
                        "expected at most as many parts as maps")
    # every part records the whole input alike (merge checks that the parts came from one command)
    source = {**settings, "test_files": len(oids), "oids": kept, "skipped": dict(sorted(p.skipped.items())),
              "shard": list(shard) if shard else None}
    return _simulate_and_write(p, mine, source, out, name, part, backend, flip, batch_size, device,
                               shard_size, overwrite, progress)


def _simulate_and_write(p: Predictions, mine: list[str], source: dict, out: str, name: str, part: str | None,
                        backend: str, flip: bool, batch_size: int, device: str | None, shard_size: int,
                        overwrite: bool, progress: bool | None) -> dict:
    """Forward-model the maps of ``mine`` a batch at a time and write them (each followed by its mirror
    with ``flip``) as dataset ``name`` (or its ``part``)."""
    import torch

    from .. import physics
    from ..console import progress as console_progress
    from ..inference import flip_seismic, flip_velocity
    from .shards import DatasetWriter

    fm = physics.backend(backend, device=device or ("cuda" if torch.cuda.is_available() else "cpu"))
    source = {**source, "device": str(fm.device), **fm.describe()}
    total = len(mine) * (2 if flip else 1)
    with DatasetWriter(out, name, source=source, labelled=True, shard_size=shard_size, overwrite=overwrite,
                       part=part) as w, console_progress(total, f"pseudo {name}", enabled=progress) as bar:
        for start in range(0, len(mine), batch_size):
            chunk = mine[start:start + batch_size]
            v = torch.from_numpy(np.stack([full_map(p.odd[o]) for o in chunk]))  # (B, 70, 70) m/s
            with torch.no_grad():
                x = fm(v).float().cpu()  # (B, 5, 1000, 70)
            y = v[:, None]  # (B, 1, 70, 70)
            # the mirror's recording is the recording mirrored, not a second simulation: half the cost,
            # and the very pair training's flip augmentation reads (the middle shot 10 m off, as there)
            if flip:  # each map, then its mirror: (2B, ...)
                x = torch.stack([x, flip_seismic(x)], 1).flatten(0, 1)
                y = torch.stack([y, flip_velocity(y)], 1).flatten(0, 1)
            w.add(FAMILY, x.numpy(), y.numpy(), src=f"pseudo:{chunk[0]}")
            bar.update(len(x))
            report_progress(state="running", done=bar.n, total=total, unit="samples")
        return w.finish()


def sample_oids(manifest: dict) -> list[tuple[str, bool]]:
    """(oid, mirrored) of every sample of a pseudo dataset (or part), in sample order: the kept oids of
    ``source.oids``, a part's share as ``--shard`` took it, a merged dataset's parts one after another,
    each map followed by its mirror when made with ``flip``."""
    src = manifest.get("source") or {}
    if src.get("kind") != "pseudo":
        raise DataError(f"dataset {manifest.get('name')}: source.kind is {src.get('kind')!r}, expected 'pseudo'")
    kept, copies = list(src["oids"]), (False, True) if src["flip"] else (False,)
    if src.get("shard"):
        groups = [shard_of(kept, tuple(src["shard"]))]
    else:
        n = int(src.get("parts") or 1)
        groups = [shard_of(kept, (i, n)) for i in range(1, n + 1)]
    out = [(o, f) for g in groups for o in g for f in copies]
    if len(out) != manifest["num_samples"]:
        raise DataError(f"dataset {manifest.get('name')}: source.oids gives {len(out)} samples, the manifest "
                        f"holds {manifest['num_samples']}")
    return out
