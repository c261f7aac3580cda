"""Services of the realtime voice bridge: one-time stream tokens, admission of a stream to its call, and its records."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db import transaction

from core.events import CallAnswered
from routing.routes import call_route

from ..clock import now
from ..models import Call, CallEvent, CallMode, MediaStream, MessageRole, RealtimeStreamToken
from ..runtime import get_runtime
from ..selectors import call_find_locked
from .common import log, transcript_add
from .greeting import initial_message_taken
from .memory import session_message_add
from .streams import StreamRefused, _live_call_event, serving_node

TOKEN_TTL = timedelta(seconds=30)
# Used tokens are kept a while for the record, then purged with the other expired rows.
TOKEN_KEEP = timedelta(hours=1)
POLICY_REJECTED = "Caller rejected by policy"


def realtime_token_issue(call_id: str) -> str:
    """A new one-time token for the call's realtime stream URL (valid TOKEN_TTL, used once)."""
    at = now()
    token = RealtimeStreamToken.objects.create(call_id=call_id, created_at=at, expires_at=at + TOKEN_TTL)
    return str(token.token)


def realtime_token_consume(token: str) -> str | None:
    """Use the token now: the call id it was issued for, or None when unknown, expired or used."""
    try:
        key = uuid.UUID(str(token))
    except ValueError:
        log.warning("realtime stream refused: malformed stream token")
        return None
    at = now()
    # One conditional UPDATE: of two upgrades with the same token only one finds it unused.
    used = RealtimeStreamToken.objects.filter(token=key, used_at__isnull=True, expires_at__gt=at).update(used_at=at)
    if not used:
        known = list(RealtimeStreamToken.objects.filter(token=key).values_list("used_at", flat=True)[:1])
        why = "unknown" if not known else ("already used" if known[0] else "expired")
        log.warning("realtime stream refused: %s stream token", why)
        return None
    return str(RealtimeStreamToken.objects.filter(token=key).values_list("call_id", flat=True).get())


def realtime_tokens_purge(*, at=None) -> int:
    """Warn about tokens no carrier connected with, and forget them and old used ones."""
    moment = at or now()
    unused = RealtimeStreamToken.objects.filter(used_at__isnull=True, expires_at__lt=moment)
    for token, call_id, greeting in unused.values_list("token", "call_id", "call__initial_message")[:100]:
        # The model speaks the greeting once the stream is up; without a stream it was never said.
        log.warning("call %s: the carrier never opened its realtime stream (token %s… expired unused)%s",
                    call_id, str(token)[:8], "; its greeting was not spoken" if greeting else "")
    stale, _ = unused.delete()
    old, _ = RealtimeStreamToken.objects.filter(used_at__lt=moment - TOKEN_KEEP).delete()
    return stale + old


@dataclass(frozen=True)
class RealtimeCall:
    """What the realtime stream needs to know about its call, read once at admission."""

    call_id: str
    stream_pk: int
    provider_call_id: str
    direction: str
    mode: str
    greeting: str = ""
    agent_id: str = ""
    route_key: str = ""
    language: str | None = None
    record_local: bool = False  # the gateway writes a WAV of the stream (calls/streams/recording.py)


def realtime_stream_open(*, call_id: str, provider_call_id: str | None, stream_id: str) -> RealtimeCall:
    """Admit a realtime stream to the token's call (behaviour: inbound policy, route, greeting taken).

    Raises StreamRefused with the close reason when the stream may not attach.
    """
    runtime = get_runtime()
    config = runtime.config
    with transaction.atomic():
        call = call_find_locked(ref=call_id)
        if call is None or call.provider != runtime.carrier.name:
            log.warning("realtime stream refused: the call %s of its token is unknown to carrier %s",
                        call_id, runtime.carrier.name)
            raise StreamRefused("Unknown call")
        if call.is_terminal:
            log.warning("realtime stream for call %s refused: the call has already ended (%s)", call.pk, call.state)
            raise StreamRefused("Unknown call")
        if not provider_call_id or (call.provider_call_id and call.provider_call_id != provider_call_id):
            log.warning("realtime stream for call %s refused: its start names another carrier call", call.pk)
            raise StreamRefused("Unknown call")
        if call.direction == "inbound" and (call.rejection_reason or config.inbound_policy == "disabled"):
            log.warning("realtime stream for call %s refused: %s", call.pk, POLICY_REJECTED)
            raise StreamRefused(POLICY_REJECTED)
        replaced = MediaStream.objects.open().filter(call=call).update(closed_at=now(), close_reason="replaced")
        stream = MediaStream.objects.create(call=call, stream_id=stream_id[:128], carrier=runtime.carrier.name,
                                            node_id=serving_node())
        if not call.provider_call_id:
            call.provider_call_id = provider_call_id
        call.stream_grace_deadline = None
        # The model speaks the greeting as its first turn: taken now, so nothing else says it too.
        greeting = initial_message_taken(call) or ""
        call.save()
    if replaced:
        log.info("call %s: realtime stream %s replaces %d older stream(s)", call.pk, stream_id, replaced)
    if call.answered_at is None:
        _live_call_event(str(call.pk), lambda c: CallAnswered(
            call_id=str(c.pk), provider_call_id=c.provider_call_id, dedupe_key=f"realtime-answered-{c.pk}"))
    route = call_route(config, call)
    return RealtimeCall(
        call_id=str(call.pk), stream_pk=stream.pk, provider_call_id=call.provider_call_id or provider_call_id,
        direction=call.direction, mode=call.mode or CallMode.CONVERSATION, greeting=greeting,
        agent_id=call.agent_id, route_key=call.route_key,
        language=getattr(route, "language", None) if route is not None else None,
        record_local=call.record_local,
    )


def realtime_transcript(*, call_id: str, speaker: str, text: str) -> None:
    """A final line of the realtime conversation: the transcript and the session memory."""
    text = text.strip()
    if not text:
        return
    with transaction.atomic():
        call = Call.objects.filter(pk=call_id).first()
        if call is None:
            return
        transcript_add(call=call, speaker=speaker, text=text)
        role = MessageRole.USER if speaker == "user" else MessageRole.ASSISTANT
        session_message_add(call=call, role=role, text=text)


def realtime_event(*, call_id: str, type: str, payload: dict[str, Any], dedupe_key: str | None = None) -> None:
    """A bridge record on the call's timeline (e.g. `realtime.turn` with its latency)."""
    fields = {"call_id": call_id, "type": type[:32], "payload": payload, "occurred_at": now()}
    if dedupe_key:
        CallEvent.objects.get_or_create(dedupe_key=dedupe_key, defaults=fields)
    else:
        CallEvent.objects.create(**fields)

