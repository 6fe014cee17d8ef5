"""``kind: run``: any command in the image, for a team's own scripts, with what every job gets: placed
on its platforms in order, retried and moved on, heartbeats to the store.

The command runs under ``gwi exec``, which beats for it (each line it prints is progress), passes
``SIGTERM`` on so it can save its work, exits with its status, and tells it where to write: the job's
run folder as ``$GWI_RUN`` (a store URL) and the plan's store as ``$GWI_STORE``::

    - name: features
      kind: run
      argv: [python, scripts/features.py, --out, runs/day3/features]
"""

from __future__ import annotations

from ..runs import Run
from ..yamlfile import Fields, quote
from .base import JobKind, Plan, register


@register
class RunCommand(JobKind):
    name = "run"
    fields = ("argv",)
    example = {"argv": ["python", "-c", "print('hello from a plan')"]}

    def check(self, c: Fields, own: Fields, plan: Plan, job: str) -> list[tuple[str, dict]]:
        argv = c.get("argv", "list")
        if not argv or not all(isinstance(a, (str, int, float)) and not isinstance(a, bool) for a in argv):
            raise c.error("argv", f"expected a command as a list of strings, like [python, script.py], got {quote(argv)}")
        return [("", {"argv": [str(a) for a in argv], "store": plan.store})]

    def outputs(self, params: dict, run: Run) -> dict[str, str]:
        return {"run": run.url}

    def argv(self, params: dict, run: Run, heartbeat_s: float) -> list[str]:
        return ["gwi", "exec", "--run", run.url, "--store", params["store"], "--", *params["argv"]]
