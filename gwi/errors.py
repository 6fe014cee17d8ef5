"""Errors a user can act on. The CLI prints their message without a traceback and exits non-zero."""


class GwiError(Exception):
    """Base of every error gwi reports to a user as a one-line message."""


class StoreError(GwiError):
    """An object store could not be reached, or refused or lacks what was asked for."""


class DataError(GwiError):
    """Input data is malformed: the message names the file and, where known, the sample index."""


class IntegrityError(GwiError):
    """Bytes do not match the checksum or size a manifest promises."""
