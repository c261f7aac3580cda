"""Who may call: every inboundPolicy decision, allowlists from config and admin, and pairing by code."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from calls.models import Call
from calls.selectors import call_metadata
from calls.services import deadlines_sweep, event_process
from calls.services.pairing import FAILED_LINE, PAIRED_LINE, PAIRING_PROMPT, RETRY_LINE
from core.events import CallAnswered, CallDtmf, CallInitiated, CallSpeech
from providers.carriers import mock
from routing.models import AllowedCaller, PairingCode
from routing.pairing import digits_in
from routing.policy import inbound_decision

pytestmark = pytest.mark.django_db(transaction=True)

CALLER = "+15557654321"
LINE = "+15550001111"
GREETING = "Hello, this is the front desk."

_sids = iter(range(1, 10**6))


def ring(caller: str | None = CALLER) -> Call:
    sid = f"mock-in-{next(_sids)}"
    event_process(event=CallInitiated(call_id=sid, provider_call_id=sid, direction="inbound", from_number=caller, to_number=LINE))
    call = Call.objects.get(provider_call_id=sid)
    if not call.is_terminal:
        event_process(event=CallAnswered(call_id=sid, provider_call_id=sid))
        call.refresh_from_db()
    return call


def spoken(call: Call) -> list[str]:
    return [r.params["text"] for r in mock.outbox if r.action == "play_tts" and r.provider_call_id == call.provider_call_id]


def hangups(call: Call) -> int:
    return sum(1 for r in mock.outbox if r.action == "hangup_call" and r.provider_call_id == call.provider_call_id)


def policy(configure, name: str, allow_from=(), **extra):
    configure({"provider": "mock", "inboundPolicy": name, "allowFrom": list(allow_from), "inboundGreeting": GREETING,
               "agents": {"main": {"responder": {"type": "scripted", "replies": ["Sure."]}}}, **extra})


# --- the decision -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "allow_from", "admin", "caller", "expected"), [
    ("disabled", [CALLER], [], CALLER, (False, "inbound-disabled")),
    ("open", [], [], CALLER, (True, "")),
    ("open", [], [], None, (True, "")),
    ("allowlist", [CALLER], [], CALLER, (True, "")),
    ("allowlist", [], [CALLER], CALLER, (True, "")),
    ("allowlist", [CALLER], [], "1-555-765-4321", (True, "")),  # digits-only comparison
    ("allowlist", [CALLER], [], "+15557654322", (False, "not-allowlisted")),
    ("allowlist", [CALLER], [], None, (False, "no-caller-id")),
    ("allowlist", [CALLER], [], "anonymous", (False, "no-caller-id")),
    ("allowlist", ["+1555765432"], [], CALLER, (False, "not-allowlisted")),  # a prefix is not a match
    ("pairing", [CALLER], [], CALLER, (True, "")),
    ("pairing", [], [], CALLER, (True, "pairing")),
], ids=["disabled", "open", "open-anonymous", "config-list", "admin-list", "digits-only", "other-number",
        "no-caller-id", "not-a-number", "prefix", "pairing-known", "pairing-unknown"])
def test_inbound_decision(name, allow_from, admin, caller, expected):
    for number in admin:
        AllowedCaller.objects.create(number=number)
    decision = inbound_decision(policy=name, allow_from=allow_from, caller=caller)
    assert (decision.allowed, decision.reason) == expected


def test_a_disabled_admin_entry_does_not_let_the_caller_in():
    AllowedCaller.objects.create(number=CALLER, enabled=False)
    assert inbound_decision(policy="allowlist", allow_from=[], caller=CALLER).reason == "not-allowlisted"


@pytest.mark.parametrize(("name", "reason"), [("disabled", "inbound-disabled"), ("allowlist", "not-allowlisted")])
def test_rejected_calls_are_recorded_and_hung_up_once(configure, name, reason):
    policy(configure, name)
    call = ring()
    assert (call.state, call.end_reason, call_metadata(call)) == ("hangup-bot", "hangup-bot", {"rejectionReason": reason})
    # The carrier repeats its webhook: still one record, one hang-up.
    event_process(event=CallInitiated(call_id=call.provider_call_id, provider_call_id=call.provider_call_id,
                                direction="inbound", from_number=CALLER, to_number=LINE, id="again"))
    assert Call.objects.count() == 1 and hangups(call) == 1
    assert spoken(call) == []


def test_allowlisted_caller_holds_a_conversation(configure):
    policy(configure, "allowlist", allow_from=[CALLER])
    call = ring()
    event_process(event=CallSpeech(call_id=str(call.pk), provider_call_id=call.provider_call_id, transcript="Hi."))
    assert spoken(call) == [GREETING, "Sure."]


# --- pairing ------------------------------------------------------------------------------------------


def code(**fields) -> PairingCode:
    return PairingCode.objects.create(**fields)


def test_pairing_without_any_usable_code_rejects_at_once(configure):
    policy(configure, "pairing")
    code(expires_at=timezone.now() - timedelta(minutes=1))
    code(used_at=timezone.now())
    call = ring()
    assert call.is_terminal and call_metadata(call) == {"rejectionReason": "not-allowlisted"}


@pytest.mark.parametrize("how", ["keys-at-once", "keys-one-by-one", "keys-with-pound", "spoken-words", "spoken-digits"])
def test_a_right_code_allowlists_the_caller_and_starts_the_conversation(configure, how):
    policy(configure, "pairing")
    pairing = code(label="Grandma")
    call = ring()
    assert (call.pairing, call.pairing_attempts, call.pairing_digits) == ("waiting", 0, "")
    assert spoken(call) == [PAIRING_PROMPT]
    send = {
        "keys-at-once": lambda: dtmf(call, pairing.code),
        "keys-one-by-one": lambda: [dtmf(call, digit) for digit in pairing.code],
        "keys-with-pound": lambda: dtmf(call, pairing.code + "#"),
        "spoken-words": lambda: speech(call, "my code is " + " ".join(WORDS[d] for d in pairing.code)),
        "spoken-digits": lambda: speech(call, pairing.code),
    }[how]
    send()
    pairing.refresh_from_db()
    assert pairing.used_at is not None and pairing.used_by == CALLER
    allowed = AllowedCaller.objects.get(number=CALLER)
    assert (allowed.label, allowed.enabled) == ("Grandma", True)
    assert spoken(call) == [PAIRING_PROMPT, f"{PAIRED_LINE} {GREETING}"]
    call.refresh_from_db()
    assert call.pairing != "waiting" and not call.is_terminal
    speech(call, "Hello there.")
    assert spoken(call)[-1] == "Sure."
    # Next time the number is simply let in.
    again = ring()
    assert spoken(again) == [GREETING] and again.pairing != "waiting"


WORDS = dict(zip("0123456789", ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]))


def dtmf(call: Call, digits: str) -> None:
    event_process(event=CallDtmf(call_id=str(call.pk), provider_call_id=call.provider_call_id, digits=digits))


def speech(call: Call, text: str) -> None:
    event_process(event=CallSpeech(call_id=str(call.pk), provider_call_id=call.provider_call_id, transcript=text))


def test_three_wrong_codes_end_the_call_once(configure):
    policy(configure, "pairing")
    right = code()
    wrong = "000000" if right.code != "000000" else "111111"
    call = ring()
    dtmf(call, wrong)
    speech(call, "one two three")  # too short: also a miss
    assert spoken(call) == [PAIRING_PROMPT, RETRY_LINE, RETRY_LINE]
    dtmf(call, wrong)
    call.refresh_from_db()
    assert call.rejection_reason == "pairing-failed" and call.pairing != "waiting"
    assert spoken(call)[-1] == FAILED_LINE
    # The goodbye is said first; the hang-up comes once it has had time to play.
    assert hangups(call) == 0
    deadlines_sweep(at=timezone.now() + timedelta(seconds=30))
    deadlines_sweep(at=timezone.now() + timedelta(seconds=60))
    call.refresh_from_db()
    assert call.is_terminal and hangups(call) == 1
    right.refresh_from_db()
    assert right.used_at is None and not AllowedCaller.objects.exists()


def test_pairing_locks_after_repeated_failed_calls(configure):
    policy(configure, "pairing")
    code()
    for _ in range(3):
        Call.objects.create(provider="mock", direction="inbound", from_number=CALLER, to_number=LINE,
                            state="hangup-bot", end_reason="hangup-bot", rejection_reason="pairing-failed", pairing="failed")
    call = ring()
    assert call_metadata(call) == {"rejectionReason": "pairing-locked"}
    other = ring(caller="+15557650000")
    assert other.pairing == "waiting"  # another number may still try


def test_a_code_works_once(configure):
    policy(configure, "pairing")
    pairing = code()
    first = ring()
    dtmf(first, pairing.code)
    code()  # keeps pairing open for the next caller
    second = ring(caller="+15557650000")
    dtmf(second, pairing.code)
    assert not AllowedCaller.objects.filter(number="+15557650000").exists()
    assert spoken(second)[-1] == RETRY_LINE


def test_expired_code_is_refused(configure):
    policy(configure, "pairing")
    code()
    expired = code(expires_at=timezone.now() - timedelta(seconds=1))
    call = ring()
    dtmf(call, expired.code)
    assert spoken(call)[-1] == RETRY_LINE and not AllowedCaller.objects.exists()


def test_pairing_speech_never_reaches_the_agent(configure):
    policy(configure, "pairing")
    code()
    call = ring()
    speech(call, "let me talk to someone")
    from calls.models import ReplyTurn, SessionMessage

    assert not ReplyTurn.objects.exists() and not SessionMessage.objects.exists()


@pytest.mark.parametrize(("text", "digits"), [
    ("one two three four five six", "123456"),
    ("It's four oh double seven, triple two", "4077222"),
    ("for to ate", "428"),
    ("1 2 3 4 5 6", "123456"),
    ("no numbers here", ""),
    ("double", ""),
])
def test_digits_in_speech(text, digits):
    assert digits_in(text) == digits


def test_pairing_codes_are_six_random_digits_and_unique():
    codes = {PairingCode.objects.create().code for _ in range(50)}
    assert len(codes) == 50 and all(len(c) == 6 and c.isdigit() for c in codes)
    assert all(PairingCode.objects.get(code=c).usable for c in codes)
