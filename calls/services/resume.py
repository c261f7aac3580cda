"""Jobs a dead process took with it, found again from what the call rows say and started again (restore, sweeper).

Jobs run in memory (a thread pool, or a Celery worker that dies mid-task), but each leaves its
intent on the rows before it acts: an outbound call without a carrier id has not been dialed (and
one whose request was sent is never dialed again); an answered call that still has its initial message has not
been greeted; a greeting or hang-up claim that is no longer renewed (calls/leases.py) belongs to
a process that is gone; a reply still pending was never finished. Starting the job again is safe
because every one of them claims its work first (one conditional UPDATE) or asks the carrier for
something idempotent, so a job still running elsewhere is never doubled. What holds no claim (a
reply, an inbound answer, a media stream, a max-duration end in flight) is only known lost after a
restart of the one gateway of the embedded mode, when everything from before the start is.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from django.db.models import Q

from core.states import TERMINAL_STATES, CallState

from .. import background
from ..clock import now
from ..models import Call, Direction, MediaStream, ReplyStatus, ReplyTurn
from ..runtime import get_runtime
from .common import CLAIM_TTL, finalize_by_id, log
from .dial_job import undialed
from .dialing import DIAL_GRACE
from .greeting import greeting_decision
from .streams import stream_closed

# An answered call's own greeting job claims within milliseconds; after this it was lost.
ANSWER_GRACE = timedelta(seconds=10)
# A queued dial is claimed as soon as a worker is free; unclaimed after this, its job may be lost.
DIAL_QUEUE_GRACE = timedelta(seconds=30)
DIAL_LOST = ("the dial did not finish: the process that sent it stopped before the carrier answered, "
             "and no webhook from the carrier named the call since (it is not dialed again, to never call twice)")


def lost_jobs_resume(*, at: datetime | None = None, abandoned_before: datetime | None = None,
                     replies_upto: int | None = None) -> int:
    """Start again the greetings, answer digits and hang-ups no live process is working on.

    Claims older than CLAIM_TTL are abandoned. `abandoned_before` (a restart with one gateway per
    database): so are claims taken, and answers received, before that moment; media streams opened
    before it are closed as the dead process would have (the disconnect grace starts), inbound calls
    never picked up are answered and max-duration ends it claimed are done. `replies_upto`: the last
    reply created before this process started; pending replies up to it are run again. Returns how
    many jobs were submitted (and streams closed).
    """
    at = at or now()
    claims_before = at - CLAIM_TTL
    answered_before = at - ANSWER_GRACE
    if abandoned_before is not None:
        claims_before = max(claims_before, abandoned_before)
        answered_before = max(answered_before, abandoned_before)
    # Dead streams first: a greeting resumed next is then said on a stream only if one is really up.
    count = 0
    if abandoned_before is not None:
        count += (_dead_streams_close(abandoned_before) + _max_duration_rearm(abandoned_before)
                  + _answers_resume(abandoned_before))
    count += _dials_resume(at, claims_before, sole_restart=abandoned_before is not None)
    count += _greetings_resume(claims_before, answered_before) + _hangups_resume(claims_before)
    if replies_upto is not None:
        count += _replies_resume(replies_upto)
    return count


def _dials_resume(at: datetime, claims_before: datetime, *, sole_restart: bool) -> int:
    """Dial jobs lost before their request (never claimed, or claimed by a process that is gone) are
    queued again; a dial whose request was in flight when its process died is never sent again, and
    fails once DIAL_GRACE has passed without the carrier's webhooks linking a call to it.

    `sole_restart`: the one gateway restarted; calls queued longer than DIAL_GRACE before it are
    failed by restore (calls_restore) rather than dialed late.
    """
    count = 0
    waiting = Call.objects.filter(undialed())
    abandoned = list(waiting.filter(dial_claimed_at__lte=claims_before).values_list("pk", "dial_claimed_at"))
    # Calls never queued (written before dials were queued) are left to restore: they may be mid-dial.
    never_claimed = waiting.filter(dial_claimed_at__isnull=True, dial_queued_at__lte=at - DIAL_QUEUE_GRACE)
    if sole_restart:
        never_claimed = never_claimed.filter(started_at__gt=at - DIAL_GRACE)
    never_claimed = list(never_claimed.values_list("pk", flat=True))
    for call_id, claimed in abandoned:
        # Only that very claim is released (a newer one taken meanwhile stays), then queued again.
        if Call.objects.filter(pk=call_id, dial_claimed_at=claimed).update(dial_claimed_at=None, dial_claim_token=None,
                                                                          dial_queued_at=at):
            log.warning("call %s: its dial was claimed by a process that is gone before it asked the carrier; "
                        "queueing it again", call_id)
            background.submit("calls.dial", call_id=str(call_id))
            count += 1
    for call_id in never_claimed:
        # A job still waiting in the broker makes this one a duplicate, which its claim turns into nothing;
        # the new queue time keeps a long queue from being queued again at every sweep.
        if Call.objects.filter(pk=call_id, dial_claimed_at__isnull=True).update(dial_queued_at=at):
            log.warning("call %s: queued and not picked up by a worker within %d s; queueing its dial again",
                        call_id, DIAL_QUEUE_GRACE.total_seconds())
            background.submit("calls.dial", call_id=str(call_id))
            count += 1
    in_flight = (
        Call.objects.live().filter(direction=Direction.OUTBOUND, provider_call_id__isnull=True, dialed_at__isnull=True,
                                   dial_claimed_at__lte=claims_before, dial_requested_at__lte=at - DIAL_GRACE)
    )
    for call_id in list(in_flight.values_list("pk", flat=True)):
        log.warning("call %s: %s", call_id, DIAL_LOST)
        finalize_by_id(call_id, CallState.FAILED.value, error=DIAL_LOST)
        count += 1
    return count


def _greetings_resume(claims_before: datetime, answered_before: datetime) -> int:
    count = 0
    answered = Call.objects.live().filter(answered_at__isnull=False)
    # Claimed and never said: the greeting had begun in a process that is gone. Only that very
    # claim is released (a newer one taken meanwhile stays), then the greeting job claims it again.
    # A greeting that waits for a media stream is said now only if a stream is open (one opened since
    # could not claim it); otherwise the next stream's readiness says it.
    abandoned = answered.exclude(initial_message="").filter(greeting_claimed_at__lte=claims_before)
    for call in list(abandoned):
        if not Call.objects.filter(pk=call.pk, greeting_claimed_at=call.greeting_claimed_at).update(greeting_claimed_at=None):
            continue
        decision = greeting_decision(call=call)
        if decision.speak or MediaStream.objects.open().filter(call=call).exists():
            log.warning("call %s: its greeting was claimed by a process that is gone; speaking it again", call.pk)
            background.submit("calls.greeting", call_id=str(call.pk))
            count += 1
        else:
            log.warning("call %s: its greeting was claimed by a process that is gone; it waits for the call's "
                        "next media stream", call.pk)
    # Never claimed: the answer's job (digits, then the greeting) was lost before it began. Calls
    # whose greeting waits for something else (a media stream, the carrier's answer document) are left to it.
    unclaimed = (
        answered.filter(greeting_claimed_at__isnull=True, answered_at__lte=answered_before)
        .filter(~Q(initial_message="") | ~Q(pending_dtmf=""))
    )
    for call in list(unclaimed):
        decision = greeting_decision(call=call)
        if call.pending_dtmf or decision.speak or decision.spoken_by_carrier:
            log.warning("call %s: answered but never greeted; greeting it now", call.pk)
            background.submit("calls.call_answered", call_id=str(call.pk))
            count += 1
        elif decision.on_stream and MediaStream.objects.open().filter(call=call, opened_at__lte=answered_before).exists():
            # Its stream has long been up, but the greeting job its readiness queued never ran (lost with
            # its worker, or never queued while the broker was away).
            log.warning("call %s: its media stream is up but the greeting was never said; saying it now", call.pk)
            background.submit("calls.greeting", call_id=str(call.pk))
            count += 1
    return count


def _hangups_resume(claims_before: datetime) -> int:
    """A hang-up claimed and never finished: the call is ended again (the carrier request is idempotent)."""
    count = 0
    abandoned = Call.objects.live().filter(hangup_claimed_at__lte=claims_before)
    for call_id, claimed, reason in list(abandoned.values_list("pk", "hangup_claimed_at", "hangup_reason")):
        if Call.objects.filter(pk=call_id, hangup_claimed_at=claimed).update(hangup_claimed_at=None):
            log.warning("call %s: its hang-up was left unfinished by a process that is gone; hanging up again", call_id)
            background.submit("calls.end", call_id=str(call_id), reason=reason or CallState.HANGUP_BOT.value)
            count += 1
    return count


def _replies_resume(replies_upto: int) -> int:
    """Replies pending since before this process started, on live calls: each is made and said again."""
    pending = (
        ReplyTurn.objects.filter(status=ReplyStatus.PENDING, pk__lte=replies_upto)
        .exclude(call__state__in=[state.value for state in TERMINAL_STATES])
    )
    count = 0
    for reply_id, call_id in list(pending.values_list("pk", "call_id")):
        log.warning("call %s: reply %s was left unfinished by a process that is gone; replying again", call_id, reply_id)
        background.submit("calls.auto_reply", reply_id=reply_id)
        count += 1
    return count



def _dead_streams_close(abandoned_before: datetime) -> int:
    """Media streams still open from before the restart: their socket died with the process.

    Closed as a disconnect is: the call's 2 s grace starts, and unless the carrier reconnects a
    stream the call ends (docs/operations.md, Upgrades and migrations).
    """
    dead = MediaStream.objects.open().filter(opened_at__lt=abandoned_before)
    count = 0
    for stream_pk, call_id, stats in list(dead.values_list("pk", "call_id", "stats")):
        log.warning("call %s: its media stream was held by a process that is gone; closing it", call_id)
        stream_closed(stream_pk=stream_pk, reason="gateway restarted", stats=stats or {})
        count += 1
    return count


def _max_duration_rearm(abandoned_before: datetime) -> int:
    """An answered live call without its max-duration deadline: a sweep claimed it (the column is
    cleared first) and the process died before the call was ended. Due now, so the sweeper ends it."""
    at = now()
    # A hang-up waiting for its next try (end_retry_at) or in flight (its claim) is left to that.
    lost = Call.objects.live().filter(answered_at__lt=abandoned_before, max_duration_deadline__isnull=True,
                                      end_retry_at__isnull=True, hangup_claimed_at__isnull=True)
    count = lost.update(max_duration_deadline=at)
    if count:
        log.warning("%d call(s) past their max duration were left live by a process that is gone; ending them", count)
        background.deadline_set(at)
    return count


def _answers_resume(abandoned_before: datetime) -> int:
    """Inbound calls accepted before the restart that the carrier was never asked to pick up (carriers
    that need an explicit answer): asked now. The answer request is idempotent at the carrier."""
    if not get_runtime().carrier.supports_answer:
        return 0
    waiting = Call.objects.live().filter(
        direction=Direction.INBOUND, answered_at__isnull=True, started_at__lt=abandoned_before,
        state__in=[CallState.INITIATED.value, CallState.RINGING.value],
    ).exclude(provider_call_id__isnull=True)
    count = 0
    for call_id in list(waiting.values_list("pk", flat=True)):
        log.warning("call %s: inbound and never picked up by a process that is gone; answering it", call_id)
        background.submit("calls.answer", call_id=str(call_id))
        count += 1
    return count
