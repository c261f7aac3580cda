"""The answer and the greeting: answer-time DTMF, whether and how the initial message is spoken, and speaking it once."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.db import transaction
from django.db.models import Q

from core.errors import VoiceCallError
from core.states import TERMINAL_STATES, CallState
from core.urls import realtime_streams_on
from providers.carriers.base import Prompt

from .. import background
from ..call_options import consent_first
from ..amd_verdicts import amd_holds, amd_on
from ..clock import now
from ..gateway import get_gateway
from ..log_limit import warn_limited
from ..models import Call, CallMode, Direction
from ..runtime import CallRuntime, get_runtime
from ..selectors import call_find, call_voice
from .common import CLAIM_TTL, carrier_request, log, move_to, transcript_add
from .speech import call_speak, spoken_duration_estimate


@dataclass(frozen=True)
class GreetingDecision:
    speak: bool
    why: str
    # The carrier already plays it (sent with the dial): record it as spoken without a request.
    spoken_by_carrier: bool = False
    # Nothing can speak it (realtime without a stream that reaches the call): logged as a warning.
    unreachable: bool = False
    # Said once the call's media stream is listening (its readiness queues the greeting job).
    on_stream: bool = False


def greeting_decision(*, call: Call) -> GreetingDecision:
    """Whether the initial message is spoken as soon as the call is answered."""
    runtime = get_runtime()
    if not call.initial_message:
        return GreetingDecision(False, "nothing to say")
    if amd_holds(call):
        return GreetingDecision(False, "held until the answering-machine verdict")
    config = runtime.config
    carrier = runtime.carrier
    in_answer = GreetingDecision(False, "the answer to the carrier's answer webhook carries it")
    if call.mode == CallMode.NOTIFY:
        if carrier.notify_in_dial and not amd_on(call):
            return GreetingDecision(False, "sent with the dial request", spoken_by_carrier=True)
        return in_answer if carrier.greets_in_answer else GreetingDecision(True, "notify")
    if config.realtime.enabled:
        if realtime_streams_on(config) and carrier.supports_media_streams:
            return GreetingDecision(False, "the realtime model's opening turn speaks it")
        # Nothing else speaks on a realtime call: say so loudly instead of losing it silently.
        return GreetingDecision(False, "not spoken: realtime is on but no realtime stream can reach this call "
                                       "(it needs publicUrl and a carrier with media streams)", unreachable=True)
    if config.streaming.enabled and carrier.supports_media_streams:
        return GreetingDecision(False, "spoken when the media stream's transcription is ready", on_stream=True)
    return in_answer if carrier.greets_in_answer else GreetingDecision(True, "conversation")


@background.job("calls.call_answered")
def on_call_answered(*, call_id: str) -> None:
    runtime = get_runtime()
    call = call_find(ref=call_id)
    if call is None or call.is_terminal:
        return
    if call.pending_dtmf:
        _send_answer_dtmf(runtime, call, call.pending_dtmf)
    decision = greeting_decision(call=call)
    (log.warning if decision.unreachable else log.info)("call %s answered; greeting: %s", call.pk, decision.why)
    if decision.spoken_by_carrier:
        initial_message_delivered(call_id=call_id)
    elif decision.speak:
        initial_message_speak(call_id=call_id)


def _send_answer_dtmf(runtime: CallRuntime, call: Call, digits: str) -> None:
    """Digits the dial could not carry, sent once right after the answer (e.g. an extension)."""
    with transaction.atomic():
        locked = Call.objects.select_for_update().get(pk=call.pk)
        if locked.pending_dtmf != digits:
            return  # another trigger sent them
        locked.pending_dtmf = ""
        locked.save(update_fields=["pending_dtmf", "updated_at"])
    try:
        carrier_request("dtmf", runtime.carrier.send_dtmf, call_id=str(call.pk), provider_call_id=call.provider_call_id, digits=digits)
    except VoiceCallError as exc:
        log.warning("sending the dial digits on %s failed: %s", call.pk, exc)


def initial_message_delivered(*, call_id: str) -> bool:
    """The carrier played the initial message (with the dial or in a webhook answer): record it once."""
    with transaction.atomic():
        call = call_find(ref=call_id, for_update=True)
        message = initial_message_taken(call) if call is not None else None
        if message is None:
            return False
        call.greeting_claimed_at = None
        call.save()
        transcript_add(call=call, speaker="bot", text=message, touch=False)
    return True


def initial_message_taken(call: Call) -> str | None:
    """On a locked call, in memory: its initial message is spoken now (cleared, listening next).

    Returns the message for the transcript, or None when there is none to speak. The caller saves
    the call and adds the transcript line in the same transaction.
    """
    if call.is_terminal or not call.initial_message:
        return None
    message, call.initial_message = call.initial_message, ""
    if call.mode != CallMode.NOTIFY:
        move_to(call, CallState.LISTENING)
    return message


def initial_message_speak(*, call_id: str, without_stream: bool = False) -> bool:
    """Speak the stored initial message once; keep it for a retry if playback fails.

    `without_stream`: the call's media stream failed, so the carrier says it and listens, as with
    streaming off.
    """
    runtime = get_runtime()
    call = call_find(ref=call_id)
    if call is None or call.is_terminal or not call.initial_message or amd_holds(call):
        return False
    # The claim is one conditional UPDATE: of two triggers at once only one finds it unclaimed
    # (or its claim abandoned); the other one is not speaking it.
    at = now()
    claimed = (
        Call.objects.filter(pk=call.pk).exclude(state__in=TERMINAL_STATES).exclude(initial_message="")
        .filter(Q(greeting_claimed_at__isnull=True) | Q(greeting_claimed_at__lte=at - CLAIM_TTL))
        .update(greeting_claimed_at=at)
    )
    if not claimed:
        return False
    call.greeting_claimed_at = at
    # Held as a lease while it plays: renewed, so only a claim whose process died expires.
    with get_gateway().leases.hold("greeting_claimed_at", call.pk, at):
        return _greeting_speak(runtime, call, call_id, streaming=runtime.config.streaming.enabled and not without_stream)


def _greeting_speak(runtime: CallRuntime, call: Call, call_id: str, *, streaming: bool) -> bool:
    message = call.initial_message
    conversation = call.mode != CallMode.NOTIFY
    if conversation and runtime.carrier.listens_with_prompt and not streaming:
        return _greet_and_listen(runtime, call, message)
    # An outbound conversation's greeting is not cut by the callee's "hello?" (docs/compatibility.md, Barge-in and automatic replies),
    # nor is a recording's consent announcement by anyone.
    interruptible = not (conversation and call.direction == Direction.OUTBOUND) and not consent_first(runtime.config, message)
    try:
        call_speak(call_id=call_id, text=message, interruptible=interruptible)
    except VoiceCallError as exc:
        return _greeting_failed(call, exc)

    # Said: the message is cleared and the claim released; a call still live hangs up soon
    # (notify) or listens (every live state moves on to listening). One statement in the usual case.
    said = {"greeting_claimed_at": None, "initial_message": "", "updated_at": now()}
    if call.mode == CallMode.NOTIFY:
        delay = timedelta(seconds=runtime.config.outbound.notify_hangup_delay_sec)
        if runtime.carrier.reports_speech_end:
            # The carrier says when playback ends (call.spoken); until then assume slow speech.
            delay += spoken_duration_estimate(message)
        next_step = {"notify_hangup_at": now() + delay}
    else:
        next_step = {"state": CallState.LISTENING.value}
    live = Call.objects.filter(pk=call.pk).exclude(state__in=TERMINAL_STATES).update(**said, **next_step)
    if not live:
        Call.objects.filter(pk=call.pk).update(**said)
    elif "notify_hangup_at" in next_step:
        background.deadline_set(next_step["notify_hangup_at"])
    listen = bool(live) and call.mode != CallMode.NOTIFY and not streaming
    if listen:
        try:
            runtime.carrier.start_listening(call_id=call_id, provider_call_id=call.provider_call_id, turn_token=None, language=None)
        except Exception as exc:
            log.warning("start listening on %s after the greeting failed: %s", call.pk, exc)
    return True


def _greet_and_listen(runtime: CallRuntime, call: Call, message: str) -> bool:
    try:
        carrier_request(
            "listen", runtime.carrier.start_listening, call_id=str(call.pk), provider_call_id=call.provider_call_id,
            turn_token=None, language=None, prompt=Prompt(message, call_voice(call=call)),
        )
    except VoiceCallError as exc:
        return _greeting_failed(call, exc)
    # The claim goes with the message, in one statement: never an unclaimed message already said.
    if initial_message_delivered(call_id=str(call.pk)):
        return True
    Call.objects.filter(pk=call.pk).update(greeting_claimed_at=None)
    return False


def _greeting_failed(call: Call, error: VoiceCallError) -> bool:
    """Release the greeting claim and keep the message, so a later trigger retries it."""
    Call.objects.filter(pk=call.pk).update(greeting_claimed_at=None)
    # Per kind of failure, not per call: a carrier that is down fails every call's greeting each retry.
    warn_limited(log, ("greeting", type(error.__cause__ or error).__name__),
                 "initial message on %s failed (kept for a retry): %s", call.pk, error)
    return False


@background.job("calls.greeting")
def greeting_job(*, call_id: str) -> None:
    initial_message_speak(call_id=call_id)
