"""The optimisers (AdamW, or Muon + AdamW), their lr schedule, the EMA of the weights and the losses."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import TrainConfig
from ..errors import GwiError


class Schedule:
    """The lr factor at each step: a linear warm-up, then cosine decay to 0 (or flat) at ``total``.

    A budgeted run (``time_budget``) runs its first steps at lr 0 while it measures them (``total`` is
    None until sized), then starts the warm-up at ``start``; re-sizing later moves ``total`` and keeps
    the lr continuous by re-anchoring the decay at the current step. LambdaLR saves a callable
    object's attributes in its state_dict, so the checkpoint holds the whole schedule.
    """

    def __init__(self, total: int | None, warmup: int, kind: str = "cosine", start: int = 0):
        self.total, self.warmup, self.kind, self.start = total, warmup, kind, start
        self.anchor_step, self.anchor_progress = start + warmup, 0.0

    def progress(self, step: int) -> float:
        if step <= self.anchor_step:
            return self.anchor_progress
        frac = (step - self.anchor_step) / max(1, self.total - self.anchor_step)
        return min(1.0, self.anchor_progress + (1 - self.anchor_progress) * frac)

    def __call__(self, step: int) -> float:
        if self.total is None or step < self.start:
            return 0.0
        if step - self.start < self.warmup:
            return (step - self.start + 1) / self.warmup
        if self.kind == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * self.progress(step)))

    def size(self, step: int, total: int, warmup_frac: float) -> None:
        """The first sizing: warm up from ``step`` for ``warmup_frac`` of the steps left."""
        self.__init__(total, int(warmup_frac * (total - step)), self.kind, step)

    def resize(self, step: int, total: int) -> None:
        """A new end, the lr at ``step`` unchanged."""
        if step > self.anchor_step:
            self.anchor_progress, self.anchor_step = self.progress(step), step
        self.total = max(total, step)


class Optim:
    """A model's optimisers, stepped as one: AdamW for every parameter, or (``muon``) torch's Muon for the
    2-D weight matrices of hidden layers and AdamW for the rest (convolutions, norms, biases, embeddings),
    each with the same warm-up/decay schedule. Muon's lr is matched to AdamW's RMS update
    (``adjust_lr_fn="match_rms_adamw"``), so one ``lr`` serves both."""

    def __init__(self, cfg: TrainConfig, model: nn.Module, total: int):
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if cfg.optimizer == "muon":
            matrices = [p for n, p in named if p.ndim == 2 and "embed" not in n]
            rest = [p for n, p in named if not (p.ndim == 2 and "embed" not in n)]
            if not matrices:
                raise GwiError(f"optimizer muon: model {cfg.model} has no 2-D weight matrices for Muon "
                               "(a convolutional model); use adamw")
            self.opts = [torch.optim.Muon(matrices, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                          adjust_lr_fn="match_rms_adamw")]
            if rest:
                self.opts.append(torch.optim.AdamW(rest, lr=cfg.lr, weight_decay=cfg.weight_decay))
        else:
            self.opts = [torch.optim.AdamW([p for _, p in named], lr=cfg.lr, weight_decay=cfg.weight_decay)]
        # one Schedule shared by the optimisers: sized and re-sized once
        self.schedule = Schedule(total, 0 if total is None else int(cfg.warmup_frac * total), cfg.schedule)
        self.scheds = [torch.optim.lr_scheduler.LambdaLR(o, self.schedule) for o in self.opts]

    def zero_grad(self) -> None:
        for o in self.opts:
            o.zero_grad(set_to_none=True)

    def unscale(self, scaler: torch.amp.GradScaler) -> None:
        for o in self.opts:
            scaler.unscale_(o)

    def step(self, scaler: torch.amp.GradScaler) -> None:
        for o in self.opts:
            scaler.step(o)
        scaler.update()
        for sc in self.scheds:
            sc.step()

    @property
    def lr(self) -> float:
        return self.scheds[0].get_last_lr()[0]

    def state_dict(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.opts], "schedulers": [sc.state_dict() for sc in self.scheds]}

    def load_state_dict(self, opt_state: dict, sched_state: dict | None) -> None:
        """``opt_state`` from :meth:`state_dict`, or (checkpoints written before Muon) one AdamW state, with
        its scheduler's state in ``sched_state``."""
        if "optimizers" not in opt_state:
            opt_state = {"optimizers": [opt_state], "schedulers": [sched_state]}
        if len(opt_state["optimizers"]) != len(self.opts):
            raise GwiError(f"checkpoint holds {len(opt_state['optimizers'])} optimizer state(s), this run has "
                           f"{len(self.opts)}: was it trained with another --optimizer?")
        # each scheduler was made first: its constructor resets the lr, which the optimizer state restores
        for o, st in zip(self.opts, opt_state["optimizers"]):
            o.load_state_dict(st)
        for sc, st in zip(self.scheds, opt_state["schedulers"]):
            sc.load_state_dict(st)


class EMA:
    """The exponential moving average of a model's weights, with timm's warm-up of the decay
    (``min(decay, (1 + n) / (10 + n))`` after n updates) so a short run's average is not stuck near the
    initial weights. Floating tensors are averaged in one fused call; the others (BatchNorm's counter)
    follow the model."""

    def __init__(self, model: nn.Module, decay: float, updates: int = 0):
        self.decay, self.updates = decay, updates
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self._floats = [k for k, v in self.state.items() if v.dtype.is_floating_point]
        self._others = [k for k in self.state if k not in set(self._floats)]

    def load(self, state: dict) -> None:
        for k, v in state.items():
            self.state[k].copy_(v)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        msd = model.state_dict()
        torch._foreach_lerp_([self.state[k] for k in self._floats], [msd[k].detach() for k in self._floats], 1 - d)
        for k in self._others:
            self.state[k].copy_(msd[k])


# smooth_l1's beta is in normalised units (2 = 3000 m/s): quadratic only below 0.02 (30 m/s), where
# L1's constant gradient makes the last few m/s jitter; L1 above, like the metric
LOSS_FNS = {"l1": lambda p, t: (p - t).abs().mean(),
            "l2": lambda p, t: ((p - t) ** 2).mean(),
            "l1+l2": lambda p, t: (p - t).abs().mean() + ((p - t) ** 2).mean(),
            "smooth_l1": lambda p, t: nn.functional.smooth_l1_loss(p, t, beta=0.02)}
