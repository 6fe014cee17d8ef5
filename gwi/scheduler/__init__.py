"""The scheduler, by role:

- :mod:`.state`: the SQLite state (schema, migrations, every query); the only module with SQL;
- :mod:`.policy`: placement (which platform next, quotas, budgets, slots, hour limits), pure;
- :mod:`.judge`: the verdict on an attempt from its platform's answer and its heartbeat, pure;
- :mod:`.view`: reading the state for status and history (read-only, no lock);
- :mod:`.loop`: the :class:`Scheduler`, which wires them to the adapters;
- :mod:`.calls`: every adapter (and heartbeat) call the loop makes, on per-platform threads with a deadline;
- :mod:`.lifecycle`: the job and attempt states they share.
"""

from .lifecycle import (
           ACTIVE,
           CANCELLED,
           FAILED,
           JOB_TERMINAL,
           QUEUED,
           RUNNING,
           SUCCEEDED,
           WAITING,
)
from .loop import LockBusy, Scheduler
from .policy import WEEK_S, Choice
from .state import SCHEMA_VERSION, StateDB, StateUnreadable, gwi_home
from .view import View, open_view

__all__ = [
           "ACTIVE",
           "CANCELLED",
           "FAILED",
           "JOB_TERMINAL",
           "QUEUED",
           "RUNNING",
           "SCHEMA_VERSION",
           "SUCCEEDED",
           "WAITING",
           "WEEK_S",
           "Choice",
           "LockBusy",
           "Scheduler",
           "StateDB",
           "StateUnreadable",
           "View",
           "gwi_home",
           "open_view",
]
