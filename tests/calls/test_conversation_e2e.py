"""Multi-turn conversations over the carrier simulator and the real gateway (Daphne on a loopback port).

The gateway hears the caller with offline PocketSphinx and answers through the llm responder,
pointed at a local fake Chat Completions server that streams its replies. Two numbers with their
own routes (greeting, prompt, model, voice) and an allowlisted caller each hold a conversation.
"""
from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async

from calls import background
from calls.models import Call, ReplyStatus, ReplyTurn, SessionMessage, TranscriptEntry
from calls.selectors import call_metadata
from calls.simulator.call import Gateway, Line
from calls.simulator.rest import TwilioRestStub
from calls.simulator.run import simulate
from core.urls import webhook_url
from tests.fakes.ai.llm import FakeChatCompletions
from tests.calls.simulated import stream_recorded
from tests.fakes.ai.tts import FakeTts

# Piper and PocketSphinx keep cores busy in real time: these tests run one after the other, in one
# xdist worker (`--dist loadgroup`), never two at once.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.xdist_group("offline-audio")]

ACCOUNT = "AC" + "2" * 32
TOKEN = "simulator-token"
KEY = "sk-fake-llm"
CLINIC, GARAGE = "+15550100010", "+15550100020"
CALLER = "+15550100001"
LINES = [Line("I would like to book an appointment please."), Line("Please tell me your opening hours.")]
REPLIES = {
    "clinic": ["Your appointment is booked for Monday morning.", "We open at nine in the morning."],
    "garage": ["The garage can see your car on Friday.", "The garage opens at eight."],
}


def scripted_model(body: dict) -> str:
    """Answers by route (its prompt names it) and by how many times the caller has spoken."""
    system = body["messages"][0]["content"]
    place = "garage" if "garage" in system else "clinic"
    turn = sum(1 for m in body["messages"] if m["role"] == "user") - 1
    replies = REPLIES[place]
    return '{"spoken": "%s"}' % replies[min(turn, len(replies) - 1)]


@pytest.fixture
def rest_stub():
    stub = TwilioRestStub(on_hangup=lambda sid: None).start()
    yield stub
    stub.stop()


@pytest.fixture
def llm():
    with FakeChatCompletions(api_key=KEY, reply=scripted_model, chunk_chars=6, delay_between_chunks=0.01) as fake:
        yield fake


@pytest.fixture
def voices():
    with FakeTts(ms_per_char=30) as fake:
        yield fake


@pytest.fixture
def gateway(live_gateway, configure, rest_stub, llm, voices):
    def apply(**extra):
        loaded = configure({
            "provider": "twilio",
            "twilio": {"accountSid": ACCOUNT, "authToken": TOKEN, "baseUrl": rest_stub.base_url},
            "fromNumber": CLINIC,
            "publicUrl": live_gateway,
            # The calls and the simulator's ear share this process's decoder pool: room for all.
            "streaming": {"enabled": True, "provider": "local", "providers": {"local": {"maxDecoders": 4}}},
            "tts": {"provider": "local"},
            "responseModel": "fake/default-model",
            "models": {"providers": {"fake": {"baseUrl": llm.url, "apiKey": KEY}}},
            "maxConcurrentCalls": 4,
            **extra,
        })
        assert not loaded.errors, loaded.errors
        background.set_mode("thread")
        return Gateway(base_url=live_gateway, webhook_url=webhook_url(loaded.config), account_sid=ACCOUNT, auth_token=TOKEN)

    yield apply
    background.drain(10)


def _stored(call_sid: str):
    call = Call.objects.get(provider_call_id=call_sid)
    entries = list(TranscriptEntry.objects.filter(call=call).order_by("timestamp", "pk").values_list("speaker", "text"))
    replies = list(ReplyTurn.objects.filter(call=call).order_by("pk"))
    return call, entries, replies


def assert_conversation(entries, replies, greeting: str, expected_replies: list[str]) -> None:
    bot = [text for speaker, text in entries if speaker == "bot"]
    assert bot == [greeting, *expected_replies], entries
    assert [speaker for speaker, _ in entries] == ["bot", "user", "bot", "user", "bot"], entries
    assert [r.status for r in replies] == [ReplyStatus.SPOKEN, ReplyStatus.SPOKEN], replies
    assert [r.reply for r in replies] == expected_replies
    for reply in replies:
        # Per-turn latencies from the caller's last word: first text, first words on the line, done.
        assert reply.first_text_ms is not None and reply.first_audio_ms is not None and reply.total_ms is not None
        assert reply.first_text_ms <= reply.first_audio_ms < reply.total_ms
        assert reply.first_audio_ms < 5000, reply.first_audio_ms


async def test_two_numbers_hold_their_own_conversations(gateway, rest_stub, llm, voices):
    site = gateway(
        inboundPolicy="open",
        numbers={
            CLINIC: {"inboundGreeting": "Welcome to the clinic.", "responseSystemPrompt": "You answer the clinic phone.",
                     "responseModel": "fake/clinic-model"},
            GARAGE: {"inboundGreeting": "Thanks for calling the garage.",
                     "responseSystemPrompt": "You answer the garage phone.", "responseModel": "fake/garage-model",
                     "tts": {"provider": "openai", "providers": {"openai": {
                         "apiKey": voices.openai_key, "baseUrl": f"{voices.url}/v1", "voice": "nova"}}}},
        },
    )
    # One after the other: offline recognition of two callers and an ear at once is more than a
    # loaded two-core CI machine keeps in real time (the bench measures concurrency instead).
    clinic = await simulate(site, LINES, rest=rest_stub, callee=CLINIC, max_seconds=60)
    garage = await simulate(site, LINES, rest=rest_stub, caller="+15550100002", callee=GARAGE, max_seconds=60, listen=False)
    clinic_call, garage_call = clinic.calls[0], garage.calls[0]
    assert clinic_call.outcome == "completed", clinic_call
    assert garage_call.outcome == "completed", garage_call
    await stream_recorded(clinic_call.call_sid)
    await stream_recorded(garage_call.call_sid)

    _, entries, replies = await sync_to_async(_stored)(clinic_call.call_sid)
    assert_conversation(entries, replies, "Welcome to the clinic.", REPLIES["clinic"])
    _, entries, replies = await sync_to_async(_stored)(garage_call.call_sid)
    assert_conversation(entries, replies, "Thanks for calling the garage.", REPLIES["garage"])

    # The callers heard answers after their lines (the gateway's own per-turn latencies are
    # checked above; the simulator's ear-side count can miss a turn under heavy load).
    for report in (clinic_call, garage_call):
        assert 1 <= len(report.turn_latencies_ms) <= 2, (report.transcript, report.turn_latencies_ms)
    # Each route's prompt and model went to the model, with the first turn as history of the second.
    by_model: dict[str, list] = {}
    for request in llm.requests:
        by_model.setdefault(request.json["model"], []).append(request.json["messages"])
    assert set(by_model) == {"clinic-model", "garage-model"}
    for model, place in (("clinic-model", "clinic"), ("garage-model", "garage")):
        first, second = by_model[model]
        assert first[0]["content"].startswith(f"You answer the {place} phone.")
        assert [m["role"] for m in second] == ["system", "user", "assistant", "user"]
        assert second[2]["content"] == REPLIES[place][0]
    # The garage speaks with its own voice (the openai voice "nova"); the clinic with the offline one.
    assert [r.status for r in voices.requests] == [200] * len(voices.requests)  # its key reached it
    spoken_by_fake = [(r.json["voice"], r.json["input"]) for r in voices.requests]
    assert spoken_by_fake == [("nova", "Thanks for calling the garage."), *(("nova", text) for text in REPLIES["garage"])]
    # The clinic caller really heard its replies (offline recognition: key words).
    heard = clinic_call.heard().lower()
    assert "monday" in heard and "morning" in heard, heard


async def test_an_allowlisted_caller_holds_a_conversation_and_is_remembered(gateway, rest_stub, llm):
    site = gateway(inboundPolicy="allowlist", allowFrom=[CALLER], inboundGreeting="Hello again.",
                   numbers={CLINIC: {"responseSystemPrompt": "You answer the clinic phone."}})
    report = await simulate(site, LINES, rest=rest_stub, caller=CALLER, callee=CLINIC, max_seconds=60, listen=False)
    call_report = report.calls[0]
    assert call_report.outcome == "completed", call_report
    await stream_recorded(call_report.call_sid)
    call, entries, replies = await sync_to_async(_stored)(call_report.call_sid)
    assert_conversation(entries, replies, "Hello again.", REPLIES["clinic"])
    assert call.session_key == "agent:main:voice:15550100001"
    roles = await sync_to_async(lambda: list(SessionMessage.objects.filter(session__key=call.session_key)
                                             .values_list("role", flat=True)))()
    assert roles == ["user", "assistant", "user", "assistant"]
    # A stranger on the same setup is turned away.
    stranger = await simulate(site, LINES, rest=rest_stub, caller="+15550100099", callee=CLINIC, max_seconds=10, listen=False)
    assert stranger.calls[0].outcome != "completed" or stranger.calls[0].frames_received == 0
    rejected = await sync_to_async(lambda: call_metadata(Call.objects.get(provider_call_id=stranger.calls[0].call_sid)))()
    assert rejected == {"rejectionReason": "not-allowlisted"}
