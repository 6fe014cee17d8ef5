"""The settings of a refinement (``gwi refine``), torch-free: plans check a refine job through them.

The inversion itself is :mod:`gwi.physics.refine`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from . import BACKENDS, OPTIMIZERS


@dataclass
class RefineConfig:
    backend: str = "openfwi"
    iterations: int = 60
    lr: float = 50.0  # m/s: gd's largest change per step (decaying to half), or Adam's step
    tv: float = 1e-3
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
        need(len(self.bands) >= 1 and all(b >= 0 for b in self.bands), "bands", "cut-offs in Hz >= 0 (0: full band)",
             self.bands)
        need(self.optimizer in OPTIMIZERS, "optimizer", " or ".join(OPTIMIZERS), self.optimizer)
        need(isinstance(self.batch_size, int) and self.batch_size >= 1, "batch_size", "an integer >= 1",
             self.batch_size)
        need(0 <= self.scale_range < 0.5, "scale_range", "a fraction in [0, 0.5)", self.scale_range)
        need(isinstance(self.scale_steps, int) and self.scale_steps >= 3, "scale_steps", "an integer >= 3",
             self.scale_steps)
