"""Calls to exercise the realtime tools on: an inbound call on the mock carrier, with lines said on it."""
from __future__ import annotations

from itertools import count

from calls.models import Call
from calls.services import event_process, session_message_add, transcript_add
from core.events import CallAnswered, CallInitiated

CALLER = "+15557654321"
LINE = "+15550001111"

_calls = count(1)


def ring(caller: str = CALLER, to: str = LINE) -> Call:
    """An inbound call that rang and was answered. Returns the call."""
    sid = f"mock-rt-{next(_calls)}"
    event_process(event=CallInitiated(call_id=sid, provider_call_id=sid, direction="inbound", from_number=caller, to_number=to))
    event_process(event=CallAnswered(call_id=sid, provider_call_id=sid))
    return Call.objects.get(provider_call_id=sid)


def said(call: Call, speaker: str, text: str) -> None:
    """A line of the call's transcript, and of its session memory, as the bridge stores them."""
    transcript_add(call=call, speaker=speaker, text=text)
    session_message_add(call=call, role="user" if speaker == "user" else "assistant", text=text)


def base_config(**extra) -> dict:
    return {"provider": "mock", "inboundPolicy": "open", "inboundGreeting": "Hello from the shop.", **extra}
