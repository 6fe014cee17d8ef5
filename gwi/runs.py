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
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property

from .errors import StoreError
from .store import Store, open_store

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
        return open_store(self.url)

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
    def progress_url(self) -> str:
        return self.key_url(PROGRESS)

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

    # -- the latest pointer -------------------------------------------------------------------------

    def pointer(self) -> dict | None:
        """``checkpoints/latest.json``, or None when the run has none (or it is unreadable)."""
        try:
            return json.loads(self.store.get_bytes(LATEST))
        except StoreError as e:
            if "no such object" in str(e):
                return None
            raise
        except ValueError:
            return None

    def latest_step(self) -> int | None:
        """The step of the newest published checkpoint; None when there is none or the store is
        unreachable (a resume then simply finds out for itself)."""
        try:
            return int(self.pointer()["latest"]["step"])
        except (StoreError, KeyError, TypeError, ValueError):
            return None
