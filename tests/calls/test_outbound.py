"""Outbound admission and the call operations: initiate, speak, continue, end, dtmf (–2.10; docs/compatibility.md, Call commands)."""
from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest

from calls.clock import now
from calls.models import Call, CallTurn, TurnStatus
from calls.selectors import call_metadata
from calls.services import call_continue, call_end, call_initiate, call_send_dtmf, call_speak, event_process
from core.errors import (
    CallFailed,
    CallHasEnded,
    CallNotConnected,
    CallNotFound,
    CapacityReached,
    CarrierError,
    InvalidRequest,
    SetupIncomplete,
    TranscriptTimeout,
    TurnInProgress,
    UnsupportedByCarrier,
    VoiceCallDisabled,
)
from core.events import CallAnswered, CallEnded, CallSpeech
from providers.carriers import mock
from tests.conftest import admit_concurrently, hold_hangup_until_seen
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def live_call(**kwargs) -> Call:
    call = call_initiate(to="+15550001111", **kwargs)
    event_process(event=CallAnswered(call_id=str(call.pk)))
    call.refresh_from_db()
    return call


def test_initiate_writes_the_record_before_dialing(monkeypatch):
    seen = {}

    def dial(self, dial):
        seen["row"] = Call.objects.get(pk=dial.call_id)
        return mock.DialResult(provider_call_id="mock-x")

    monkeypatch.setattr(mock.MockCarrier, "initiate_call", dial)
    call = call_initiate(to="+15550001111", message="Hi", mode="notify", requester_session_key="agent:main:chat")
    row = seen["row"]
    assert (row.state, row.direction, row.provider_call_id) == ("initiated", "outbound", None)
    assert call_metadata(row) == {"mode": "notify", "initialMessage": "Hi", "requesterSessionKey": "agent:main:chat"}
    call.refresh_from_db()
    assert call.provider_call_id == "mock-x"


def test_initiate_defaults(outbox):
    call = call_initiate(to="+15550001111")
    call.refresh_from_db()
    assert call.from_number == "+15550000000"  # the mock carrier's stand-in
    assert call_metadata(call) == {"mode": "notify"}  # outbound.defaultMode
    assert call.session_key == "agent:main:voice:15550001111"
    request = outbox[0]
    assert request.action == "initiate_call"
    assert request.params["webhook_url"] == "http://127.0.0.1:3334/voice/webhook"


def test_initiate_session_scopes(configure):
    configure({"sessionScope": "per-call", "maxConcurrentCalls": 3})
    call = call_initiate(to="+15550001111")
    assert call.session_key == f"agent:main:voice:call:{call.pk}"
    explicit = call_initiate(to="+15550001111", session_key="my-thread")
    assert explicit.session_key == "agent:main:my-thread"
    kept = call_initiate(to="+15550001111", session_key="agent:main:voice:abc")
    assert kept.session_key == "agent:main:voice:abc"
    with pytest.raises(InvalidRequest, match="sessionKey must not be empty"):
        call_initiate(to="+15550001111", session_key=" ")


def test_invalid_mode_falls_back_to_default(configure):
    configure({"outbound": {"defaultMode": "conversation"}})
    call = call_initiate(to="+15550001111", mode="shout")
    assert call.mode == "conversation"


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"to": "5550001111"}, "to: Expected E.164 format"),
        ({"to": ""}, "to: Expected E.164 format"),
        ({"to": "+15550001111", "dtmf_sequence": "12x"}, "dtmfSequence: digits may only contain"),
        ({"to": "+15550001111", "dtmf_sequence": "123", "mode": "notify"}, "dtmfSequence requires conversation mode"),
    ],
)
def test_initiate_validation(kwargs, message):
    with pytest.raises(InvalidRequest) as info:
        call_initiate(**kwargs)
    assert str(info.value).startswith(message)
    assert not Call.objects.exists()


def test_dtmf_sequence_is_passed_to_the_carrier(outbox):
    call_initiate(to="+15550001111", mode="conversation", dtmf_sequence="ww123#")
    assert outbox[0].params["dtmf_sequence"] == "ww123#"


def test_concurrency_limit_counts_live_calls(configure):
    configure({"maxConcurrentCalls": 2})
    first = call_initiate(to="+15550001111")
    call_initiate(to="+15550001112")
    with pytest.raises(CapacityReached, match=r"Maximum concurrent calls \(2\) reached"):
        call_initiate(to="+15550001113")
    assert Call.objects.count() == 2
    event_process(event=CallEnded(call_id=str(first.pk), reason="completed"))
    call_initiate(to="+15550001113")


def test_concurrent_admissions_never_exceed_the_limit(configure):
    configure({"maxConcurrentCalls": 3})
    assert admit_concurrently(8).count("ok") == 3
    assert Call.objects.live().count() == 3


def test_carrier_failure_finalizes_as_failed_and_frees_the_slot(monkeypatch):
    def refuse(self, dial):
        raise RuntimeError("21211 invalid To number")

    monkeypatch.setattr(mock.MockCarrier, "initiate_call", refuse)
    with pytest.raises(CallFailed) as info:
        call_initiate(to="+15550001111")
    assert info.value.message == "21211 invalid To number"
    call = Call.objects.get(pk=info.value.call_id)
    assert (call.state, call.end_reason, call.last_error) == ("failed", "failed", "21211 invalid To number")
    assert call_metadata(call)["lastError"] == "21211 invalid To number"  # what `voicecall status` shows
    monkeypatch.undo()
    call_initiate(to="+15550001111")  # the failed call does not hold the only slot


def test_setup_incomplete_and_disabled(configure):
    configure({"provider": "twilio"})
    with pytest.raises(SetupIncomplete) as info:
        call_initiate(to="+15550001111")
    assert info.value.errors == [
        "fromNumber: required (or set TWILIO_FROM_NUMBER)",
        "twilio.accountSid: required (or set TWILIO_ACCOUNT_SID)",
        "twilio.authToken: required (or set TWILIO_AUTH_TOKEN)",
    ]
    assert str(info.value).startswith("Voice call setup incomplete: fromNumber: required")
    configure({"enabled": False})
    with pytest.raises(VoiceCallDisabled):
        call_speak(call_id="x", text="hi")


def test_speak_appends_bot_transcript_after_playback(outbox):
    call = live_call()
    call_speak(call_id=str(call.pk), text="One moment")
    call.refresh_from_db()
    assert call.state == "speaking"
    assert outbox[-1].action == "play_tts" and outbox[-1].params["text"] == "One moment"
    assert list(call.transcript_entries.values_list("speaker", "text")) == [("bot", "One moment")]


def test_speak_uses_the_preferred_voice(configure, outbox):
    configure({"tts": {"provider": "openai", "providers": {"openai": {"voice": "nova"}}}})
    call = live_call()
    call_speak(call_id=str(call.pk), text="Hi")
    assert outbox[-1].params["voice"] == "nova"


def test_speak_failure_returns_to_listening_without_transcript(monkeypatch):
    call = live_call()

    def broken(self, **kwargs):
        raise RuntimeError("TTS unavailable")

    monkeypatch.setattr(mock.MockCarrier, "play_tts", broken)
    with pytest.raises(CarrierError, match="TTS unavailable"):
        call_speak(call_id=str(call.pk), text="Hello")
    call.refresh_from_db()
    assert call.state == "listening"
    assert not call.transcript_entries.exists()


def test_operation_errors(configure):
    configure({"maxConcurrentCalls": 5})
    with pytest.raises(CallNotFound, match="Call not found"):
        call_speak(call_id="no-such-call", text="hi")
    unconnected = Call.objects.create(provider="mock", direction="outbound", from_number="+1", to_number="+2")
    with pytest.raises(CallNotConnected, match="Call not connected"):
        call_speak(call_id=str(unconnected.pk), text="hi")
    call = live_call()
    call_end(call_id=str(call.pk))
    with pytest.raises(CallHasEnded, match="Call has ended"):
        call_speak(call_id=str(call.pk), text="hi")
    with pytest.raises(CallHasEnded):
        call_continue(call_id=str(call.pk), prompt="hi")
    with pytest.raises(InvalidRequest, match="message required"):
        call_speak(call_id=str(call.pk), text="  ")


def test_continue_returns_the_next_final_transcript_with_latencies(outbox):
    call = live_call()

    def answer():
        from django.db import connection

        try:
            listening = wait_until(
                lambda: CallTurn.objects.filter(call=call, listen_started_at__isnull=False).first(), "the turn to listen"
            )
            # the caller answers 50 ms after listening began: listen_wait_ms must measure it
            wait_until(lambda: now() - listening.listen_started_at >= timedelta(milliseconds=50), "50 ms of listening")
            event_process(event=CallSpeech(call_id=call.provider_call_id, transcript="Tuesday at noon"))
        finally:
            connection.close()

    caller = threading.Thread(target=answer)
    caller.start()
    assert call_continue(call_id=str(call.pk), prompt="When suits you?") == "Tuesday at noon"
    caller.join()
    turn = CallTurn.objects.get(call=call)
    assert turn.status == TurnStatus.COMPLETED
    assert turn.listen_wait_ms >= 40 and turn.turn_latency_ms >= turn.listen_wait_ms
    actions = [r.action for r in outbox if r.provider_call_id == call.provider_call_id]
    assert actions[-3:] == ["play_tts", "start_listening", "stop_listening"]
    call.refresh_from_db()
    assert call.turn_count == 1
    assert list(call.transcript_entries.values_list("speaker", "text")) == [
        ("bot", "When suits you?"),
        ("user", "Tuesday at noon"),
    ]


def test_continue_times_out(configure):
    configure({"transcriptTimeoutMs": 200})
    call = live_call()
    started = time.monotonic()
    with pytest.raises(TranscriptTimeout, match="Timed out waiting for transcript after 200ms"):
        call_continue(call_id=str(call.pk), prompt="Hello?")
    assert 0.15 < time.monotonic() - started < 2
    assert CallTurn.objects.get(call=call).status == TurnStatus.TIMEOUT


def test_continue_rejects_a_second_waiter():
    call = live_call()
    CallTurn.objects.create(call=call, token="", prompt="first")
    with pytest.raises(TurnInProgress, match="Already waiting for transcript"):
        call_continue(call_id=str(call.pk), prompt="second")


def test_continue_fails_when_the_call_ends_while_waiting():
    call = live_call()

    def hang_up():
        from django.db import connection

        try:
            wait_until(lambda: CallTurn.objects.filter(call=call, listen_started_at__isnull=False).exists(),
                       "the turn to listen")
            event_process(event=CallEnded(call_id=str(call.pk), reason="hangup-user"))
        finally:
            connection.close()

    thread = threading.Thread(target=hang_up)
    thread.start()
    with pytest.raises(Exception, match="Call ended: hangup-user"):
        call_continue(call_id=str(call.pk), prompt="Still there?")
    thread.join()


def test_end_hangs_up_and_finalizes(outbox):
    call = live_call()
    call_end(call_id=call.provider_call_id)
    call.refresh_from_db()
    assert (call.state, call.end_reason) == ("hangup-bot", "hangup-bot")
    assert call.hangup_claimed_at is None and call.max_duration_deadline is None
    assert outbox[-1].action == "hangup_call"
    call_end(call_id=str(call.pk))  # ending an ended call succeeds
    assert [r.action for r in outbox].count("hangup_call") == 1
    with pytest.raises(CallNotFound):
        call_end(call_id="missing")


def test_concurrent_ends_hang_up_once(monkeypatch, outbox):
    call = live_call()
    hold_hangup_until_seen(monkeypatch, mock.MockCarrier, others=3)
    errors = []

    def end():
        try:
            call_end(call_id=str(call.pk))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            from django.db import connection

            connection.close()

    threads = [threading.Thread(target=end) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert [r.action for r in outbox].count("hangup_call") == 1
    call.refresh_from_db()
    assert call.state == "hangup-bot"


def test_failed_hangup_releases_the_claim(monkeypatch):
    call = live_call()
    monkeypatch.setattr(mock.MockCarrier, "hangup_call", lambda self, **kw: (_ for _ in ()).throw(RuntimeError("busy")))
    with pytest.raises(CarrierError, match="busy"):
        call_end(call_id=str(call.pk))
    call.refresh_from_db()
    assert call.hangup_claimed_at is None and not call.is_terminal
    monkeypatch.undo()
    call_end(call_id=str(call.pk))


def test_dtmf(outbox):
    call = live_call()
    call_send_dtmf(call_id=str(call.pk), digits="1w2#")
    assert outbox[-1].action == "send_dtmf" and outbox[-1].params["digits"] == "1w2#"
    with pytest.raises(InvalidRequest, match="digits may only contain digits, \\*, #, comma, w, p"):
        call_send_dtmf(call_id=str(call.pk), digits="12a")


def test_dtmf_unsupported_by_carrier(monkeypatch):
    call = live_call()
    monkeypatch.setattr(mock.MockCarrier, "supports_dtmf_send", False)
    with pytest.raises(UnsupportedByCarrier, match="mock does not support outbound DTMF"):
        call_send_dtmf(call_id=str(call.pk), digits="1")
