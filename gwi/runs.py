"""The run layout's one home: where a run keeps its files in a store, and how they are read and written.

A run is a folder (prefix) in a store, ``STORE/runs/<spec>/<job>`` for a planned job or any URL given to
``gwi train --run``::

    checkpoints/step-<n>.pt          model, optimiser, EMA, RNG, normalisation, schedule: all resume needs
    checkpoints/latest.json          {"latest": entry, "history": [entry, ...]}; entry = path, step, bytes, sha256
    progress.json                    the run's own heartbeat (training)
    metrics.json                     the final validation report
    attempts/<n>/progress.json       the heartbeat of attempt n, launched by the scheduler
    attempts/<n>/cancel              a flag every gwi process of attempt n obeys
    ensemble.json, submission.csv, uncertainty.npy, plots/    what ensemble and predict jobs write

No other module spells these paths (a test checks): train, predict, ensemble, the scheduler and the
adapters ask a :class:`Run`.

A checkpoint is published in two steps: ``step-<n>.pt`` is uploaded, then ``latest.json`` is replaced
to point at it with its size and sha256. A reader never follows a pointer to a partial upload, and a
corrupt file is detected and the previous good one in the pointer's history is used instead.

Unavailable is not corrupt: a store that cannot be reached (after the store's patience) raises
:class:`~gwi.errors.StoreUnavailable` out of :meth:`Run.load_latest`, so ``gwi train`` exits 75 and is
tried again later. Falling back to an older checkpoint throws steps away, so only proof that the
newer one is bad allows it: a size/sha256 mismatch, a blob the pointer names that is gone, or a file
torch cannot load. The entry returned then says why, under ``"fallback"``.

The pointer is a convenience, the blobs are the truth: a pointer that is missing or unreadable (not
JSON, the wrong shape, an entry without its size) is rebuilt from the blobs present, newest first,
each verified by loading it (one warning line); a blob that cannot be proven corrupt is never
trained over from step 0 (an error says so). A publish deletes older blobs only after the blob that
replaces them is in the store at its full size, and never a blob of a later step.

torch is imported only inside the functions that save or load checkpoints: the scheduler and the
adapters import this module and stay torch-free.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import GwiError, StoreError, StoreUnavailable, cut
from .store import Store, open_store, resolve_url

if TYPE_CHECKING:
    import torch

    from .inference import Normalizer

RUNS = "runs"
CHECKPOINTS = "checkpoints"
LATEST = f"{CHECKPOINTS}/latest.json"
PROGRESS = "progress.json"
METRICS = "metrics.json"
CANCEL = "cancel"
ATTEMPTS = "attempts"
# what ensemble and predict jobs write into their run folder
ENSEMBLE = "ensemble.json"
SUBMISSION = "submission.csv"
UNCERTAINTY = "uncertainty.npy"
EVALUATION = "evaluation.json"  # gwi evaluate's report (a plan's evaluate job)
WORST = "worst.png"  # its worst samples drawn
PLOTS = "plots"


def run_url(store_url: str, spec: str, job: str) -> str:
    """The run folder of job ``job`` of plan ``spec``."""
    return f"{store_url.rstrip('/')}/{RUNS}/{spec}/{job}"


def relative_run_path(url: str) -> str | None:
    """``s3://b/x/runs/day2/egnn/...`` -> ``runs/day2/egnn/...`` (a mirror keeps this part), or None."""
    marker = f"/{RUNS}/"
    if marker not in url:
        return None
    return RUNS + "/" + url.split(marker, 1)[1]


@dataclass(frozen=True)
class Run:
    """A run folder in a store, named by its URL (``file:///…/runs/day2/egnn`` or ``s3://b/runs/…``)."""

    url: str
    # seconds a store call waits out an outage (None: GWI_STORE_PATIENCE_S); the scheduler passes 0
    patience: float | None = field(default=None, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "url", str(self.url).rstrip("/"))

    @classmethod
    def of_attempt(cls, heartbeat_url: str) -> "Run":
        """The run an attempt's heartbeat URL belongs to."""
        head, sep, _ = heartbeat_url.rpartition(f"/{ATTEMPTS}/")
        if not sep:
            raise ValueError(f"expected RUN/{ATTEMPTS}/N/{PROGRESS}, got {heartbeat_url!r}")
        return cls(head)

    @cached_property
    def store(self) -> Store:
        return open_store(self.url, patience=self.patience)

    def key_url(self, key: str) -> str:
        return f"{self.url}/{key}"

    # -- paths (keys relative to the run folder) ------------------------------------------------

    @staticmethod
    def checkpoint_key(step: int) -> str:
        return f"{CHECKPOINTS}/step-{step}.pt"

    @staticmethod
    def attempt_key(n: int, name: str = PROGRESS) -> str:
        return f"{ATTEMPTS}/{n}/{name}"

    def attempt_heartbeat_url(self, n: int) -> str:
        return self.key_url(self.attempt_key(n))

    @property
    def ensemble_url(self) -> str:
        return self.key_url(ENSEMBLE)

    @property
    def submission_url(self) -> str:
        return self.key_url(SUBMISSION)

    @property
    def uncertainty_url(self) -> str:
        return self.key_url(UNCERTAINTY)

    @property
    def plots_url(self) -> str:
        return self.key_url(PLOTS)

    @property
    def evaluation_url(self) -> str:
        return self.key_url(EVALUATION)

    @property
    def worst_url(self) -> str:
        return self.key_url(WORST)

    # -- the latest pointer -------------------------------------------------------------------------

    def pointer(self) -> dict | None:
        """``checkpoints/latest.json``, or None when the run has none (or it is unreadable).
        A store that cannot be reached raises (StoreUnavailable): that is not "no checkpoint"."""
        return self._read_pointer()[0]

    def _read_pointer(self) -> tuple[dict | None, str | None]:
        """(the pointer, None), (None, None) when there is none, or (None, what is wrong with it): a
        pointer is ``{"latest": entry, "history": [entry, ...]}`` and every entry has its path, step,
        size and sha256, else it cannot be used to verify anything."""
        try:
            raw = self.store.get_bytes(LATEST)
        except StoreError as e:
            if "no such object" in str(e):
                return None, None
            raise
        try:
            ptr = json.loads(raw)
        except ValueError as e:
            return None, f"not JSON: {e}"
        if not isinstance(ptr, dict) or not isinstance(ptr.get("history", []), list):
            return None, f"expected {{\"latest\": ..., \"history\": [...]}}, got {type(ptr).__name__}"
        for e in [ptr.get("latest")] + ptr.get("history", []):
            why = _entry_problem(e)
            if why:
                return None, why
        return ptr, None

    def latest_step(self) -> int | None:
        """The step of the newest published checkpoint; None when there is none or the store is
        unreachable (a resume then simply finds out for itself)."""
        try:
            return int(self.pointer()["latest"]["step"])
        except (StoreError, TypeError):
            return None

    # -- writing ----------------------------------------------------------------------------------

    def write_json(self, name: str, obj: dict) -> None:
        """A small JSON file in the run folder (``PROGRESS``, ``METRICS``)."""
        self.store.put_bytes(name, _json(obj))

    def publish_checkpoint(self, ckpt: dict, step: int, keep: int) -> dict:
        """Upload ``ckpt`` as step ``step``, then point ``latest.json`` at it (size, sha256) with the
        previous entries as its history; checkpoints beyond the newest ``keep`` are deleted.
        Returns the new pointer entry.

        Safe under an outage: each call waits (the store's patience) and may then raise; a blob
        without a pointer is harmless (the old pointer stays valid, and the next publish prunes it).
        Nothing is deleted until the new blob is in the store at its full size, and never a blob of a
        later step than this one (another attempt's, or one an unreadable pointer lost track of)."""
        import torch

        from .data.shards import sha256_file

        key = self.checkpoint_key(step)
        with scratch_dir() as tmp:
            local = tmp / Path(key).name
            try:
                torch.save(ckpt, local)
            except (RuntimeError, OSError) as e:  # a full disk: torch says "unexpected pos ..."
                free = shutil.disk_usage(tmp).free
                raise GwiError(f"cannot write checkpoint step {step} to {local} ({free / 2**20:.0f} MiB free there; "
                               f"is the disk full? GWI_CACHE moves it): {e}") from None
            entry = {"path": key, "step": step, "epoch": ckpt["epoch"], "bytes": local.stat().st_size,
                     "sha256": sha256_file(local), "time": _now(), "rank": int(os.environ.get("RANK", "0"))}
            self.store.put_file(local, key, move=True)
        old = self.pointer() or {}
        history = [entry] + [h for h in [old.get("latest")] + old.get("history", []) if h and h["path"] != key]
        self.store.put_bytes(LATEST, _json({"latest": entry, "history": history[1:keep]}))
        if (size := self.store.size(key)) != entry["bytes"]:
            raise GwiError(f"{self.key_url(key)}: {size} bytes in the store after the upload, expected "
                           f"{entry['bytes']}; older checkpoints kept")
        kept = {h["path"] for h in history[:keep]}
        for k in self.store.list(CHECKPOINTS):
            if k not in kept and (s := _blob_step(k)) is not None and s < step:
                self.store.delete(k)
        return entry

    # -- reading ----------------------------------------------------------------------------------

    def load_latest(self, log) -> tuple[dict | None, dict | None]:
        """(checkpoint, its pointer entry) of the newest checkpoint whose size and sha256 match its
        entry, trying the pointer's history in turn; (None, None) when there is none.

        Only a bad checkpoint (mismatch, missing blob, unloadable) is skipped, and the entry
        returned then carries ``"fallback"``: why the newer ones were skipped. A store outage
        raises StoreUnavailable instead: an older checkpoint would silently lose steps.

        Blobs the pointer does not name (all of them, when it is missing or unreadable) come after
        its entries, newest first, each verified by loading it. When none loads and one of them (or
        one whose sha256 matched) could not be proven corrupt, this raises rather than let training
        start over them from step 0."""
        ptr, problem = self._read_pointer()
        entries = [e for e in [ptr.get("latest")] + ptr.get("history", []) if e] if ptr else []
        named = {e["path"] for e in entries}
        blobs = sorted(((s, k) for k in self.store.list(CHECKPOINTS) if k not in named
                        and (s := _blob_step(k)) is not None), reverse=True)
        if problem:
            log(f"warning: {LATEST} is unreadable ({cut(problem, 120)}); rebuilding it from the {len(blobs)} "
                "checkpoint(s) in the run, newest first")
        elif ptr is None and blobs:
            log(f"warning: {LATEST} is missing but {len(blobs)} checkpoint(s) are there; using the newest that loads")
        skipped, unproven = [], []
        for entry in entries + [{"path": k, "step": s} for s, k in blobs]:
            ckpt, why, proven = self._load_verified(entry)
            if ckpt is not None:
                return ckpt, ({**entry, "fallback": "; ".join(skipped)} if skipped else entry)
            log(f"checkpoint {entry['path']} {why}; trying the previous one")
            skipped.append(f"{entry['path']} {why}")
            if not proven:
                unproven.append(entry["path"])
        if unproven:
            raise GwiError(f"{self.url}: no checkpoint loads, and {', '.join(unproven)} may not be corrupt (it could "
                           "be a newer format than this gwi reads); refusing to train over it from step 0. Move "
                           f"{CHECKPOINTS}/ aside to start afresh, or resume with the gwi that wrote it")
        if entries or blobs:
            log("no readable checkpoint found; starting from scratch")
        return None, None

    def mirror_latest(self, root: Path, log) -> str:
        """Copy the newest verified checkpoint to this run's place under ``root`` (a store mirror, as
        ``GWI_STORE_MAP`` reads one), with a pointer naming only it; returns its path under ``root``."""
        rel = relative_run_path(self.url)
        if rel is None:
            raise ValueError(f"run: expected STORE/{RUNS}/..., got {self.url!r}")
        ckpt, entry = self.load_latest(log)
        if ckpt is None:
            raise GwiError(f"{self.url}: no usable checkpoint to package")
        from .paths import safe_join

        dest = Path(root)
        for part in (rel, entry["path"]):  # names read from the store stay inside the mirror
            dest = safe_join(dest, part)
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.store.get_file(entry["path"], dest)
        (safe_join(root, rel) / LATEST).write_text(json.dumps({"latest": entry, "history": []}, indent=1))
        return f"{rel}/{entry['path']}"

    def _load_verified(self, entry: dict) -> tuple[dict | None, str, bool]:
        """(the checkpoint, "", True) or (None, why it is bad, whether that proves it corrupt). An entry
        with a size and sha256 is checked against them; a bare blob (``path`` and ``step`` only) is
        verified by loading it and finding its own step inside. StoreUnavailable and any other
        refusal of the store (access denied) propagate: they say nothing about the checkpoint."""
        import torch

        from .data.shards import sha256_file

        path = entry["path"]
        with scratch_dir() as tmp:
            local = tmp / Path(path).name
            try:
                self.store.get_file(path, local)
            except StoreUnavailable:
                raise
            except StoreError as e:
                if "no such object" not in str(e):
                    raise
                return None, f"is missing ({e})", True
            if "sha256" in entry and (local.stat().st_size != entry["bytes"] or sha256_file(local) != entry["sha256"]):
                return None, "is truncated or corrupt (size/sha256 mismatch)", True
            try:
                ckpt = torch.load(local, map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001 - any unreadable file falls back the same way
                return None, f"cannot be loaded ({type(e).__name__}: {cut(str(e), 120)})", False
            if "sha256" not in entry:
                if not (isinstance(ckpt, dict) and ckpt.get("step") == entry["step"]):
                    return None, f"does not hold step {entry['step']}", False
                # now it is known good: the entry a rebuilt pointer (or a mirror's) can verify it by
                entry.update(bytes=local.stat().st_size, sha256=sha256_file(local), epoch=ckpt.get("epoch"))
            return ckpt, "", True


def _blob_step(key: str) -> int | None:
    """``checkpoints/step-<n>.pt`` -> n; None for any other key."""
    name = key.rpartition("/")[2]
    if key.startswith(CHECKPOINTS + "/") and name.startswith("step-") and name.endswith(".pt"):
        digits = name[len("step-"):-len(".pt")]
        if digits.isdigit():
            return int(digits)
    return None


def _entry_problem(e) -> str | None:
    """What keeps a pointer entry from verifying its blob, or None."""
    if not isinstance(e, dict):
        return f"an entry is {type(e).__name__}, expected an object"
    for key, kind in (("path", str), ("step", int), ("bytes", int), ("sha256", str)):
        if not isinstance(e.get(key), kind) or isinstance(e.get(key), bool):
            return f"an entry's {key!r}: expected {kind.__name__}, got {cut(repr(e.get(key)))}"
    if _blob_step(e["path"]) is None:
        return f"an entry's path: expected {CHECKPOINTS}/step-N.pt, got {cut(repr(e['path']))}"
    return None


def _json(obj) -> bytes:
    return json.dumps(obj, indent=1, default=str).encode()


def _now() -> str:
    # progress.now_iso's format; progress imports this module, so it is not imported back
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    """A temporary folder in the gwi cache (checkpoints can be larger than ``/tmp``), removed after."""
    from .data.sync import cache_root

    root = cache_root() / "scratch"
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="run-", dir=root) as tmp:
        yield Path(tmp)


# ------------------------------------------------------------------------------------------------
# models from checkpoints


@dataclass
class LoadedModel:
    """A trained model in eval mode, with the normalisation it was trained with."""

    name: str
    model: torch.nn.Module
    norm: Normalizer
    source: str  # the checkpoint's URL or file
    step: int | None
    split: str | None = None  # the validation split it was trained with


def load_model(ref: str, device, *, use_ema: bool = True) -> LoadedModel:
    """The model in a run (``ref`` a run URL: its newest verified checkpoint) or in a ``.pt``
    file/URL, on ``device``; with its EMA weights when it has them and ``use_ema``.
    ``GWI_STORE_MAP`` serves either from a mirror."""
    from .inference import Normalizer
    from .models import registry

    ckpt, source = read_checkpoint(str(ref))
    if ckpt.get("format") != "gwi-checkpoint":
        raise GwiError(f"checkpoint {ref}: not a gwi checkpoint")
    name, args = ckpt["model"]["name"], ckpt["model"]["args"]
    model = registry.build_from_args(name, args)
    model.load_state_dict(ckpt["ema"] if use_ema and ckpt.get("ema") else ckpt["state_dict"])
    model.to(device).eval()
    n = ckpt["normalisation"]
    norm = Normalizer(n["seis_min"], n["seis_max"], n["vel_min"], n["vel_max"], n.get("vel_mean"))
    return LoadedModel(name, model, norm, source, ckpt.get("step"), ckpt.get("split"))


def read_checkpoint(ref: str) -> tuple[dict, str]:
    """(checkpoint, the URL or file it came from) for a run URL or a ``.pt`` file/URL."""
    if ref.endswith(".pt"):
        return _read_pt(resolve_url(ref))
    run = Run(ref)
    ckpt, entry = run.load_latest(lambda msg: print(f"gwi: {msg}", file=sys.stderr))
    if ckpt is None:
        raise GwiError(f"{ref}: no usable checkpoint (expected {LATEST} in the run folder)")
    return ckpt, run.key_url(entry["path"])


def _read_pt(ref: str) -> tuple[dict, str]:
    import torch

    with scratch_dir() as tmp:
        if "://" in ref and not ref.startswith("file://"):
            base, _, name = ref.rpartition("/")
            path = tmp / name
            open_store(base).get_file(name, path)
        else:
            path = Path(ref.removeprefix("file://"))
        if not path.is_file():
            raise GwiError(f"checkpoint {ref}: no such file")
        try:
            return torch.load(path, map_location="cpu", weights_only=True), ref
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is one clear error
            raise GwiError(f"checkpoint {ref}: cannot be loaded ({type(e).__name__}: {e})") from None
