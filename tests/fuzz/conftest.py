"""Fuzz test fixtures: an event loop the examples run on, and the ERROR records the app logged meanwhile."""
from __future__ import annotations

import asyncio
import logging

import pytest

from tests.fuzz import budget

WATCHED = ("calls", "providers", "core", "routing", "voicecall_project", "django.request", "daphne", "channels")


class ErrorRecords(logging.Handler):
    """Every ERROR record of the application's loggers: an uncaught exception is logged as one."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.split(".")[0] in WATCHED or record.name in WATCHED:
            self.records.append(record)

    def take(self) -> list[str]:
        found = [f"{r.name}: {r.getMessage()} {r.exc_info[1]!r}" if r.exc_info else f"{r.name}: {r.getMessage()}"
                 for r in self.records]
        self.records.clear()
        return found


@pytest.fixture
def app_errors():
    handler = ErrorRecords()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


@pytest.fixture
def loop():
    """One loop for all the examples of a test (hypothesis runs them inside one call of the test)."""
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def pytest_terminal_summary(terminalreporter):
    if budget.inputs_sent:
        terminalreporter.write_line(f"fuzz: {budget.inputs_sent} inputs sent through the ASGI application "
                                    f"({budget.total()} examples budgeted)")
        terminalreporter.write_line("fuzz outcomes: " + ", ".join(f"{k}: {v}" for k, v in sorted(budget.outcomes.items())))
