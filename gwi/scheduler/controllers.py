"""The jobs the scheduler runs itself (a kind with ``controller = True``), one module per kind.

Each module has ``advance(s, row)`` (one reconcile pass of such a job, the scheduler's lock held),
``is_child(name, controller)`` (whether a job of the plan is one it added: cancelled with it, and in
its own estimate for the deadline, not counted again) and ``hours(job)`` (that estimate).
"""

from __future__ import annotations

from . import cycles, sweeps

BY_KIND = {"sweep": sweeps, "cycle": cycles}


def owner(name: str, jobs) -> str | None:
    """The controller job among ``jobs`` (Job definitions) that added the job ``name``, if one did."""
    return next((j.name for j in jobs if j.kind in BY_KIND and BY_KIND[j.kind].is_child(name, j.name)), None)
