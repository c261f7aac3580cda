"""The one API every surface calls (CLI, RPC, agent tool, admin, webhooks, Celery)."""
from .control import (
    call_continue,
    call_end,
    call_initiate,
    call_send_dtmf,
    call_speak,
    greeting_decision,
    initial_message_speak,
)
from .events import EventOutcome, event_process
from .sweeps import (
    RestoreReport,
    calls_restore,
    deadlines_sweep,
    next_deadline,
    processed_webhooks_purge,
    stale_calls_reap,
)

__all__ = [
    "EventOutcome",
    "RestoreReport",
    "call_continue",
    "call_end",
    "call_initiate",
    "call_send_dtmf",
    "call_speak",
    "calls_restore",
    "deadlines_sweep",
    "event_process",
    "greeting_decision",
    "initial_message_speak",
    "next_deadline",
    "processed_webhooks_purge",
    "stale_calls_reap",
]
