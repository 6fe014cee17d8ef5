"""Time budgets: ``2h30m`` read as seconds, and a training schedule sized to end inside one.

Pure functions (no torch): the training loop measures, this module decides. A budgeted run spends its
time on four things — start-up (already spent when sizing), training steps, periodic validations with
checkpoints (so a platform that dies loses little), and the final validation with the last
checkpoint — and keeps a margin for the variance of all of them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smhd])")


def parse_duration(text, allow_auto: bool = False) -> float:
    """Seconds in ``text``: ``90s``, ``45m``, ``1.5h``, ``2h30m``, ``1d``, or a bare number of seconds;
    with ``allow_auto``, ``auto`` is ``inf`` (the attempt's time limit decides)."""
    if allow_auto and (text == "auto" or text == math.inf):
        return math.inf
    if isinstance(text, bool):
        raise ValueError(f"expected a duration like 90s, 45m, 1.5h or 2h30m, got {text!r}")
    if isinstance(text, (int, float)):
        secs = float(text)
    else:
        s = str(text).strip().lower().replace(" ", "")
        try:
            secs = float(s)
        except ValueError:
            parts = _PART.findall(s)
            if not parts or "".join(n + u for n, u in parts) != s:
                raise ValueError(f"expected a duration like 90s, 45m, 1.5h or 2h30m, got {text!r}") from None
            secs = sum(float(n) * _UNITS[u] for n, u in parts)
    if not math.isfinite(secs) or secs <= 0:
        raise ValueError(f"expected a positive duration, got {text!r}")
    return secs


def format_duration(secs: float) -> str:
    """``2h30m``, ``45m``, ``1m30s``, ``12.5s``: how a person writes it, and parse_duration reads back."""
    if secs < 60:
        return f"{secs:.3g}s"
    m, s = divmod(round(secs), 60)
    h, m = divmod(m, 60)
    return "".join(f"{v}{u}" for v, u in ((h, "h"), (m, "m"), (s, "s")) if v) or "0s"


# steps run before sizing: the first pays one-off costs (allocation, cudnn autotuning, compilation)
# and is not timed; the rest give the step time. A fresh run's probe steps run at lr 0, so they are
# few; a resumed run's are ordinary steps of its schedule, so it measures longer and more surely
PROBE_STEPS = 3
RESUME_PROBE_STEPS = 10
# a checkpoint and a validation at least this often, so a platform that dies loses little
MAX_INTERVAL_S = 900.0
# a re-measured step time within this fraction of the planned one keeps a resumed schedule as it is
# (a like machine continues exactly the same schedule). Half: the same machine measured 25% slower
# after a resume on a shared CPU (a 3-step probe against a 10-step one), while a different class of
# device (T4 against A100, CPU against GPU) differs by 2x or more
KEEP_WITHIN = 0.5
# the process that sized a schedule re-fits it to what is left of its budget at every checkpoint
# (its first steps were a short measurement, its first checkpoint's cost a guess), unless the
# change is smaller than this fraction of the steps left
REFIT_ABOVE = 0.03


# set by the scheduler for an attempt with an hour limit (the job's max_hours, the platform's session
# cap, its weekly quota, the job's dollars left): seconds the attempt may run
ENV_LIMIT = "GWI_TIME_LIMIT_S"


def attempt_budget_s(limit_s: float) -> float:
    """The training budget inside an attempt's limit: less a margin for what runs before gwi starts
    (a platform's container start and bootstrap) and after it (uploading the log)."""
    return limit_s - max(120.0, 0.05 * limit_s)


def effective_budget_s(time_budget: float, limit_s: float | None) -> float:
    """The budget a train process uses: its own (``inf``: ``auto``, the attempt's limit), capped by
    the attempt's limit; 0 (size by epochs) when it has none and no limit is set."""
    if not time_budget:
        return 0.0
    if limit_s is not None:
        time_budget = min(time_budget, attempt_budget_s(limit_s))
    return 0.0 if math.isinf(time_budget) else max(time_budget, 1.0)


@dataclass
class Costs:
    """Seconds per thing, as measured (or, before the first, estimated)."""

    step_s: float  # one training step, its data wait included
    val_s: float  # one validation pass
    publish_s: float  # one checkpoint written to the store


def interval_s(budget_s: float) -> float:
    """Seconds between periodic validations with checkpoints: a tenth of the budget, at most 15 min."""
    return min(budget_s / 10, MAX_INTERVAL_S)


def margin_s(remaining_s: float) -> float:
    """What sizing leaves unspent for the variance of step, validation and upload times."""
    return max(2.0, 0.05 * remaining_s)


def steps_that_fit(remaining_s: float, costs: Costs, every_s: float) -> int:
    """Training steps that fit in ``remaining_s`` with a validation and checkpoint every ``every_s`` of
    training and one more of each at the end."""
    per_event = costs.val_s + costs.publish_s
    train_s = remaining_s - margin_s(remaining_s) - per_event
    if train_s <= 0:
        return 0
    # t of training has floor(t / every_s) periodic events: t + (t / every_s) * per_event = train_s
    train_s /= 1 + per_event / every_s
    return int(train_s // costs.step_s)


def minimum_s(spent_s: float, costs: Costs, steps: int = PROBE_STEPS) -> float:
    """The shortest budget that can finish: what is already spent, a few steps, one validation and
    one checkpoint, and the margin."""
    need = spent_s + steps * costs.step_s + costs.val_s + costs.publish_s
    return need + margin_s(need)


def resize(planned_steps: int, planned_step_s: float, costs: Costs, remaining_s: float,
           every_s: float, keep_within: float = KEEP_WITHIN) -> int:
    """Steps left after re-measuring: the plan's as they are when the step time is within
    ``keep_within`` of the planned one and they still fit; else the plan's training time at the new
    step time (never more time than planned), cut to what fits."""
    fit = steps_that_fit(remaining_s, costs, every_s)
    if abs(costs.step_s / planned_step_s - 1) <= keep_within and planned_steps <= fit:
        return planned_steps
    return min(fit, int(planned_steps * planned_step_s / costs.step_s))


def replan(steps_left: int, planned_step_s: float, costs: Costs, remaining_s: float, every_s: float,
           own_plan: bool) -> int:
    """Steps left after a periodic checkpoint's measurements. The process that made the plan re-fits
    it to the rest of its budget (ignoring changes under REFIT_ABOVE); a process that resumed
    another's plan keeps it (:func:`resize`)."""
    if not own_plan:
        return resize(steps_left, planned_step_s, costs, remaining_s, every_s)
    fit = steps_that_fit(remaining_s, costs, every_s)
    return steps_left if abs(fit - steps_left) <= REFIT_ABOVE * steps_left else fit
