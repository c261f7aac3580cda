"""Read-only views of calls in the reference's JSON shapes (camelCase, times in epoch ms)."""
from __future__ import annotations

from typing import Any

from .models import Call
from .services.common import call_lookup, to_ms


def call_find(ref: str) -> Call | None:
    """A call by our id or the carrier's id."""
    return call_lookup(ref)


def call_record(call: Call) -> dict[str, Any]:
    """The full record: what `status` prints and `tail` follows (transcript included)."""
    record = call_summary(call)
    record.update(
        {
            "from": call.from_number,
            "to": call.to_number,
            "sessionKey": call.session_key or None,
            "agentId": call.agent_id or None,
            "transcript": [
                {"timestamp": to_ms(entry.timestamp), "speaker": entry.speaker, "text": entry.text, "isFinal": entry.is_final}
                for entry in call.transcript_entries.all()
            ],
            "processedEventIds": [key for key in call.events.values_list("dedupe_key", flat=True) if key],
            "metadata": call.metadata,
        }
    )
    return _without_none(record)


def call_summary(call: Call) -> dict[str, Any]:
    """The redacted status object (no transcript, no metadata) for the RPC and the agent tool."""
    return _without_none(
        {
            "callId": str(call.pk),
            "providerCallId": call.provider_call_id,
            "provider": call.provider,
            "direction": call.direction,
            "state": call.state,
            "startedAt": to_ms(call.started_at),
            "answeredAt": to_ms(call.answered_at),
            "endedAt": to_ms(call.ended_at),
            "endReason": call.end_reason or None,
        }
    )


def live_calls() -> list[Call]:
    return list(Call.objects.live().order_by("started_at"))


def _without_none(data: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in data.items() if value is not None}
