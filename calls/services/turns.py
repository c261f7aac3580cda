"""Turns: `continue` says a prompt, listens, and waits for the caller's answer (or times out)."""
from __future__ import annotations

import uuid
from datetime import timedelta

from django.db import IntegrityError, transaction

from core.errors import InvalidRequest, TranscriptTimeout, TurnInProgress, VoiceCallError
from core.states import CallState
from providers.carriers.base import Prompt

from .. import background
from ..clock import now
from ..models import Call, CallTurn, TurnStatus
from ..runtime import CallRuntime, get_runtime
from ..selectors import call_connected, call_uses_stream, call_voice
from .common import carrier_request, log, move_to, transcript_add, turn_changed, wait_for_turn_change
from .speech import call_speak


def call_continue(*, call_id: str, prompt: str) -> str:
    """Speak `prompt`, listen, and return the caller's next final transcript."""
    if not prompt or not prompt.strip():
        raise InvalidRequest("message required")
    runtime = get_runtime()
    config = runtime.config
    try:
        with transaction.atomic():
            call = call_connected(ref=call_id, for_update=True)
            if CallTurn.objects.filter(call=call, status=TurnStatus.PENDING).exists():
                raise TurnInProgress()
            # A media stream listens all the time: its transcripts answer the turn, with no
            # carrier listen request (which would end the stream) and no per-turn token.
            on_stream = call_uses_stream(call=call)
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
            carrier_request(
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
            call = call_connected(ref=str(call.pk), for_update=True)
            move_to(call, CallState.LISTENING)
            call.save()
            _start_listen_clock(turn, config.transcript_timeout_ms)
        carrier_request(
            "listen", runtime.carrier.start_listening, call_id=str(call.pk), provider_call_id=call.provider_call_id,
            turn_token=turn.token or None, language=None, prompt=Prompt(prompt, call_voice(call=call)),
        )
    except VoiceCallError as exc:
        _fail_turn(turn, exc)
        raise
    transcript_add(call=call, speaker="bot", text=prompt)
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
            turn_timeout(turn_id=turn.pk, timeout_ms=timeout_ms)
            continue
        wait_for_turn_change(remaining)


def turn_timeout(*, turn_id: int, timeout_ms: int) -> bool:
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
