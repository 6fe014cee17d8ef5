"""The states a job and an attempt go through: the words state, policy, judge and the loop share.

A job is ``waiting`` (for its ``after`` jobs), ``queued`` (ready, no platform yet), ``running`` (an
attempt is out), then ``succeeded``, ``failed`` or ``cancelled``. A failed or lost attempt sends its
job back to ``queued``; a job dispatched again after it failed or was cancelled starts a new
*generation*: its platforms' tries and its hour and dollar budgets count from zero again.

An attempt's states are the adapters' :class:`~gwi.adapters.base.State` values.
"""

from __future__ import annotations

from ..adapters.base import State

WAITING, QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "waiting", "queued", "running", "succeeded", "failed", "cancelled"
JOB_TERMINAL = (SUCCEEDED, FAILED, CANCELLED)
# attempts that may still be running somewhere (and billing)
ACTIVE = (State.PENDING.value, State.RUNNING.value)
