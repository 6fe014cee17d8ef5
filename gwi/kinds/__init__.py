"""The job kinds: one module each, registered by name (the table is in base.py).

Adding a kind: write ``gwi/kinds/<kind>.py`` with a :class:`JobKind` subclass decorated with
``@register``, import it below (its registration line), and test it (``tests/test_kinds.py`` builds
the command of every registered kind from a plan and parses it with the real CLI parser).
"""

from __future__ import annotations

from .base import JobKind, Plan, Ref, get, names, register, unregister

# the registrations: one line per kind
from . import synth  # noqa: E402,F401
from . import train  # noqa: E402,F401
from . import ensemble  # noqa: E402,F401
from . import predict  # noqa: E402,F401
from . import evaluate  # noqa: E402,F401
from . import sweep  # noqa: E402,F401
from . import refine  # noqa: E402,F401
from . import augment  # noqa: E402,F401
from . import prep  # noqa: E402,F401
from . import pseudo  # noqa: E402,F401
from . import cycle  # noqa: E402,F401
from . import run  # noqa: E402,F401

__all__ = ["JobKind", "Plan", "Ref", "get", "names", "register", "unregister"]
