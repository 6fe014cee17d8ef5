"""The settings of a refinement (``gwi refine``), torch-free: plans check a refine job through them.

The inversion itself is :mod:`gwi.physics.refine`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from . import BACKENDS, OPTIMIZERS

# how the priors are chosen: "fixed" (--tv/--smooth/--pull for every file) or "auto" (a prior set per
# file from its start map's family, gwi.physics.priors.classify)
PRIOR_MODES = ("fixed", "auto")
PRIOR_SETS = ("layered", "smooth")  # auto's sets: TV for piecewise-constant maps, a Laplacian for smooth ones
PRIOR_KEYS = ("tv", "smooth", "pull")
# the smooth set's Laplacian weight when --smooth is 0: its largest gradient a few percent of the
# data misfit's at the start (measured on two held-out maps, deepwave; see priors.TUNING_GRID)
DEFAULT_SMOOTH = 1e3


@dataclass
class RefineConfig:
    backend: str = "openfwi"
    iterations: int = 60
    lr: float = 50.0  # m/s: gd's largest change per step (decaying to half), or Adam's step
    tv: float = 1e-3
    smooth: float = 0.0  # weight of the mean squared Laplacian of the map (km/s per cell²)
    pull: float = 0.0  # weight of the mean squared difference to the start map (km/s)
    priors: str = "fixed"
    # weights per prior set (``{"layered": {"tv": .., "smooth": .., "pull": ..}, ...}``), e.g. chosen
    # on validation data (refine.tune); a set not named takes tv/smooth/pull as above
    prior_sets: dict = field(default_factory=dict)
    # a file whose refined map does not lower the data misfit keeps its start map (the model's)
    keep_start: bool = True
    bands: tuple[float, ...] = (5.0, 10.0, 0.0)  # low-pass cut-offs in Hz, 0 = the full band
    optimizer: str = "gd"
    batch_size: int = 4
    # a scan of each file's whole map times 1 ± scale_range (scale_steps values, on the first band)
    # before the iterations: a model that is a few percent off everywhere (the commonest error of a
    # smooth prediction) is fixed in one move that gradient steps make slowly; 0: no scan
    scale_range: float = 0.1
    scale_steps: int = 11
    time_budget_s: float = math.inf
    backend_options: dict = field(default_factory=dict)  # e.g. {"nbc": 40} for openfwi
    device: str | None = None

    def check(self) -> None:
        def need(ok: bool, name: str, expected: str, got) -> None:
            if not ok:
                raise ValueError(f"{name}: expected {expected}, got {got!r}")

        need(self.backend in BACKENDS, "backend", f"one of {', '.join(BACKENDS)}", self.backend)
        need(isinstance(self.iterations, int) and self.iterations >= 1, "iterations", "an integer >= 1", self.iterations)
        need(self.lr > 0, "lr", "a number > 0", self.lr)
        need(self.tv >= 0, "tv", "a number >= 0", self.tv)
        need(self.smooth >= 0, "smooth", "a number >= 0", self.smooth)
        need(self.pull >= 0, "pull", "a number >= 0", self.pull)
        need(self.priors in PRIOR_MODES, "priors", " or ".join(PRIOR_MODES), self.priors)
        for name, w in self.prior_sets.items():
            need(name in PRIOR_SETS, "prior_sets", f"sets among {', '.join(PRIOR_SETS)}", name)
            need(isinstance(w, dict) and set(w) == set(PRIOR_KEYS) and all(x >= 0 for x in w.values()),
                 f"prior_sets.{name}", f"weights {', '.join(PRIOR_KEYS)} >= 0", w)
        need(len(self.bands) >= 1 and all(b >= 0 for b in self.bands), "bands", "cut-offs in Hz >= 0 (0: full band)",
             self.bands)
        need(self.optimizer in OPTIMIZERS, "optimizer", " or ".join(OPTIMIZERS), self.optimizer)
        need(isinstance(self.batch_size, int) and self.batch_size >= 1, "batch_size", "an integer >= 1",
             self.batch_size)
        need(0 <= self.scale_range < 0.5, "scale_range", "a fraction in [0, 0.5)", self.scale_range)
        need(isinstance(self.scale_steps, int) and self.scale_steps >= 3, "scale_steps", "an integer >= 3",
             self.scale_steps)

    def weights(self, prior: str) -> tuple[float, float, float]:
        """(tv, smooth, pull) for a file given its prior set (``fixed``: the same for every file)."""
        if prior in self.prior_sets:
            return tuple(float(self.prior_sets[prior][k]) for k in PRIOR_KEYS)
        if prior == "layered":
            return (self.tv, 0.0, self.pull)
        if prior == "smooth":
            return (0.0, self.smooth or DEFAULT_SMOOTH, self.pull)
        return (self.tv, self.smooth, self.pull)
