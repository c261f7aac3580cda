"""Pairing calls (inboundPolicy "pairing"): an unknown caller enters or says a one-time code, then talks.

The call is let in only to be asked for the code. A right code spends it, allowlists the number
and starts the normal greeting; three wrong ones end the call, recorded as "pairing-failed".
Repeated failures lock pairing for that number, and many failures from any numbers lock it for
everyone for a while (caller ids are easy to fake, codes are short).
"""
from __future__ import annotations

from datetime import timedelta

from core.errors import VoiceCallError
from routing.models import PAIRING_CODE_DIGITS, PairingCode
from routing.pairing import digits_in, redeem
from routing.routes import call_route, greeting_for

from .. import background
from ..models import Call, PairingStatus
from ..runtime import get_runtime
from ..clock import now
from ..selectors import call_uses_stream
from .common import log
from .ending import call_end_or_retry
from .speech import call_reply_say, call_speak, spoken_duration_estimate

PAIRING_PROMPT = "This number is not registered yet. Please enter or say your pairing code."
RETRY_LINE = "Sorry, that code did not work. Please try again."
FAILED_LINE = "Sorry, that code did not work. Goodbye."
PAIRED_LINE = "Thank you, your number is now registered."
MAX_ATTEMPTS = 3
LOCK_WINDOW = timedelta(hours=1)
LOCK_AFTER_FAILED_CALLS = 3  # from one number within the window
LOCK_ALL_AFTER_FAILED_CALLS = 20  # from any numbers within the window
PAIRING_FAILED = "pairing-failed"  # the rejection reason of a call that used up its attempts


def pairing_admission(caller: str | None) -> str:
    """Empty when an unknown caller may try to pair now; otherwise the rejection reason."""
    if not PairingCode.objects.usable().exists():
        return "not-allowlisted"  # nothing to pair with: no reason to pick up
    failed = Call.objects.filter(rejection_reason=PAIRING_FAILED, started_at__gte=now() - LOCK_WINDOW)
    if failed.count() >= LOCK_ALL_AFTER_FAILED_CALLS or failed.filter(from_number=caller).count() >= LOCK_AFTER_FAILED_CALLS:
        return "pairing-locked"
    return ""


def pairing_input(call: Call, *, text: str | None = None, digits: str | None = None) -> None:
    """What the caller said or keyed while pairing (inside the event's transaction; the row is locked)."""
    if digits is not None:
        keyed = call.pairing_digits + "".join(ch for ch in digits if ch.isdigit() or ch == "#")
        if "#" not in keyed and len(keyed) < PAIRING_CODE_DIGITS:
            call.pairing_digits = keyed
            return  # more key presses to come (streams deliver one digit at a time)
        code = keyed.split("#", 1)[0]
    else:
        code = digits_in(text or "")
    paired = redeem(code, caller=call.from_number)
    if paired is not None:
        config = get_runtime().config
        greeting = greeting_for(config, call_route(config, call))
        call.pairing, call.pairing_digits, call.paired_code = PairingStatus.PAIRED, "", paired
        call.initial_message = f"{PAIRED_LINE} {greeting}"
        log.info("call %s: %s paired (code %s)", call.pk, call.from_number, paired.pk)
        background.submit("calls.greeting", call_id=str(call.pk))
        return
    call.pairing_attempts += 1
    call.pairing_digits = ""
    log.info("call %s: pairing attempt %d of %d failed", call.pk, call.pairing_attempts, MAX_ATTEMPTS)
    if call.pairing_attempts >= MAX_ATTEMPTS:
        call.pairing, call.rejection_reason = PairingStatus.FAILED, PAIRING_FAILED
        background.submit("calls.pairing_failed", call_id=str(call.pk))
        return
    background.submit("calls.pairing_retry", call_id=str(call.pk))


@background.job("calls.pairing_retry")
def pairing_retry(*, call_id: str) -> None:
    try:
        call_reply_say(call_id=call_id, text=RETRY_LINE)
    except VoiceCallError as exc:
        log.warning("call %s: asking for the pairing code again failed: %s", call_id, exc)


@background.job("calls.pairing_failed")
def pairing_failed(*, call_id: str) -> None:
    """Say goodbye, then hang up once: after playback on a stream, after its estimated length otherwise."""
    call = Call.objects.filter(pk=call_id).first()
    if call is None or call.is_terminal:
        return
    on_stream = call_uses_stream(call=call)
    try:
        call_speak(call_id=call_id, text=FAILED_LINE)
    except VoiceCallError as exc:
        log.info("call %s: pairing goodbye not said: %s", call_id, exc)
        on_stream = True  # nothing is playing: hang up now
    if on_stream:
        try:
            call_end_or_retry(call_id=call_id, reason="hangup-bot")
        except VoiceCallError as exc:
            log.warning("call %s: hanging up after failed pairing failed: %s", call_id, exc)
        return
    # The carrier was only asked to say it: the deadline sweep hangs up once it has been said.
    hangup_at = now() + spoken_duration_estimate(FAILED_LINE)
    Call.objects.filter(pk=call_id, notify_hangup_at__isnull=True).update(notify_hangup_at=hangup_at)
    background.deadline_set(hangup_at)
