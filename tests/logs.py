"""Log records a test's own code wrote, for assertions that count them.

A live gateway that another test of the same process left serving may log meanwhile (Daphne
warns when it kills a slow-closing connection), so a test counts only the loggers it is about.
"""
from __future__ import annotations


def records_of(caplog, logger: str, level: int = 0) -> list:
    """The captured records at `level` or above from `logger` and its children."""
    return [r for r in caplog.records
            if r.levelno >= level and (r.name == logger or r.name.startswith(logger + "."))]
