"""The call a piece of work is about, as a context variable: log lines name it without every call site passing it."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

# Threads started by asgiref (sync_to_async) and asyncio tasks created meanwhile copy it.
_call_id: ContextVar[str | None] = ContextVar("voicecall_call_id", default=None)


def current_call_id() -> str | None:
    """The id of the call the running work is about, if known."""
    return _call_id.get()


def bind_call_id(call_id: object) -> None:
    """From here to the end of the enclosing call_scope, the work is about this call."""
    _call_id.set(str(call_id) if call_id not in (None, "") else None)


@contextmanager
def call_scope(call_id: object = None) -> Iterator[None]:
    """Work about one call (or, without an id, work that may bind one); the caller's id is back afterwards."""
    token = _call_id.set(str(call_id) if call_id not in (None, "") else _call_id.get())
    try:
        yield
    finally:
        _call_id.reset(token)
