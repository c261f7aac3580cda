"""Call records with turns, auto-replies and realtime turns of known latencies, for the latency page's tests."""
from __future__ import annotations

from datetime import datetime, timedelta

from calls.models import Call, CallEvent, CallTurn, ReplyTurn, TurnStatus

# 20 values 50…1000 ms: nearest-rank p50 500, p90 900, p95 950, p99 1000.
TWENTY = [50 * n for n in range(1, 21)]
TWENTY_PERCENTILES = {"p50": 500, "p90": 900, "p95": 950, "p99": 1000}


def seed_call(at: datetime, *, provider: str = "twilio", route_key: str = "+15550001000", agent_id: str = "main",
              state: str = "completed", end_reason: str = "completed", from_number: str = "+15557770001",
              direction: str = "inbound") -> Call:
    ended = at + timedelta(seconds=30) if end_reason else None
    return Call.objects.create(
        provider=provider, direction=direction, state=state, end_reason=end_reason, from_number=from_number,
        to_number=route_key or "+15550009999", route_key=route_key, agent_id=agent_id, started_at=at,
        answered_at=at + timedelta(seconds=2), ended_at=ended,
    )


def seed_turns(call: Call, at: datetime, latencies: list[int], *, listen_wait: int | None = None) -> None:
    """Completed `continue` turns finishing at `at` (listen wait: the latency less 200 ms unless given)."""
    CallTurn.objects.bulk_create([
        CallTurn(call=call, token=f"t{i}", status=TurnStatus.COMPLETED, started_at=at - timedelta(milliseconds=value),
                 completed_at=at, turn_latency_ms=value,
                 listen_wait_ms=listen_wait if listen_wait is not None else max(0, value - 200))
        for i, value in enumerate(latencies)
    ])


def seed_replies(call: Call, at: datetime, first_audio: list[int], *, responder: str = "llm",
                 model: str = "openai/gpt-4o-mini") -> None:
    """Spoken auto-replies heard at `at`: first text 100 ms before the first audio, done 1 s after it."""
    ReplyTurn.objects.bulk_create([
        ReplyTurn(call=call, transcript=f"question {i}", status="spoken", responder=responder, model=model,
                  reply="answer", heard_at=at, completed_at=at + timedelta(milliseconds=value + 1000),
                  first_text_ms=max(0, value - 100), first_audio_ms=value, total_ms=value + 1000)
        for i, value in enumerate(first_audio)
    ])


def seed_realtime(call: Call, at: datetime, latencies: list[int]) -> None:
    CallEvent.objects.bulk_create([
        CallEvent(call=call, type="realtime.turn", occurred_at=at, payload={"turn": i + 1, "itemId": f"i{i}", "latencyMs": value},
                  dedupe_key=f"realtime-turn-{call.pk}-{i}")
        for i, value in enumerate(latencies)
    ])
