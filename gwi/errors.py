"""Errors a user can act on. The CLI prints their message without a traceback and exits with the
error's ``exit_code``."""

# EX_TEMPFAIL (sysexits.h): "try again later". The scheduler reads it as "the shared store was down",
# which is no platform's fault, and requeues the attempt without counting it against the platform.
EXIT_STORE_UNAVAILABLE = 75


def cut(text: str, limit: int = 80) -> str:
    """``text`` for a one-line message, cut to ``limit`` characters: a message names a value, it does
    not reprint a megabyte of it."""
    return text if len(text) <= limit else text[:limit] + f"… ({len(text):,} characters)"


class GwiError(Exception):
    """Base of every error gwi reports to a user as a one-line message."""

    exit_code = 1


class StoreError(GwiError):
    """An object store lacks or refuses what was asked for (missing object or bucket, access denied,
    a full disk): retrying will not help."""


class StoreUnavailable(StoreError):
    """The store could not be reached, or answered 5xx, throttled, timed out or reset the connection,
    even after retries and waiting. Transient: not "missing", not "corrupt"."""

    exit_code = EXIT_STORE_UNAVAILABLE


class DataError(GwiError):
    """Input data is malformed: the message names the file and, where known, the sample index."""


class IntegrityError(GwiError):
    """Bytes do not match the checksum or size a manifest promises."""
