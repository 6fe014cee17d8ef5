"""What every benchmark prints about the machine it ran on, and how busy that machine was; the
tables they print, and how a wall-clock training budget becomes a step count (:func:`plan_budget`).

Benchmarks are run as scripts (``python bench/NAME.py``), so they import this as ``_common``.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


def proc_stat() -> tuple[float, float]:
    """(busy, total) CPU seconds over all CPUs since boot."""
    f = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    idle, total = f[3] + f[4], sum(f[:8])  # idle + iowait; guest time is already inside user
    return (total - idle) / hz, total / hz


def cpu_busy(seconds: float = 1.0) -> float | None:
    """Share of all CPUs busy over ``seconds`` while we sleep: the load other processes bring.

    deepwave's and torch's OpenMP threads collapse (10x and worse, not 2x) when another process
    competes for the cores, so a busy machine is worth a loud line in the header.
    """
    try:
        b0, t0 = proc_stat()
        time.sleep(seconds)
        b1, t1 = proc_stat()
    except (OSError, ValueError, IndexError):
        return None
    return (b1 - b0) / max(t1 - t0, 1e-9)


def busy_text() -> str:
    busy = cpu_busy()
    if busy is None:
        return "CPU use by others unknown"
    text = f"{busy:.0%} of CPUs busy with other work"
    return text + ("  <- WARNING: timings will be unreliable" if busy > 0.15 else "")


def load_text() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def ram_text() -> str:
    with contextlib.suppress(OSError, ValueError, StopIteration):
        kb = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
                  if ln.startswith("MemTotal:"))
        return f"{kb / 2**20:.1f} GiB"
    return "unknown"


def machine_lines(argv: list[str], versions: str) -> list[str]:
    """The header every benchmark prints: machine, load, date, ``versions``, command."""
    return [
        f"machine : {cpu_name()}, {os.cpu_count()} cores, {ram_text()} RAM, {platform.system()} {platform.release()}",
        f"load    : {load_text()} (1/5/15 min) at start; {busy_text()}",
        f"date    : {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"python  : {platform.python_version()}  {versions}",
        f"command : {' '.join([sys.executable, *argv])}",
    ]


@contextlib.contextmanager
def scratch_home(prefix: str):
    """A temp folder that ``GWI_HOME`` and ``GWI_CACHE`` point into for the block: nothing gwi writes
    by default (cache, pulled data, run scratch, scheduler state) lands outside it."""
    import tempfile

    saved = {k: os.environ.get(k) for k in ("GWI_HOME", "GWI_CACHE")}
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        work = Path(tmp)
        os.environ["GWI_HOME"], os.environ["GWI_CACHE"] = str(work / "home"), str(work / "cache")
        try:
            yield work
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


# ------------------------------------------------------------------------------------------------
# progress, load by others, tables (shared by bench/models.py, bench/loop.py, bench/accuracy.py)


def log(msg: str) -> None:
    """Progress goes to stderr: stdout holds only the header and the tables."""
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


class OthersCPU:
    """Share of all CPUs that other processes used between ``start()`` and ``stop()``: the machine's
    busy time from /proc/stat minus this process's own CPU time (all its threads)."""

    def __init__(self):
        self.share: float | None = None

    def start(self) -> OthersCPU:
        try:
            self._b, self._t = proc_stat()
        except (OSError, ValueError, IndexError):
            self._b = None
        self._own = sum(os.times()[:2])
        return self

    def stop(self) -> float | None:
        if self._b is None:
            return None
        try:
            b, t = proc_stat()
        except (OSError, ValueError, IndexError):
            return None
        own = sum(os.times()[:2]) - self._own
        self.share = max(0.0, (b - self._b - own) / max(t - self._t, 1e-9))
        return self.share


def others_text(share: float | None) -> str:
    if share is None:
        return "CPU use by others unknown"
    return f"other processes used {share:.0%} of the CPUs" + \
        ("  <- WARNING: timings unreliable" if share > 0.15 else "")


def wait_idle(max_s: float, label: str) -> None:
    """Wait up to ``max_s`` seconds for other processes to use under 15% of the CPUs (``--wait-idle``):
    deepwave's and torch's OpenMP threads collapse (10x and worse) when another process competes."""
    if max_s <= 0:
        return
    t0 = time.monotonic()
    while True:
        busy = cpu_busy(1.0)  # this process sleeps meanwhile: what is busy is someone else
        if busy is None or busy < 0.15:
            return
        if time.monotonic() - t0 > max_s:
            log(f"{label}: machine still {busy:.0%} busy after waiting {max_s:.0f} s; going on")
            return
        log(f"{label}: waiting for the machine to go quiet ({busy:.0%} of CPUs busy)")
        time.sleep(4.0)


def table(head: tuple[str, ...], body: list[tuple[str, ...]], right: set[int] = frozenset()) -> str:
    widths = [max(len(c[i]) for c in (head, *body)) for i in range(len(head))]
    fmt = " | ".join(f"{{:{'>' if i in right else '<'}{w}}}" for i, w in enumerate(widths))
    sep = "-+-".join("-" * w for w in widths)
    return "\n".join([fmt.format(*head).rstrip(), sep, *(fmt.format(*c).rstrip() for c in body)])


def params_text(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} k"


# ------------------------------------------------------------------------------------------------
# a wall-clock budget as a step count


@dataclass
class BudgetPlan:
    per_step_s: float  # wall seconds per step, from the two probes
    fixed_s: float  # wall seconds of a run that are not steps (start-up, first slow step, validation)
    steps: int
    epochs: int
    probe_s: float  # wall seconds the probes took in all
    probe_others: float | None  # other processes' share of the CPUs during the (last) probes


def plan_budget(run: Callable[[int, int, str], tuple[dict, float]], budget_s: float, steps_per_epoch: int,
                guess_step_s: float | None, *, label: str, wait_s: float = 0.0, floor_step_s: float = 0.0,
                whole_epochs: bool = True, probe_frac: float = 0.08) -> BudgetPlan:
    """How many steps of ``run`` fit ``budget_s`` seconds of wall time, from two probe runs.

    ``run(steps, epochs, tag)`` trains that many steps and returns ``(metrics, wall_s)``. Probe a
    takes 2 steps, probe b 2 steps plus about ``probe_frac`` of the budget (guessed from
    ``guess_step_s``; in whole epochs when ``whole_epochs``). Their wall-time difference over their
    step difference is the time per step: the fixed cost of a run, the first slow step and the final
    validation cancel, and epoch boundaries in between are averaged in as in the real run. A shorter
    window is too noisy: a 6-step difference (~0.4 s) was off by +-30% on an idle 2-core machine.
    What is left of probe a is the fixed cost. The plan is whole epochs (``whole_epochs``) or
    whole steps that fit ``budget - fixed``, so an lr schedule spanning the run ends with it.
    With ``wait_s`` the probes run again once when other processes used >15% of the CPUs meanwhile;
    the per-step time is never taken below ``floor_step_s`` (a burst of load during probe a can make
    the difference absurdly small).
    """
    spe = max(1, steps_per_epoch)
    t0 = time.perf_counter()
    if whole_epochs:
        extra = spe * (max(1, round(probe_frac * budget_s / guess_step_s / spe)) if guess_step_s else 1)
    else:
        extra = max(4, round(probe_frac * budget_s / guess_step_s)) if guess_step_s else 4
    busy = None
    for attempt in (1, 2):
        others = OthersCPU().start()
        s1, s2 = 2, 2 + extra
        m1, w1 = run(s1, math.ceil(s1 / spe), "probe-a")
        m2, w2 = run(s2, math.ceil(s2 / spe), "probe-b")
        busy = others.stop()
        if attempt == 2 or wait_s <= 0 or busy is None or busy <= 0.15:
            break
        log(f"{label}: other processes used {busy:.0%} of the CPUs during the probes; probing again")
        wait_idle(wait_s, label)
    s1, s2 = m1["steps"], m2["steps"]
    per_step = max((w2 - w1) / max(1, s2 - s1), floor_step_s, 1e-3)
    fixed = max(0.0, w1 - s1 * per_step)
    fit = (budget_s - fixed) / per_step
    if whole_epochs:
        epochs = max(1, int(fit / spe))
        steps = epochs * spe
    else:
        steps = max(1, int(fit))
        epochs = math.ceil(steps / spe)
    log(f"{label}: {1e3 * per_step:.0f} ms/step, fixed {fixed:.1f} s -> {steps} steps ({epochs} epochs)")
    return BudgetPlan(per_step, fixed, steps, epochs, time.perf_counter() - t0, busy)


# ------------------------------------------------------------------------------------------------
# the bare train step


def bare_train_steps(cfg, device, precision: str, n: int, warmup: int, seed: int = 0) -> tuple[list[float], int]:
    """Seconds per bare train step of ``cfg.model`` at ``cfg.preset`` and ``cfg.batch_size`` (``n`` timed
    after ``warmup``), and its parameter count.

    Bare: forward + L1 loss + backward + AdamW step on normalised random tensors already on ``device``,
    under gwi's autocast for ``precision`` and a GradScaler for fp16; compiled and channels-last when
    ``cfg`` asks the loop for them. No data, flips, clipping or EMA: what gwi's loop adds is what a
    comparison with it measures. On a GPU each timed step sits between two synchronisations.
    """
    import torch

    from gwi.models import registry
    from gwi.training.precision import amp_context

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    torch.manual_seed(seed)
    model = registry.create_model(cfg.model, cfg.preset, **cfg.model_args).to(device).train()
    params = registry.count_parameters(model)
    gen = torch.Generator().manual_seed(seed)
    b = cfg.batch_size
    x = (torch.rand(b, *registry.INPUT_SHAPE, generator=gen) * 2 - 1).to(device)  # (B, 5, 1000, 70)
    y = (torch.rand(b, *registry.OUTPUT_SHAPE, generator=gen) * 2 - 1).to(device)  # (B, 1, 70, 70)
    if getattr(cfg, "channels_last", False):
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    net = torch.compile(model) if getattr(cfg, "compile", False) else model

    def step() -> None:
        with amp_context(device, precision):
            pred = net(x)
        loss = (pred.float() - y).abs().mean()
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(warmup):
        step()
    out = []
    for _ in range(n):
        sync()
        t = time.perf_counter()
        step()
        sync()
        out.append(time.perf_counter() - t)
    return out, params
