"""Call operations every surface uses: initiate, speak, continue, end, dtmf, and the greeting."""
from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

from django.db import IntegrityError, transaction

from core.errors import (
    CallFailed,
    CallNotFound,
    CapacityReached,
    CarrierError,
    InvalidRequest,
    TranscriptTimeout,
    TurnInProgress,
    UnsupportedByCarrier,
    VoiceCallError,
)
from core.phone import E164, E164_MESSAGE
from core.states import CallState
from providers.carriers.base import DialRequest, Prompt
from routing.routes import call_route, effective_tts, preferred_voice

from .. import background
from ..models import Call, CallTurn, Direction, GatewayLock, MediaStream, TurnStatus
from ..runtime import CallRuntime, get_runtime
from ..session_keys import explicit_session_key, session_key_for_call
from .common import (
    CLAIM_TTL,
    add_transcript,
    call_connected,
    call_lookup,
    finalize,
    log,
    move_to,
    now,
    turn_changed,
    wait_for_turn_change,
)

DTMF_PATTERN = re.compile(r"^[0-9*#wWpP,]+$")
DTMF_MESSAGE = "digits may only contain digits, *, #, comma, w, p"
MODES = ("notify", "conversation")
# A call still without a carrier id this long after it was written is a dial that never finished.
DIAL_GRACE = timedelta(seconds=60)


def _carrier_call(action: str, func, **kwargs):
    """Run a carrier request; any failure becomes CarrierError with the carrier's message."""
    try:
        return func(**kwargs)
    except VoiceCallError:
        raise
    except Exception as exc:  # carriers raise their own errors; surfaces need one shape
        log.warning("carrier %s failed: %s", action, exc)
        raise CarrierError(str(exc) or f"{action} failed") from exc


def call_uses_stream(call: Call) -> bool:
    return _uses_stream(get_runtime(), call)


def call_voice(runtime: CallRuntime, call: Call) -> str | None:
    """The preferred TTS voice of the call's effective config (its number route for inbound)."""
    return preferred_voice(effective_tts(runtime.config, call_route(runtime.config, call)))


# --- outbound ------------------------------------------------------------------------------


def call_initiate(
    *,
    to: str,
    message: str | None = None,
    mode: str | None = None,
    dtmf_sequence: str | None = None,
    session_key: str | None = None,
    requester_session_key: str | None = None,
    agent_id: str | None = None,
) -> Call:
    """Place an outbound call. The record is written (and counted) before the carrier is asked.

    Raises InvalidRequest, CapacityReached, SetupIncomplete..., or CallFailed (record kept, failed).
    """
    runtime = get_runtime()
    config = runtime.config
    mode = mode if mode in MODES else config.outbound.default_mode
    if dtmf_sequence is not None:
        if not DTMF_PATTERN.fullmatch(dtmf_sequence):
            raise InvalidRequest(f"dtmfSequence: {DTMF_MESSAGE}")
        if mode != "conversation":
            raise InvalidRequest("dtmfSequence requires conversation mode")
    if not to or not E164.fullmatch(to):
        raise InvalidRequest(f"to: {E164_MESSAGE}")
    webhook_url = runtime.webhook_url()
    from_number = config.effective_from_number()
    if not from_number:
        raise InvalidRequest("fromNumber not configured")
    agent = agent_id or config.resolved_agent_id()
    explicit_key = explicit_session_key(session_key, agent_id=agent) if session_key is not None else None

    with transaction.atomic():
        # One admission at a time across processes: count and insert under the same lock.
        GatewayLock.objects.select_for_update().get_or_create(name="admission")
        if Call.objects.live().count() >= config.max_concurrent_calls:
            raise CapacityReached(config.max_concurrent_calls)
        call = Call(provider=runtime.carrier.name, direction=Direction.OUTBOUND, from_number=from_number, to_number=to, agent_id=agent)
        call.session_key = explicit_key or session_key_for_call(
            scope=config.session_scope, agent_id=agent, direction="outbound",
            from_number=from_number, to_number=to, call_id=str(call.pk),
        )
        call.metadata = {"mode": mode}
        if dtmf_sequence and not runtime.carrier.dials_with_dtmf:
            call.metadata["dtmfSequence"] = dtmf_sequence  # sent as soon as the call is answered
        if message:
            call.metadata["initialMessage"] = message
        if requester_session_key:
            call.metadata["requesterSessionKey"] = requester_session_key
        call.save()

    dial = DialRequest(
        call_id=str(call.pk), from_number=from_number, to_number=to, webhook_url=webhook_url,
        mode=mode, initial_message=message, voice=call_voice(runtime, call), dtmf_sequence=dtmf_sequence,
    )
    try:
        result = _carrier_call("initiate", runtime.carrier.initiate_call, dial=dial)
    except CarrierError as exc:
        with transaction.atomic():
            failed = Call.objects.select_for_update().get(pk=call.pk)
            finalize(failed, CallState.FAILED)
        raise CallFailed(exc.message, call_id=str(call.pk)) from exc

    with transaction.atomic():
        call = Call.objects.select_for_update().get(pk=call.pk)
        call.provider_call_id = call.provider_call_id or result.provider_call_id
        call.save()
        ended_meanwhile = call.is_terminal
    if ended_meanwhile:
        # Ended while we were dialing (e.g. `end` raced the dial): do not leave the line up.
        background.submit("calls.carrier_hangup", call_id=str(call.pk), reason=call.end_reason or "hangup-bot")
    log.info("outbound call %s to %s placed (%s, %s)", call.pk, to, result.provider_call_id, mode)
    return call


# --- speaking and listening ----------------------------------------------------------------


def call_speak(*, call_id: str, text: str, interruptible: bool = True) -> str:
    """Say `text` on a live call; the bot transcript entry is written only once it was played.

    With a media stream attached, the stream plays it and only what the caller heard is kept.
    Returns the playback outcome: played, interrupted or skipped.
    """
    if not text or not text.strip():
        raise InvalidRequest("message required")
    runtime = get_runtime()
    call, on_stream = speaking_begin(call_id)
    if on_stream:
        return _speak_on_stream(runtime, call, text, interruptible)
    try:
        _carrier_call(
            "speak", runtime.carrier.play_tts, call_id=str(call.pk), provider_call_id=call.provider_call_id,
            text=text, voice=call_voice(runtime, call), locale=None,
        )
    except CarrierError:
        _back_to_listening(call)
        raise
    add_transcript(call, "bot", text)
    return "played"


def speaking_begin(call_id: str) -> tuple[Call, bool]:
    """The call is about to hear something: state speaking. Returns it and whether a stream plays it."""
    with transaction.atomic():
        call = call_connected(call_id, for_update=True)
        move_to(call, CallState.SPEAKING)
        call.save()
        return call, _uses_stream(get_runtime(), call)


def speaking_end(call: Call) -> None:
    """Back to listening once speech is over (unless the call moved on, e.g. ended)."""
    _back_to_listening(call)


def call_reply_say(*, call_id: str, text: str) -> str:
    """Say `text` to the caller and keep listening for their answer, on whichever path the call uses.

    With a media stream the stream listens all the time; a carrier that listens with a prompt
    gets one request that says and listens (a separate speak would be cut off by the listen).
    Returns the playback outcome.
    """
    if not text or not text.strip():
        raise InvalidRequest("message required")
    runtime = get_runtime()
    call = call_connected(call_id)
    if _uses_stream(runtime, call) or not runtime.carrier.listens_with_prompt:
        return call_speak(call_id=call_id, text=text)
    with transaction.atomic():
        call = call_connected(call_id, for_update=True)
        move_to(call, CallState.LISTENING)
        call.save()
    _carrier_call(
        "listen", runtime.carrier.start_listening, call_id=str(call.pk), provider_call_id=call.provider_call_id,
        turn_token=None, language=None, prompt=Prompt(text, call_voice(runtime, call)),
    )
    add_transcript(call, "bot", text)
    return "played"


def _uses_stream(runtime: CallRuntime, call: Call) -> bool:
    """Whether the call's audio goes through a media stream (then never through TwiML <Say>)."""
    return (
        runtime.config.streaming.enabled
        and runtime.carrier.supports_media_streams
        and MediaStream.objects.open().filter(call=call).exists()
    )


def _speak_on_stream(runtime: CallRuntime, call: Call, text: str, interruptible: bool) -> str:
    from ..streams.commands import StreamUnavailable, stream_speak

    timeout = (runtime.config.tts.timeout_ms if runtime.config.tts and runtime.config.tts.timeout_ms else 8000) / 1000
    # Long enough for slow speech of the whole text plus synthesis and the final mark.
    budget = timeout + spoken_duration_estimate(text).total_seconds() * 2 + 5
    try:
        result = stream_speak(str(call.pk), text, call_voice(runtime, call), interruptible=interruptible, timeout=budget)
    except StreamUnavailable as exc:
        _back_to_listening(call)
        raise CarrierError(f"media stream not reachable: {exc}") from exc
    outcome = result.get("outcome", "failed")
    if outcome == "failed":
        _back_to_listening(call)
        raise CarrierError(result.get("error") or "playback failed")
    heard = text if outcome == "played" else (result.get("heard") or "")
    if heard:
        add_transcript(call, "bot", heard)
    _back_to_listening(call)
    return outcome


def _back_to_listening(call: Call) -> None:
    with transaction.atomic():
        locked = Call.objects.select_for_update().get(pk=call.pk)
        if move_to(locked, CallState.LISTENING):
            locked.save()


def call_continue(*, call_id: str, prompt: str) -> str:
    """Speak `prompt`, listen, and return the caller's next final transcript."""
    if not prompt or not prompt.strip():
        raise InvalidRequest("message required")
    runtime = get_runtime()
    config = runtime.config
    try:
        with transaction.atomic():
            call = call_connected(call_id, for_update=True)
            if CallTurn.objects.filter(call=call, status=TurnStatus.PENDING).exists():
                raise TurnInProgress()
            # A media stream listens all the time: its transcripts answer the turn, with no
            # carrier listen request (which would end the stream) and no per-turn token.
            on_stream = _uses_stream(runtime, call)
            token = uuid.uuid4().hex if runtime.carrier.uses_turn_tokens and not on_stream else ""
            turn = CallTurn.objects.create(call=call, token=token, prompt=prompt, started_at=now())
    except IntegrityError:
        raise TurnInProgress() from None

    if runtime.carrier.listens_with_prompt and not on_stream:
        return _continue_with_prompt(runtime, call, turn, prompt)
    try:
        call_speak(call_id=str(call.pk), text=prompt)
        with transaction.atomic():
            call = Call.objects.select_for_update().get(pk=call.pk)
            turn.refresh_from_db()
            if turn.status != TurnStatus.PENDING:
                return _turn_result(turn, config.transcript_timeout_ms)
            move_to(call, CallState.LISTENING)
            call.save()
            _start_listen_clock(turn, config.transcript_timeout_ms)
        if not on_stream:
            _carrier_call(
                "listen", runtime.carrier.start_listening, call_id=str(call.pk), provider_call_id=call.provider_call_id,
                turn_token=token or None, language=None,
            )
    except VoiceCallError as exc:
        _fail_turn(turn, exc)
        raise

    if on_stream:
        return _wait_for_turn(turn, config.transcript_timeout_ms)
    return _await_turn(runtime, call, turn)


def _continue_with_prompt(runtime: CallRuntime, call: Call, turn: CallTurn, prompt: str) -> str:
    """One carrier request says the prompt and listens: a separate speak would be cut off by the listen."""
    config = runtime.config
    try:
        with transaction.atomic():
            call = call_connected(str(call.pk), for_update=True)
            move_to(call, CallState.LISTENING)
            call.save()
            _start_listen_clock(turn, config.transcript_timeout_ms)
        _carrier_call(
            "listen", runtime.carrier.start_listening, call_id=str(call.pk), provider_call_id=call.provider_call_id,
            turn_token=turn.token or None, language=None, prompt=Prompt(prompt, call_voice(runtime, call)),
        )
    except VoiceCallError as exc:
        _fail_turn(turn, exc)
        raise
    add_transcript(call, "bot", prompt)
    return _await_turn(runtime, call, turn)


def _start_listen_clock(turn: CallTurn, timeout_ms: int) -> None:
    """Listening starts now: the transcript wait is measured and bounded from here."""
    turn.listen_started_at = now()
    turn.deadline = turn.listen_started_at + timedelta(milliseconds=timeout_ms)
    turn.save(update_fields=["listen_started_at", "deadline"])
    background.deadline_set(turn.deadline)


def _fail_turn(turn: CallTurn, error: VoiceCallError) -> None:
    CallTurn.objects.filter(pk=turn.pk, status=TurnStatus.PENDING).update(
        status=TurnStatus.FAILED, error=error.message, completed_at=now(), deadline=None
    )


def _await_turn(runtime: CallRuntime, call: Call, turn: CallTurn) -> str:
    """Wait for the turn's transcript, then stop listening (best effort, as in the reference)."""
    try:
        return _wait_for_turn(turn, runtime.config.transcript_timeout_ms)
    finally:
        try:
            runtime.carrier.stop_listening(call_id=str(call.pk), provider_call_id=call.provider_call_id)
        except Exception as exc:  # a carrier failure here must not hide the turn's result
            log.info("stop listening on %s failed: %s", call.pk, exc)


def _wait_for_turn(turn: CallTurn, timeout_ms: int) -> str:
    deadline = turn.deadline
    while True:
        turn.refresh_from_db()
        if turn.status != TurnStatus.PENDING:
            return _turn_result(turn, timeout_ms)
        remaining = (deadline - now()).total_seconds()
        if remaining <= 0:
            turn_timeout(turn.pk, timeout_ms)
            continue
        wait_for_turn_change(remaining)


def turn_timeout(turn_id: int, timeout_ms: int) -> bool:
    """Mark a waiting turn as timed out (only if it is still waiting)."""
    updated = CallTurn.objects.filter(pk=turn_id, status=TurnStatus.PENDING).update(
        status=TurnStatus.TIMEOUT, error=TranscriptTimeout(timeout_ms).message, completed_at=now(), deadline=None
    )
    if updated:
        turn_changed()
    return bool(updated)


def _turn_result(turn: CallTurn, timeout_ms: int) -> str:
    if turn.status == TurnStatus.COMPLETED:
        return turn.transcript
    if turn.status == TurnStatus.TIMEOUT:
        raise TranscriptTimeout(timeout_ms)
    raise VoiceCallError(turn.error or "continue failed")


# --- ending ------------------------------------------------------------------------------


def call_end(*, call_id: str, reason: str = CallState.HANGUP_BOT.value) -> None:
    """Hang up and finalize. Ending an ended call succeeds; concurrent ends hang up once."""
    runtime = get_runtime()
    give_up = time.monotonic() + CLAIM_TTL.total_seconds()
    while True:
        with transaction.atomic():
            call = call_lookup(call_id, for_update=True)
            if call is None:
                raise CallNotFound()
            if call.is_terminal:
                return
            if not call.provider_call_id and now() - call.started_at > DIAL_GRACE:
                finalize(call, reason)  # the dial never completed: nothing to hang up
                return
            claim = call.hangup_claimed_at
            if call.provider_call_id and (claim is None or now() - claim > CLAIM_TTL):
                call.hangup_claimed_at = now()
                # If the carrier's end webhook arrives before our request returns, it keeps this reason.
                call.metadata = {**call.metadata, "hangupReason": reason}
                call.save(update_fields=["hangup_claimed_at", "metadata"])
                break
        if time.monotonic() > give_up:
            raise CarrierError("end failed: another hang-up of this call did not finish")
        time.sleep(0.1)  # another request is hanging up this call (or the dial is in flight)

    try:
        _carrier_call("hangup", runtime.carrier.hangup_call, call_id=str(call.pk), provider_call_id=call.provider_call_id, reason=reason)
    except CarrierError:
        Call.objects.filter(pk=call.pk).update(hangup_claimed_at=None)
        raise
    with transaction.atomic():
        call = Call.objects.select_for_update().get(pk=call.pk)
        call.hangup_claimed_at = None
        if not finalize(call, reason):
            call.save(update_fields=["hangup_claimed_at"])


def call_send_dtmf(*, call_id: str, digits: str) -> None:
    if not digits or not DTMF_PATTERN.fullmatch(digits):
        raise InvalidRequest(DTMF_MESSAGE)
    runtime = get_runtime()
    call = call_connected(call_id)
    if not runtime.carrier.supports_dtmf_send:
        raise UnsupportedByCarrier(f"{runtime.carrier.name} does not support outbound DTMF")
    _carrier_call("dtmf", runtime.carrier.send_dtmf, call_id=str(call.pk), provider_call_id=call.provider_call_id, digits=digits)


# --- the greeting / initial message (behaviour.md §2.8) ------------------------------------


@dataclass(frozen=True)
class GreetingDecision:
    speak: bool
    why: str
    # The carrier already plays it (sent with the dial): record it as spoken without a request.
    spoken_by_carrier: bool = False


def greeting_decision(runtime: CallRuntime, call: Call) -> GreetingDecision:
    """Whether the initial message is spoken as soon as the call is answered."""
    if not call.metadata.get("initialMessage"):
        return GreetingDecision(False, "nothing to say")
    mode = call.metadata.get("mode", "conversation")
    config = runtime.config
    carrier = runtime.carrier
    in_answer = GreetingDecision(False, "the answer to the carrier's answer webhook carries it")
    if mode == "notify":
        if carrier.notify_in_dial:
            return GreetingDecision(False, "sent with the dial request", spoken_by_carrier=True)
        return in_answer if carrier.greets_in_answer else GreetingDecision(True, "notify")
    if mode != "conversation":
        return GreetingDecision(False, f"unknown mode {mode!r}")
    if config.realtime.enabled:
        return GreetingDecision(False, "the realtime model's opening turn speaks it")
    if config.streaming.enabled and carrier.supports_media_streams:
        return GreetingDecision(False, "spoken when the media stream's transcription is ready")
    return in_answer if carrier.greets_in_answer else GreetingDecision(True, "conversation")


@background.job("calls.call_answered")
def on_call_answered(*, call_id: str) -> None:
    runtime = get_runtime()
    call = call_lookup(call_id)
    if call is None or call.is_terminal:
        return
    digits = call.metadata.get("dtmfSequence")
    if digits:
        _send_answer_dtmf(runtime, call, digits)
    decision = greeting_decision(runtime, call)
    log.info("call %s answered; greeting: %s", call.pk, decision.why)
    if decision.spoken_by_carrier:
        initial_message_delivered(call_id=call_id)
    elif decision.speak:
        initial_message_speak(call_id=call_id)


def _send_answer_dtmf(runtime: CallRuntime, call: Call, digits: str) -> None:
    """Digits the dial could not carry, sent once right after the answer (e.g. an extension)."""
    with transaction.atomic():
        locked = Call.objects.select_for_update().get(pk=call.pk)
        if locked.metadata.get("dtmfSequence") != digits:
            return  # another trigger sent them
        locked.metadata = {k: v for k, v in locked.metadata.items() if k != "dtmfSequence"}
        locked.save(update_fields=["metadata", "updated_at"])
    try:
        _carrier_call("dtmf", runtime.carrier.send_dtmf, call_id=str(call.pk), provider_call_id=call.provider_call_id, digits=digits)
    except VoiceCallError as exc:
        log.warning("sending the dial digits on %s failed: %s", call.pk, exc)


def initial_message_delivered(*, call_id: str) -> bool:
    """The carrier played the initial message (with the dial or in a webhook answer): record it once."""
    with transaction.atomic():
        call = call_lookup(call_id, for_update=True)
        if call is None or call.is_terminal or not call.metadata.get("initialMessage"):
            return False
        message = call.metadata["initialMessage"]
        call.metadata = {k: v for k, v in call.metadata.items() if k != "initialMessage"}
        if call.metadata.get("mode", "conversation") != "notify":
            move_to(call, CallState.LISTENING)
        call.save()
        add_transcript(call, "bot", message)
    return True


def initial_message_speak(*, call_id: str) -> bool:
    """Speak the stored initial message once; keep it for a retry if playback fails."""
    runtime = get_runtime()
    with transaction.atomic():
        call = call_lookup(call_id, for_update=True)
        if call is None or call.is_terminal or not call.metadata.get("initialMessage"):
            return False
        claim = call.greeting_claimed_at
        if claim is not None and now() - claim < CLAIM_TTL:
            return False  # another trigger is speaking it right now
        call.greeting_claimed_at = now()
        call.save(update_fields=["greeting_claimed_at"])
    message = call.metadata["initialMessage"]
    conversation = call.metadata.get("mode", "conversation") != "notify"
    if conversation and runtime.carrier.listens_with_prompt and not runtime.config.streaming.enabled:
        return _greet_and_listen(runtime, call, message)
    # An outbound conversation's greeting is not cut by the callee's "hello?" (behaviour.md §2.13).
    interruptible = not (conversation and call.direction == Direction.OUTBOUND)
    try:
        call_speak(call_id=call_id, text=message, interruptible=interruptible)
    except VoiceCallError as exc:
        return _greeting_failed(call, exc)

    listen = False
    with transaction.atomic():
        call = Call.objects.select_for_update().get(pk=call.pk)
        call.greeting_claimed_at = None
        call.metadata = {k: v for k, v in call.metadata.items() if k != "initialMessage"}
        if not call.is_terminal:
            if call.metadata.get("mode", "conversation") == "notify":
                delay = timedelta(seconds=runtime.config.outbound.notify_hangup_delay_sec)
                if runtime.carrier.reports_speech_end:
                    # The carrier says when playback ends (call.spoken); until then assume slow speech.
                    delay += spoken_duration_estimate(message)
                call.notify_hangup_at = now() + delay
                background.deadline_set(call.notify_hangup_at)
            else:
                move_to(call, CallState.LISTENING)
                listen = not runtime.config.streaming.enabled
        call.save()
    if listen:
        try:
            runtime.carrier.start_listening(call_id=call_id, provider_call_id=call.provider_call_id, turn_token=None, language=None)
        except Exception as exc:
            log.warning("start listening on %s after the greeting failed: %s", call.pk, exc)
    return True


def spoken_duration_estimate(text: str) -> timedelta:
    """An upper bound for how long text takes to say (about 8 characters a second, at least 5 s)."""
    return timedelta(seconds=max(5.0, len(text) / 8))


def _greet_and_listen(runtime: CallRuntime, call: Call, message: str) -> bool:
    try:
        _carrier_call(
            "listen", runtime.carrier.start_listening, call_id=str(call.pk), provider_call_id=call.provider_call_id,
            turn_token=None, language=None, prompt=Prompt(message, call_voice(runtime, call)),
        )
    except VoiceCallError as exc:
        return _greeting_failed(call, exc)
    Call.objects.filter(pk=call.pk).update(greeting_claimed_at=None)
    return initial_message_delivered(call_id=str(call.pk))


def _greeting_failed(call: Call, error: VoiceCallError) -> bool:
    """Release the greeting claim and keep the message, so a later trigger retries it."""
    Call.objects.filter(pk=call.pk).update(greeting_claimed_at=None)
    log.warning("initial message on %s failed (kept for a retry): %s", call.pk, error)
    return False


@background.job("calls.greeting")
def greeting_job(*, call_id: str) -> None:
    initial_message_speak(call_id=call_id)


@background.job("calls.answer")
def answer_inbound(*, call_id: str) -> None:
    runtime = get_runtime()
    call = call_lookup(call_id)
    if call is not None and not call.is_terminal and call.provider_call_id:
        _carrier_call("answer", runtime.carrier.answer_call, call_id=call_id, provider_call_id=call.provider_call_id)


@background.job("calls.reject_hangup")
def reject_hangup(*, call_id: str) -> None:
    """Hang up an inbound call the policy refused (its record is already terminal)."""
    carrier_hangup(call_id=call_id, reason=CallState.HANGUP_BOT.value)


@background.job("calls.carrier_hangup")
def carrier_hangup(*, call_id: str, reason: str) -> None:
    """Ask the carrier to hang up without touching the record (it is already final)."""
    runtime = get_runtime()
    call = call_lookup(call_id)
    if call is not None and call.provider_call_id:
        _carrier_call("hangup", runtime.carrier.hangup_call, call_id=call_id, provider_call_id=call.provider_call_id, reason=reason)


@background.job("calls.end")
def end_job(*, call_id: str, reason: str) -> None:
    call_end(call_id=call_id, reason=reason)
