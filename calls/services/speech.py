"""Speaking on a live call: say text (on the media stream or through the carrier), reply-and-listen, speaking state."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

from django.db import router, transaction
from django.db.models import Exists

from core.errors import CarrierError, InvalidRequest
from core.states import TERMINAL_STATES, CallState
from providers.carriers.base import Prompt

from ..clock import now
from ..console.pokes import changed
from ..models import Call, ReplyStatus, ReplyTurn
from ..prepared import PreparedUpdate
from ..runtime import CallRuntime, get_runtime
from ..selectors import call_connected, call_uses_stream, call_voice, reply_is_current
from .common import back_to_listening, carrier_request, move_to, transcript_add


def call_speak(*, call_id: str, text: str, interruptible: bool = True) -> str:
    """Say `text` on a live call; the bot transcript entry is written only once it was played.

    With a media stream attached, the stream plays it and only what the caller heard is kept.
    Returns the playback outcome: played, interrupted or skipped.
    """
    if not text or not text.strip():
        raise InvalidRequest("message required")
    runtime = get_runtime()
    call, on_stream = _speaking_begin(call_id)
    if on_stream:
        return _speak_on_stream(runtime, call, text, interruptible)
    try:
        carrier_request(
            "speak", runtime.carrier.play_tts, call_id=str(call.pk), provider_call_id=call.provider_call_id,
            text=text, voice=call_voice(call=call), locale=None,
        )
    except CarrierError:
        back_to_listening(call)
        raise
    transcript_add(call=call, speaker="bot", text=text)
    return "played"


def speaking_begin(*, call_id: str) -> Call:
    """The call is about to hear something: state speaking. Returns the live call."""
    return _speaking_begin(call_id)[0]


def _speaking_if_current(*, call, reply, at):
    live = (
        Call.objects.filter(pk=call, provider_call_id__isnull=False).exclude(provider_call_id="")
        .exclude(state__in=sorted(TERMINAL_STATES))
        .filter(Exists(ReplyTurn.objects.filter(pk=reply, status=ReplyStatus.PENDING)))
    )
    return live, {"state": CallState.SPEAKING.value, "updated_at": at}


# On the critical path of every reply: compiled once, not built again for each reply.
_SPEAKING_IF_CURRENT = PreparedUpdate(
    _speaking_if_current,
    marks={"call": uuid.UUID(int=0x5EA4), "reply": -(2**31) + 11, "at": datetime(2001, 2, 3, 4, 5, 6, 7, tzinfo=timezone.utc)},
    fields={"call": Call._meta.pk, "reply": ReplyTurn._meta.pk, "at": Call._meta.get_field("updated_at")},
)


def reply_speaking_begin(*, call_id: str, reply_id: int) -> bool:
    """A reply's first words are about to be said: state speaking, if the reply is still wanted.

    One statement checks the reply was not superseded and moves the live call to speaking (from
    any live state, as the transition rule does): it runs right before the first words are sent.
    False when the reply was superseded; the call's error when it is not live.
    """
    if _SPEAKING_IF_CURRENT.run(call=uuid.UUID(str(call_id)), reply=int(reply_id), at=now(), using=router.db_for_write(Call)):
        changed()  # written past the queryset, which would have poked the console itself
        return True
    # Nothing changed: say why (this is rare, so the reads can come now).
    if not reply_is_current(reply_id=reply_id):
        return False
    speaking_begin(call_id=call_id)
    return True


def _speaking_begin(call_id: str) -> tuple[Call, bool]:
    with transaction.atomic():
        call = call_connected(ref=call_id, for_update=True, with_stream=True)
        move_to(call, CallState.SPEAKING)
        # Only what changes is written (the row is locked: nothing else moved meanwhile).
        Call.objects.filter(pk=call.pk).update(state=call.state, updated_at=now())
        return call, call_uses_stream(call=call)


def speaking_end(*, call: Call) -> None:
    """Back to listening once speech is over (unless the call moved on, e.g. ended)."""
    back_to_listening(call)


def call_reply_say(*, call_id: str, text: str) -> str:
    """Say `text` to the caller and keep listening for their answer, on whichever path the call uses.

    With a media stream the stream listens all the time; a carrier that listens with a prompt
    gets one request that says and listens (a separate speak would be cut off by the listen).
    Returns the playback outcome.
    """
    if not text or not text.strip():
        raise InvalidRequest("message required")
    runtime = get_runtime()
    call = call_connected(ref=call_id)
    if call_uses_stream(call=call) or not runtime.carrier.listens_with_prompt:
        return call_speak(call_id=call_id, text=text)
    with transaction.atomic():
        call = call_connected(ref=call_id, for_update=True)
        move_to(call, CallState.LISTENING)
        call.save()
    carrier_request(
        "listen", runtime.carrier.start_listening, call_id=str(call.pk), provider_call_id=call.provider_call_id,
        turn_token=None, language=None, prompt=Prompt(text, call_voice(call=call)),
    )
    transcript_add(call=call, speaker="bot", text=text)
    return "played"


def _speak_on_stream(runtime: CallRuntime, call: Call, text: str, interruptible: bool) -> str:
    from ..streams.commands import StreamUnavailable, stream_speak

    timeout = (runtime.config.tts.timeout_ms if runtime.config.tts and runtime.config.tts.timeout_ms else 8000) / 1000
    # Long enough for slow speech of the whole text plus synthesis and the final mark.
    budget = timeout + spoken_duration_estimate(text).total_seconds() * 2 + 5
    try:
        result = stream_speak(str(call.pk), text, call_voice(call=call), interruptible=interruptible, timeout=budget)
    except StreamUnavailable as exc:
        back_to_listening(call)
        raise CarrierError(f"media stream not reachable: {exc}") from exc
    outcome = result.get("outcome", "failed")
    if outcome == "failed":
        back_to_listening(call)
        raise CarrierError(result.get("error") or "playback failed")
    heard = text if outcome == "played" else (result.get("heard") or "")
    with transaction.atomic():
        if heard:
            transcript_add(call=call, speaker="bot", text=heard, touch=False)
        back_to_listening(call, touch=bool(heard))
    return outcome


def spoken_duration_estimate(text: str) -> timedelta:
    """An upper bound for how long text takes to say (about 8 characters a second, at least 5 s)."""
    return timedelta(seconds=max(5.0, len(text) / 8))
