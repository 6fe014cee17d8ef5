"""What the phases of the loop share: one rank's training :class:`State`, a time budget's :class:`Clock`,
and the RNG states and parameter digest a checkpoint and the final metrics hold."""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .. import budget
from ..config import TrainConfig
from ..progress import Heartbeat
from ..runs import Run
from ..tracking import Tracker
from .data import Data
from .distributed import Dist
from .optim import EMA, Optim

UNSIZED = 2 ** 62  # State.total of a budgeted run before its first steps are measured


@dataclass
class Clock:
    """A time budget's bookkeeping. Decisions are taken on rank 0 and broadcast, and they happen at
    step counts every rank agrees on (the end of the probe, every ``every`` steps), so DDP ranks stay
    in step."""

    budget_s: float
    started: float  # time.time() the budget counts from
    fresh: bool = True  # the schedule is not sized yet (the probe's steps run at lr 0)
    sized_here: bool = False  # this process sized the schedule (else it resumed someone else's plan)
    planned_step_s: float | None = None  # the step time the resumed schedule was sized with
    costs: budget.Costs | None = None
    probe_from: int = 0  # the step the loop began at in this process
    probe_steps: int = budget.PROBE_STEPS  # steps timed before sizing (more when resuming)
    probe_t: float = 0.0  # when the probe's first (untimed) step ended
    every: int = 0  # steps between periodic validation + checkpoint; 0 until sized
    mark_t: float = 0.0  # the end of the last measurement (probe or periodic event)
    mark_step: int = 0

    @property
    def spent(self) -> float:
        return time.time() - self.started

    @property
    def every_s(self) -> float:
        return budget.interval_s(self.budget_s)

    def record(self) -> dict:
        """What a checkpoint keeps, so a resume continues the same schedule."""
        return {"budget_s": self.budget_s, "every": self.every,
                **({k: getattr(self.costs, k) for k in ("step_s", "val_s", "publish_s")} if self.costs else {})}


@dataclass
class State:
    """One rank's training: where it runs, the model and its optimiser, and how far it has come."""

    cfg: TrainConfig
    d: Dist
    device: torch.device
    precision: str
    data: Data
    run: Run | None  # rank 0 alone writes to the run folder
    say: Callable
    args: dict  # the model's constructor arguments, saved in every checkpoint
    model: nn.Module  # the bare model: saved, validated, averaged into the EMA
    optim: Optim
    scaler: torch.amp.GradScaler
    ema: EMA | None
    n_params: int
    steps_per_epoch: int
    total: int  # the steps this run takes in all
    net: nn.Module | None = None  # what the loop calls: the model, or its DDP wrapper
    hb: Heartbeat | None = None  # rank 0's
    tracker: "Tracker | None" = None  # rank 0's: TensorBoard (and MLflow) scalars, curves.png
    step: int = 0
    epoch: int = 0
    best: float = math.inf
    history: list = field(default_factory=list)
    resumed_from: str | None = None  # the checkpoint's path
    resumed_step: int = 0  # the step it resumed from (0: from scratch)
    resume_fallback: str | None = None  # why an older checkpoint than the newest was used
    t_loop: float = 0.0  # when this process's loop began, and what it has done since
    start_step: int = 0
    samples_seen: int = 0
    last_loss: float | None = None  # read on the host every log_every steps
    loss_sum: torch.Tensor | None = None  # on the device: the losses since the last read
    loss_n: int = 0
    loop_s: float = 0.0  # seconds in training steps and their data waits (no validation, no checkpoints)
    loop_samples: int = 0
    initialised_from: dict | None = None  # --init-from: where the first weights came from
    clock: Clock | None = None  # a time budget's bookkeeping (time_budget set)
    budgeted: bool = False  # the schedule was sized by a budget: steps, not epochs, bound the loop
    budget_record: dict | None = None  # a resumed budgeted checkpoint's, kept when no budget is given now

    @property
    def device_text(self) -> str:
        return str(self.device) + (f" x{self.d.world}" if self.d.enabled else "")

    @property
    def best_or_none(self) -> float | None:
        return None if self.best == math.inf else self.best

    def beat(self, **kw) -> None:
        """Update the heartbeat (rank 0; the other ranks have none)."""
        if self.hb is not None:
            self.hb.update(**kw)


def rng_state() -> dict:
    np_state = np.random.get_state()
    st = {"torch": torch.get_rng_state(), "python": random.getstate(),
          "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                    "has_gauss": int(np_state[3]), "cached": float(np_state[4])}}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate(_tuplify(st["python"]))
    n = st["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in st and torch.cuda.is_available() and len(st["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(st["cuda"])


def _tuplify(x):
    return tuple(_tuplify(i) for i in x) if isinstance(x, (list, tuple)) else x


def param_digest(model: nn.Module) -> str:
    """sha256 of the parameters (not buffers: BatchNorm statistics follow each rank's last batch)."""
    h = hashlib.sha256()
    for k, v in model.named_parameters():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
