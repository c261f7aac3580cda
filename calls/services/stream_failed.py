"""A call's media stream failed at the carrier: the call goes on without it, or ends saying why."""
from __future__ import annotations

from core.errors import VoiceCallError
from core.states import CallState
from core.urls import realtime_streams_on

from .. import background
from ..models import Call, CallMode, MediaStream
from ..runtime import get_runtime
from ..selectors import call_find
from .common import carrier_request, log
from .ending import call_end_or_retry
from .greeting import initial_message_speak


def stream_failed_message(error: str) -> str:
    return f"the carrier could not open the call's media stream ({error})"


@background.job("calls.stream_failed")
def stream_failed(*, call_id: str, error: str) -> str:
    """What the call does now that its stream will never come; returns what was done (for the log and tests).

    A conversation on the media stream falls back to the carrier's own speech: its greeting is said
    with the carrier's TTS and the carrier listens (its transcription), as with streaming off. A
    realtime call has nothing to talk to without its stream: it ends as an error with the reason
    kept in `last_error`. A call that ended, or has a stream open after all, is left alone.
    """
    runtime = get_runtime()
    call = call_find(ref=call_id)
    if call is None or call.is_terminal:
        log.info("call %s: stream failure (%s) after the call ended; nothing to do", call_id, error)
        return "ended"
    if MediaStream.objects.open().filter(call=call).exists():
        log.info("call %s: a stream failure (%s) reported while a stream is open; ignored", call.pk, error)
        return "streaming"
    message = stream_failed_message(error)
    if call.mode != CallMode.NOTIFY and realtime_streams_on(runtime.config):
        log.warning("call %s: %s; a realtime call cannot go on without it: ending it", call.pk, message)
        Call.objects.filter(pk=call.pk).update(last_error=message)
        call_end_or_retry(call_id=str(call.pk), reason=CallState.ERROR.value)
        return "ended"
    if call.mode == CallMode.NOTIFY or not (runtime.config.streaming.enabled and runtime.carrier.supports_media_streams):
        log.info("call %s: %s; the call does not depend on it", call.pk, message)
        return "unaffected"
    log.warning("call %s: %s; the carrier speaks and listens instead", call.pk, message)
    if call.initial_message:
        # Said with the carrier's TTS; the carrier listens once it is said (a failure keeps it for a retry).
        return "greeted" if initial_message_speak(call_id=str(call.pk), without_stream=True) else "failed"
    try:
        carrier_request("listen", runtime.carrier.start_listening, call_id=str(call.pk),
                        provider_call_id=call.provider_call_id, turn_token=None, language=None)
    except VoiceCallError as exc:
        log.warning("call %s: listening without the stream failed: %s", call.pk, exc)
        return "failed"
    return "listening"
