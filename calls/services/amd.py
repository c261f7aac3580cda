"""Answering-machine detection: a call's start held until the verdict, and what each verdict does (docs/telephony.md)."""
from __future__ import annotations

from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Min, Q

from core.errors import VoiceCallError
from core.states import CallState

from .. import background
from ..amd_verdicts import (
    AMD_MODES_ON, FAX, GREETING_TIMED_OUT, MACHINE_END, MACHINE_START, TIMED_OUT, amd_holds, amd_on, is_machine,
)
from ..clock import now
from ..models import Call, Direction
from ..runtime import CallRuntime, get_runtime
from ..selectors import call_find, call_voice
from .common import CLAIM_TTL, carrier_request, log, transcript_add

# The carrier's own timeout answers first; the gateway's bound is only for a verdict that never comes.
HOLD_GRACE = timedelta(seconds=5)


def hold_bound(runtime: CallRuntime) -> timedelta:
    return timedelta(milliseconds=runtime.config.amd_timeout_ms) + HOLD_GRACE


def amd_answered(call: Call) -> None:
    """The call was answered while detection listens: the sweeper is woken when the wait runs out."""
    if amd_holds(call) and not call.answered_by and call.answered_at is not None:
        background.deadline_set(call.answered_at + hold_bound(get_runtime()))


def amd_verdict_applied(runtime: CallRuntime, call: Call, previous: str) -> None:
    """React to the verdict just stored on the locked call (`previous`: the verdict before it); jobs run after commit."""
    verdict = call.answered_by
    if not amd_on(call):
        log.info("call %s: answering-machine verdict %s stored (no detection was asked for)", call.pk, verdict)
        return
    if not is_machine(verdict):
        if not previous:
            log.info("call %s answered by %s: the call goes on", call.pk, verdict)
            background.submit("calls.amd_release", call_id=str(call.pk))
        return
    if previous == "human":
        log.info("call %s: verdict %s after a person was detected ignored (the call already went on)", call.pk, verdict)
        return
    if verdict == FAX or call.amd_mode == "detect":
        if not is_machine(previous):  # the first machine verdict hangs up; refinements change nothing
            log.info("call %s answered by a machine (%s): hanging up", call.pk, verdict)
            background.submit("calls.end", call_id=str(call.pk), reason=CallState.VOICEMAIL.value)
        return
    if verdict in MACHINE_END or verdict == GREETING_TIMED_OUT or not runtime.carrier.reports_greeting_end:
        log.info("call %s answered by a machine (%s): leaving the message", call.pk, verdict)
        background.submit("calls.amd_voicemail", call_id=str(call.pk))
    else:
        log.info("call %s answered by a machine: waiting for the end of its greeting", call.pk)
        if call.answered_at is not None:
            background.deadline_set(call.answered_at + 2 * hold_bound(runtime))


@background.job("calls.amd_release")
def amd_release(*, call_id: str) -> None:
    """A person (or no machine) answered: start what the answer held back, then the greeting as after any answer."""
    from .greeting import on_call_answered  # the greeting module asks this one whether a call is held

    runtime = get_runtime()
    call = call_find(ref=call_id)
    if call is None or call.is_terminal or call.answered_at is None or not call.provider_call_id:
        return  # not answered yet: the answer itself starts the call, no longer held
    try:
        carrier_request("start", runtime.carrier.start_held_call, call_id=str(call.pk),
                        provider_call_id=call.provider_call_id, mode=call.mode)
    except VoiceCallError as exc:
        log.warning("call %s: starting it after the answering-machine verdict failed: %s", call.pk, exc)
        return
    on_call_answered(call_id=str(call.pk))


@background.job("calls.amd_voicemail")
def amd_voicemail(*, call_id: str) -> None:
    """Voicemail mode, a machine answered: say the call's message once (after the beep), then hang up."""
    from .ending import call_end_or_retry
    from .speech import spoken_duration_estimate

    runtime = get_runtime()
    call = call_find(ref=call_id)
    if call is None or call.is_terminal:
        return
    if not call.initial_message:
        call_end_or_retry(call_id=str(call.pk), reason=CallState.VOICEMAIL.value)
        return
    at = now()
    # The greeting's claim: of two triggers (the verdict, the sweeper) only one says it.
    claimed = (
        Call.objects.live().filter(pk=call.pk).exclude(initial_message="")
        .filter(Q(greeting_claimed_at__isnull=True) | Q(greeting_claimed_at__lte=at - CLAIM_TTL))
        .update(greeting_claimed_at=at)
    )
    if not claimed:
        return
    wait_for_beep = not runtime.carrier.reports_greeting_end
    message = call.initial_message
    try:
        carrier_request("voicemail", runtime.carrier.leave_message, call_id=str(call.pk),
                        provider_call_id=call.provider_call_id, text=message, voice=call_voice(call=call),
                        wait_for_beep=wait_for_beep)
    except VoiceCallError as exc:
        Call.objects.filter(pk=call.pk).update(greeting_claimed_at=None)
        log.warning("call %s: leaving the message on the machine failed (%s): hanging up", call.pk, exc)
        call_end_or_retry(call_id=str(call.pk), reason=CallState.VOICEMAIL.value)
        return
    # Hung up once it has been said (the carrier may end it first); a beep waited for adds its bound.
    delay = timedelta(seconds=runtime.config.outbound.notify_hangup_delay_sec) + spoken_duration_estimate(message)
    if wait_for_beep:
        delay += timedelta(milliseconds=runtime.config.amd_timeout_ms)
    with transaction.atomic():
        locked = Call.objects.select_for_update().get(pk=call.pk)
        locked.greeting_claimed_at = None
        locked.initial_message = ""
        fields = ["greeting_claimed_at", "initial_message", "updated_at"]
        if not locked.is_terminal:
            locked.notify_hangup_at = now() + delay
            fields.append("notify_hangup_at")
            background.deadline_set(locked.notify_hangup_at)
        locked.save(update_fields=fields)
        transcript_add(call=locked, speaker="bot", text=message, touch=False)
    log.info("call %s: message left on the machine", call.pk)


def amd_overdue(*, at: datetime | None = None) -> int:
    """Calls whose detection outlived its bound go on: no verdict → as with a person; a greeting never
    reported over (voicemail mode) → the message now. Claimed with a conditional UPDATE each."""
    runtime = get_runtime()
    at = at or now()
    bound = hold_bound(runtime)
    waiting = Call.objects.live().filter(direction=Direction.OUTBOUND, amd_mode__in=AMD_MODES_ON)
    acted = 0
    for pk in list(waiting.filter(answered_by="", answered_at__lte=at - bound).values_list("pk", flat=True)):
        if Call.objects.filter(pk=pk, answered_by="").update(answered_by=TIMED_OUT, answered_by_first=TIMED_OUT, updated_at=at):
            log.info("call %s: no answering-machine verdict within amdTimeoutMs; the call goes on", pk)
            background.submit("calls.amd_release", call_id=str(pk))
            acted += 1
    greeting = waiting.filter(amd_mode="voicemail", answered_by=MACHINE_START, answered_at__lte=at - 2 * bound)
    for pk in list(greeting.values_list("pk", flat=True)):
        if Call.objects.filter(pk=pk, answered_by=MACHINE_START).update(answered_by=GREETING_TIMED_OUT, updated_at=at):
            log.info("call %s: the machine's greeting was not reported over in time; leaving the message", pk)
            background.submit("calls.amd_voicemail", call_id=str(pk))
            acted += 1
    return acted


def amd_next_deadline() -> datetime | None:
    """When the earliest detection wait of a live call runs out (the embedded scheduler sleeps until then)."""
    waiting = Call.objects.live().filter(direction=Direction.OUTBOUND, amd_mode__in=AMD_MODES_ON,
                                         answered_at__isnull=False)
    bound = hold_bound(get_runtime())
    first = waiting.filter(answered_by="").aggregate(at=Min("answered_at"))["at"]
    greeting = waiting.filter(amd_mode="voicemail", answered_by=MACHINE_START).aggregate(at=Min("answered_at"))["at"]
    candidates = [value for value in (first and first + bound, greeting and greeting + 2 * bound) if value]
    return min(candidates) if candidates else None
