"""The job kinds: one module each, registered here by name.

Adding a kind: write ``gwi/kinds/<kind>.py`` with a :class:`JobKind` subclass decorated with
``@register``, import it below (its registration line), and test it (``tests/test_kinds.py`` builds
the command of every registered kind from a plan and parses it with the real CLI parser).
"""

from __future__ import annotations

from .base import JobKind, Plan, Ref

_KINDS: dict[str, JobKind] = {}


def register(cls: type[JobKind]) -> type[JobKind]:
    if cls.name in _KINDS and type(_KINDS[cls.name]) is not cls:
        raise ValueError(f"job kind {cls.name!r} is registered twice")
    _KINDS[cls.name] = cls()
    return cls


def unregister(name: str) -> None:
    """For tests that register a kind of their own."""
    _KINDS.pop(name, None)


def get(name: str) -> JobKind:
    return _KINDS[name]


def names() -> list[str]:
    return list(_KINDS)


# the registrations: one line per kind
from . import synth  # noqa: E402,F401
from . import train  # noqa: E402,F401
from . import ensemble  # noqa: E402,F401
from . import predict  # noqa: E402,F401

__all__ = ["JobKind", "Plan", "Ref", "get", "names", "register", "unregister"]
