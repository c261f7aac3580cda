"""Event processing (docs/compatibility.md, Event processing): dedupe, lookup, inbound creation, re-keying, per-type handling, finalize."""
from __future__ import annotations

import pytest

from calls.models import Call, CallEvent, CallTurn, TranscriptEntry, TurnStatus
from calls.selectors import call_metadata
from calls.services import EventOutcome, call_initiate, event_process
from core.events import (
    CallActive,
    CallAmd,
    CallAnswered,
    CallDtmf,
    CallEnded,
    CallError,
    CallInitiated,
    CallRinging,
    CallSpeaking,
    CallSpeech,
    EventFormatError,
    event_from_dict,
)
from providers.carriers import mock
from routing.models import AllowedCaller, NumberRoute

pytestmark = pytest.mark.django_db(transaction=True)


def outbound(**kwargs) -> Call:
    call = call_initiate(to=kwargs.pop("to", "+15550001111"), **kwargs)
    call.refresh_from_db()
    return call


def inbound_event(cls=CallInitiated, provider_call_id="CA-in-1", caller="+15557654321", to="+15550009999", **extra):
    return cls(
        call_id=provider_call_id,
        provider_call_id=provider_call_id,
        direction="inbound",
        from_number=caller,
        to_number=to,
        **extra,
    )


def test_duplicate_dedupe_key_is_ignored():
    call = outbound()
    first = CallSpeech(call_id=str(call.pk), transcript="hello", dedupe_key="k1")
    again = CallSpeech(call_id=str(call.pk), transcript="hello", dedupe_key="k1")
    assert event_process(event=first) == EventOutcome.PROCESSED
    assert event_process(event=again) == EventOutcome.DUPLICATE
    assert TranscriptEntry.objects.filter(call=call, speaker="user").count() == 1
    assert CallEvent.objects.filter(call=call).count() == 1


def test_event_id_is_the_key_when_there_is_no_dedupe_key():
    call = outbound()
    event = CallRinging(call_id=str(call.pk), id="evt-1")
    assert event_process(event=event) == EventOutcome.PROCESSED
    assert event_process(event=CallRinging(call_id=str(call.pk), id="evt-1")) == EventOutcome.DUPLICATE
    assert event_process(event=CallRinging(call_id=str(call.pk), id="evt-2")) == EventOutcome.PROCESSED


def test_lookup_by_carrier_id():
    call = outbound()
    assert event_process(event=CallRinging(call_id=call.provider_call_id)) == EventOutcome.PROCESSED
    call.refresh_from_db()
    assert call.state == "ringing"


def test_unknown_call_without_direction_is_ignored_and_not_remembered():
    event = CallRinging(call_id="nobody", provider_call_id="nobody", dedupe_key="x")
    assert event_process(event=event) == EventOutcome.UNKNOWN_CALL
    assert not CallEvent.objects.exists()
    assert not Call.objects.exists()


def test_rekey_adopts_the_new_carrier_id():
    call = outbound()
    event_process(event=CallRinging(call_id=str(call.pk), provider_call_id="call-uuid-2"))
    call.refresh_from_db()
    assert call.provider_call_id == "call-uuid-2"
    # Later events may use the new id only.
    event_process(event=CallAnswered(call_id="call-uuid-2"))
    call.refresh_from_db()
    assert call.state == "answered"


def test_rekey_refuses_an_id_owned_by_another_call(configure):
    configure({"maxConcurrentCalls": 5})
    first, second = outbound(), outbound(to="+15550002222")
    event_process(event=CallRinging(call_id=str(second.pk), provider_call_id=first.provider_call_id))
    second.refresh_from_db()
    assert second.provider_call_id == f"mock-{second.pk}"


def test_inbound_rejected_by_default_policy_is_recorded_and_hung_up_once(outbox):
    assert event_process(event=inbound_event()) == EventOutcome.REJECTED
    call = Call.objects.get(provider_call_id="CA-in-1")
    assert (call.state, call.end_reason, call.direction) == ("hangup-bot", "hangup-bot", "inbound")
    assert call_metadata(call) == {"rejectionReason": "inbound-disabled"}
    assert mock.outbox_actions("CA-in-1") == ["hangup_call"]
    # A later event for the same carrier call does not hang up again or reopen the call.
    assert event_process(event=inbound_event(CallRinging)) == EventOutcome.PROCESSED
    assert mock.outbox_actions("CA-in-1") == ["hangup_call"]
    assert Call.objects.count() == 1
    call.refresh_from_db()
    assert call.state == "hangup-bot"


@pytest.mark.parametrize(
    "caller,allowed",
    [("+15557654321", True), ("+1 (555) 765-4321", True), ("+15550000001", False), (None, False)],
)
def test_allowlist_compares_digits(configure, caller, allowed):
    configure({"inboundPolicy": "allowlist", "allowFrom": ["+15557654321"]})
    outcome = event_process(event=inbound_event(caller=caller))
    assert outcome == (EventOutcome.PROCESSED if allowed else EventOutcome.REJECTED)


def test_allowlist_includes_admin_entries(configure):
    configure({"inboundPolicy": "pairing"})
    AllowedCaller.objects.create(number="+15557654321")
    AllowedCaller.objects.create(number="+15550000002", enabled=False)
    assert event_process(event=inbound_event()) == EventOutcome.PROCESSED
    assert event_process(event=inbound_event(provider_call_id="CA-2", caller="+15550000002")) == EventOutcome.REJECTED


def test_inbound_call_record_with_route_greeting_and_session(configure):
    configure(
        {
            "inboundPolicy": "open",
            "inboundGreeting": "Global hello",
            "numbers": {"+15550009999": {"inboundGreeting": "Route hello", "agentId": "sales"}},
        }
    )
    event_process(event=inbound_event())
    call = Call.objects.get(provider_call_id="CA-in-1")
    assert call.state == "ringing"
    assert (call.from_number, call.to_number, call.direction) == ("+15557654321", "+15550009999", "inbound")
    assert call_metadata(call) == {"initialMessage": "Route hello", "numberRouteKey": "+15550009999"}
    assert call.agent_id == "sales"
    assert call.session_key == "agent:sales:voice:15557654321"


def test_inbound_route_matches_by_digits_and_admin_route_wins(configure):
    configure({"inboundPolicy": "open", "numbers": {"+15550009999": {"inboundGreeting": "config"}}})
    NumberRoute.objects.create(number="+15550009999", inbound_greeting="admin")
    event_process(event=inbound_event(to="+1 555 000 9999"))
    call = Call.objects.get()
    assert call.initial_message == "admin"
    assert call.route_key == "+15550009999"


def test_inbound_fallbacks(configure):
    configure({"inboundPolicy": "open", "fromNumber": "+15550000123"})
    event_process(event=CallInitiated(call_id="c1", provider_call_id="c1", direction="inbound"))
    call = Call.objects.get()
    assert (call.from_number, call.to_number) == ("unknown", "+15550000123")
    assert call.initial_message == "Hello! How can I help you today?"
    assert call.session_key == f"agent:main:voice:{call.pk}"


def test_answered_sets_time_deadline_and_speaks_notify_greeting(outbox):
    call = outbound(message="Your package arrived", mode="notify")
    event_process(event=CallAnswered(call_id=str(call.pk), timestamp=1_800_000_000_000))
    call.refresh_from_db()
    assert call.answered_at.timestamp() == 1_800_000_000
    assert call.max_duration_deadline.timestamp() == 1_800_000_300
    assert mock.outbox_actions(call.provider_call_id) == ["initiate_call", "play_tts"]
    assert not call.initial_message
    assert call.notify_hangup_at is not None
    assert list(call.transcript_entries.values_list("speaker", "text")) == [("bot", "Your package arrived")]


def test_conversation_greeting_then_listens(outbox):
    call = outbound(message="Hi, it's the clinic", mode="conversation")
    event_process(event=CallAnswered(call_id=str(call.pk)))
    call.refresh_from_db()
    assert mock.outbox_actions(call.provider_call_id) == ["initiate_call", "play_tts", "start_listening"]
    assert call.state == "listening"
    assert call.notify_hangup_at is None


def test_greeting_skipped_when_realtime_owns_it(configure, outbox):
    configure({"realtime": {"enabled": True}, "inboundPolicy": "open"})
    call = outbound(message="Hi", mode="conversation")
    event_process(event=CallAnswered(call_id=str(call.pk)))
    assert mock.outbox_actions(call.provider_call_id) == ["initiate_call"]
    call.refresh_from_db()
    assert call.initial_message == "Hi"


def test_failed_greeting_is_kept_for_a_retry(monkeypatch, outbox):
    call = outbound(message="Hello", mode="notify")

    def broken(self, **kwargs):
        raise RuntimeError("carrier down")

    monkeypatch.setattr(mock.MockCarrier, "play_tts", broken)
    event_process(event=CallAnswered(call_id=str(call.pk)))
    call.refresh_from_db()
    assert call.initial_message == "Hello"
    assert call.greeting_claimed_at is None
    assert call.state == "listening"  # a failed playback goes back to listening
    assert not call.transcript_entries.exists()
    monkeypatch.undo()
    from calls.services import initial_message_speak

    assert initial_message_speak(call_id=str(call.pk)) is True
    assert initial_message_speak(call_id=str(call.pk)) is False  # spoken once only
    assert mock.outbox_actions(call.provider_call_id).count("play_tts") == 1


@pytest.mark.parametrize(
    "event_cls,expected",
    [(CallInitiated, "initiated"), (CallRinging, "ringing"), (CallActive, "active"), (CallSpeaking, "speaking")],
)
def test_state_events(event_cls, expected):
    call = outbound()
    event_process(event=event_cls(call_id=str(call.pk)))
    call.refresh_from_db()
    assert call.state == expected


def test_speaking_and_speech_set_answered_when_missing():
    call = outbound()
    event_process(event=CallSpeaking(call_id=str(call.pk), text="hi"))
    call.refresh_from_db()
    assert call.answered_at is not None and call.max_duration_deadline is not None


def test_interim_speech_changes_state_but_not_transcript():
    call = outbound()
    event_process(event=CallSpeech(call_id=str(call.pk), transcript="hel", is_final=False))
    call.refresh_from_db()
    assert call.state == "listening"
    assert not call.transcript_entries.exists()


def test_final_speech_completes_waiting_turn_with_latencies():
    call = outbound()
    turn = CallTurn.objects.create(call=call, token="", prompt="Which day?")
    event_process(event=CallSpeech(call_id=str(call.pk), transcript=" Tuesday "))
    turn.refresh_from_db()
    call.refresh_from_db()
    assert (turn.status, turn.transcript) == (TurnStatus.COMPLETED, "Tuesday")
    assert turn.turn_latency_ms is not None and turn.listen_wait_ms is not None
    assert call.turn_count == 1
    assert call_metadata(call)["lastTurnLatencyMs"] == turn.turn_latency_ms


def test_speech_with_wrong_turn_token_is_ignored():
    call = outbound()
    turn = CallTurn.objects.create(call=call, token="t-current", prompt="?")
    assert event_process(event=CallSpeech(call_id=str(call.pk), transcript="old answer", turn_token="t-old")) == EventOutcome.PROCESSED
    turn.refresh_from_db()
    assert turn.status == TurnStatus.PENDING
    assert not call.transcript_entries.exists()
    event_process(event=CallSpeech(call_id=str(call.pk), transcript="new answer", turn_token="t-current"))
    turn.refresh_from_db()
    assert turn.transcript == "new answer"


def test_silence_and_dtmf_are_recorded_only():
    call = outbound()
    event_process(event=CallDtmf(call_id=str(call.pk), digits="12#"))
    call.refresh_from_db()
    assert call.state == "initiated"
    assert CallEvent.objects.get(call=call).payload["digits"] == "12#"


def test_ended_finalizes_with_reason_and_fails_waiting_turn():
    call = outbound()
    turn = CallTurn.objects.create(call=call, token="", prompt="?")
    event_process(event=CallEnded(call_id=str(call.pk), reason="hangup-user", timestamp=1_800_000_005_000))
    call.refresh_from_db()
    turn.refresh_from_db()
    assert (call.state, call.end_reason) == ("hangup-user", "hangup-user")
    assert call.ended_at.timestamp() == 1_800_000_005
    assert call.max_duration_deadline is None
    assert (turn.status, turn.error) == (TurnStatus.FAILED, "Call ended: hangup-user")


def test_events_after_the_end_are_kept_but_change_nothing():
    call = outbound()
    event_process(event=CallEnded(call_id=str(call.pk), reason="completed"))
    event_process(event=CallSpeech(call_id=str(call.pk), transcript="late"))
    call.refresh_from_db()
    assert call.state == "completed"
    assert not call.transcript_entries.exists()
    assert CallEvent.objects.filter(call=call).count() == 2


def test_error_event_non_retryable_finalizes():
    call = outbound()
    turn = CallTurn.objects.create(call=call, token="", prompt="?")
    event_process(event=CallError(call_id=str(call.pk), error="media failed"))
    call.refresh_from_db()
    turn.refresh_from_db()
    assert (call.state, call.last_error) == ("error", "media failed")
    assert turn.error == "Call error: media failed"


def test_answering_machine_verdicts_keep_the_first_and_the_latest():
    call = outbound()
    event_process(event=CallAmd(call_id=str(call.pk), answered_by="machine_start"))
    event_process(event=CallAmd(call_id=str(call.pk), answered_by="machine_end_beep"))
    call.refresh_from_db()
    assert (call.answered_by_first, call.answered_by) == ("machine_start", "machine_end_beep")
    assert call_metadata(call) == {"mode": "notify", "answeredBy": "machine_end_beep", "answeredByFirst": "machine_start"}


def test_outbound_call_first_seen_in_a_webhook_has_no_mode():
    event_process(event=CallInitiated(call_id="CA-out-1", provider_call_id="CA-out-1", direction="outbound",
                                from_number="+15550009999", to_number="+15557654321"))
    call = Call.objects.get(provider_call_id="CA-out-1")
    assert (call.direction, call.mode, call_metadata(call)) == ("outbound", "", {})


def test_retryable_error_changes_nothing_and_can_repeat():
    call = outbound()
    event = CallError(call_id=str(call.pk), error="blip", retryable=True, dedupe_key="same")
    assert event_process(event=event) == EventOutcome.PROCESSED
    assert event_process(event=event) == EventOutcome.PROCESSED
    call.refresh_from_db()
    assert call.state == "initiated"
    assert CallEvent.objects.filter(call=call, dedupe_key=None).count() == 2


def test_event_from_dict_defaults_and_errors():
    event = event_from_dict({"type": "call.speech", "callId": "c"}, default_dedupe_key="req:0")
    assert (event.transcript, event.is_final, event.key) == ("", True, "req:0")
    ended = event_from_dict({"type": "call.ended", "callId": "c"})
    assert ended.reason == "completed"
    error = event_from_dict({"type": "call.error", "callId": "c"})
    assert error.error == "unknown error"
    explicit = event_from_dict({"type": "call.ringing", "callId": "c", "id": "e1"}, default_dedupe_key="req:0")
    assert explicit.key == "e1"


@pytest.mark.parametrize(
    "data,message",
    [
        ({"callId": "c"}, "events[0].type: required"),
        ({"type": "call.ringing"}, "events[0].callId: required"),
        ({"type": "call.nope", "callId": "c"}, "events[0].type: unknown event type 'call.nope'"),
        ({"type": "call.ended", "callId": "c", "reason": "bored"}, "events[0].reason: must be one of"),
        ({"type": "call.ended", "callId": "c", "reason": "failed", "detail": 404}, "events[0].detail: must be a string"),
        ({"type": "call.ended", "callId": "c", "reason": "failed", "detail": "x" * 201}, "events[0].detail: at most 200"),
        ({"type": "call.speech", "callId": "c", "isFinal": "yes"}, "events[0].isFinal: must be true or false"),
        ({"type": "call.speech", "callId": "c", "confidence": 2}, "events[0].confidence: must be a number between 0 and 1"),
        ({"type": "call.ringing", "callId": "c", "direction": "sideways"}, 'events[0].direction: must be "inbound" or "outbound"'),
        ({"type": "call.ringing", "callId": "c", "timestamp": "now"}, "events[0].timestamp: must be milliseconds"),
        ({"type": "call.ringing", "callId": "c", "transcript": "x"}, "events[0]: unknown field(s) for call.ringing: transcript"),
        ("not an object", "events[0]: must be an object"),
    ],
)
def test_event_from_dict_names_the_bad_field(data, message):
    with pytest.raises(EventFormatError) as info:
        event_from_dict(data, where="events[0]")
    assert str(info.value).startswith(message)
