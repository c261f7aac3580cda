"""Periodic work: enforce deadlines, reap stale calls, restore calls after a restart, forget old replay keys."""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Min, Q

from core.states import CONVERSATION_STATES, CallState

from .. import background
from ..clock import now
from ..config import get_config
from ..models import Call, CallTurn, CarrierDocument, ContinueOperation, Direction, OperationStatus, ProcessedWebhook, TurnStatus
from ..runtime import get_runtime
from .amd import amd_next_deadline, amd_overdue
from .common import finalize_by_id, log
from .dialing import DIAL_GRACE
from .ending import call_end_or_retry
from .hangup_retry import retries_due
from .turns import turn_timeout

REAP_INTERVAL_SECONDS = 30
UNFINISHED_DIAL = "the dial did not finish (no carrier call id when the gateway restarted)"
# Deadline columns on Call and the end reason each one ends the call with.
CALL_DEADLINES = {
    "max_duration_deadline": CallState.TIMEOUT.value,
    "notify_hangup_at": CallState.HANGUP_BOT.value,
    "stream_grace_deadline": CallState.HANGUP_BOT.value,
}


def deadlines_sweep(*, at: datetime | None = None) -> int:
    """End calls whose max duration or notify hang-up time has come; retry failed hang-ups; time out waiting turns.

    Each due deadline is claimed with a conditional UPDATE, so concurrent sweepers in several
    processes act on it once. The hang-up itself runs as a background job.
    """
    at = at or now()
    acted = 0
    for column, reason in CALL_DEADLINES.items():
        due = Call.objects.live().filter(**{f"{column}__lte": at}).values_list("pk", flat=True)
        for call_id in list(due):
            claimed = Call.objects.filter(pk=call_id, **{f"{column}__lte": at}).update(**{column: None})
            if claimed:
                acted += 1
                log.info("call %s: %s reached, ending (%s)", call_id, column, reason)
                background.submit("calls.deadline_end", call_id=str(call_id), reason=reason, column=column)
    for call_id in retries_due(at=at):
        acted += 1
        background.submit("calls.hangup_retry", call_id=call_id)
    acted += amd_overdue(at=at)
    timeout_ms = _transcript_timeout_ms()
    for turn_id in list(CallTurn.objects.filter(status=TurnStatus.PENDING, deadline__lte=at).values_list("pk", flat=True)):
        acted += turn_timeout(turn_id=turn_id, timeout_ms=timeout_ms)
    return acted


@background.job("calls.deadline_end")
def deadline_end(*, call_id: str, reason: str, column: str) -> None:
    """End a call for a deadline (`column` names it); a failed hang-up is retried with backoff."""
    call_end_or_retry(call_id=call_id, reason=reason)


def next_deadline() -> datetime | None:
    """The earliest pending deadline of any kind (the embedded scheduler sleeps until then)."""
    live = Call.objects.live().aggregate(**{column: Min(column) for column in CALL_DEADLINES})
    # Hang-up retries are due on ended calls too (a refused caller's line).
    retry = Call.objects.aggregate(retry=Min("end_retry_at"))
    turn = CallTurn.objects.filter(status=TurnStatus.PENDING).aggregate(turn=Min("deadline"))
    candidates = [value for value in (*live.values(), retry["retry"], turn["turn"], amd_next_deadline()) if value is not None]
    return min(candidates) if candidates else None


def stale_calls_reap(*, at: datetime | None = None) -> int:
    """End calls that never got answered within staleCallReaperSeconds (0 disables).

    Answered calls and calls in a live conversation state (speaking, listening) are left alone.
    """
    seconds = get_runtime().config.stale_call_reaper_seconds
    if seconds <= 0:
        return 0
    cutoff = (at or now()) - timedelta(seconds=seconds)
    stale = (
        Call.objects.live()
        # An outbound call counts from the carrier's acceptance of its dial; one still queued is the
        # dial job's (a rate-limited queue can be longer than this).
        .filter(answered_at__isnull=True)
        .filter(Q(dialed_at__lt=cutoff) | Q(dialed_at__isnull=True, started_at__lt=cutoff))
        .exclude(direction=Direction.OUTBOUND, provider_call_id__isnull=True, dialed_at__isnull=True)
        .exclude(state__in=[s.value for s in CONVERSATION_STATES])
        # A hang-up already waiting for its next try is left to its backoff.
        .filter(end_retry_at__isnull=True)
        .values_list("pk", flat=True)
    )
    count = 0
    for call_id in list(stale):
        log.info("reaping stale call %s (unanswered for more than %ss)", call_id, seconds)
        background.submit("calls.end", call_id=str(call_id), reason=CallState.HANGUP_BOT.value)
        count += 1
    return count


# Documents a carrier fetches (Plivo's speak XML) are fetched within seconds; an hour is generous.
DOCUMENT_TTL = timedelta(hours=1)
OPERATION_TTL = timedelta(minutes=5)


def processed_webhooks_purge(*, at: datetime | None = None) -> int:
    """Forget expired replay records, old carrier documents and finished continue operations; delete expired recordings.

    Returns how many rows went (recordings count as they are marked deleted). A continue operation is kept 5 minutes after it finished (or,
    abandoned while pending, after its deadline) so a slow poller still reads its result.
    """
    moment = at or now()
    deleted, _ = ProcessedWebhook.objects.filter(expires_at__lt=moment).delete()
    documents, _ = CarrierDocument.objects.filter(created_at__lt=moment - DOCUMENT_TTL).delete()
    cutoff = moment - OPERATION_TTL
    operations = ContinueOperation.objects.filter(
        Q(completed_at__lt=cutoff) | Q(status=OperationStatus.PENDING, deadline__lt=cutoff)
    )
    finished, _ = operations.delete()
    from .realtime import realtime_tokens_purge
    from .recordings import recordings_expire, recordings_fetch_resume

    config = get_config().config
    expired = recordings_expire(config=config, at=moment)
    recordings_fetch_resume(config=config, at=moment)
    return deleted + documents + finished + realtime_tokens_purge(at=moment) + expired


@dataclass
class RestoreReport:
    """What restore did with each live call it found."""

    kept: list[str] = field(default_factory=list)
    failed_dials: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    ended_at_carrier: list[str] = field(default_factory=list)
    # Live calls the carrier was not asked about within the time bound: kept, with their deadlines.
    unchecked: list[str] = field(default_factory=list)

    @property
    def timed_out(self) -> bool:
        return bool(self.unchecked)

    def summary(self) -> str:
        text = (
            f"kept {len(self.kept)}, ended {len(self.ended_at_carrier)} that the carrier reports over, "
            f"timed out {len(self.expired)} past maxDurationSeconds, failed {len(self.failed_dials)} unfinished dials"
        )
        if self.unchecked:
            text += f"; {len(self.unchecked)} not checked in time (kept with their deadlines)"
        return text


# Status requests in flight at once; the rest wait in line (the carrier's rate limits are per account).
RESTORE_CONCURRENCY = 8


def calls_restore(*, budget: float | None = None) -> RestoreReport:
    """Check every live call after a restart against the carrier (docs/compatibility.md, Restore after restart).

    Deadlines are already on the rows, so kept calls need nothing more; this ends the calls
    that cannot still be up. With `budget` (seconds), the carrier is asked only until then: calls
    not answered for in time are kept, and the sweeper still ends them at their deadlines.
    """
    runtime = get_runtime()
    config = runtime.config
    report = RestoreReport()
    current = now()
    max_age = timedelta(seconds=config.max_duration_seconds)
    to_check: list[Call] = []
    shared_queue = settings.VOICECALL_MODE == "distributed"
    for call in Call.objects.live().order_by("started_at"):
        if not call.provider_call_id:
            if _dial_unfinished(call, current, shared_queue=shared_queue):
                finalize_by_id(call.pk, CallState.FAILED.value, error=UNFINISHED_DIAL)
                report.failed_dials.append(str(call.pk))
            continue
        if current - call.started_at > max_age:
            finalize_by_id(call.pk, CallState.TIMEOUT.value)
            background.submit("calls.carrier_hangup", call_id=str(call.pk), reason=CallState.TIMEOUT.value)
            report.expired.append(str(call.pk))
            continue
        to_check.append(call)

    def status(call: Call):
        try:
            return runtime.carrier.get_call_status(call.provider_call_id)
        except Exception as exc:
            log.info("status of %s unavailable (relying on its deadlines): %s", call.pk, exc)
            return None

    statuses = bounded_map(status, to_check, workers=RESTORE_CONCURRENCY, budget=budget)
    for call in to_check:
        if call.pk not in statuses:
            report.unchecked.append(str(call.pk))
            continue
        result = statuses[call.pk]
        if result is not None and result.is_terminal:
            finalize_by_id(call.pk, CallState.COMPLETED.value)
            report.ended_at_carrier.append(str(call.pk))
        else:
            report.kept.append(str(call.pk))
    log.info("restore: %s", report.summary())
    return report


def _dial_unfinished(call: Call, current: datetime, *, shared_queue: bool) -> bool:
    """A call without a carrier id that no dial will ever complete: failed by restore.

    With one gateway (embedded) its dial job died with the process: a call waiting longer than
    DIAL_GRACE is failed rather than dialed late (a newer one is queued again by lost_jobs_resume).
    With a shared queue (distributed) a queued dial not yet sent is still some worker's (queued,
    claimed, or resumed when its claim expires): only a request sent longer than DIAL_GRACE ago, or
    a call never queued, is given up.
    """
    if shared_queue and call.dial_queued_at is not None and call.dial_requested_at is None:
        return False
    return current - (call.dial_requested_at or call.started_at) > DIAL_GRACE


def bounded_map(func, calls: list[Call], *, workers: int, budget: float | None) -> dict:
    """`func(call)` for each call on up to `workers` daemon threads, for at most `budget` seconds.

    Returns {call.pk: result} for the calls done in time. Daemon threads: a request still hanging
    when the budget runs out is left to its own timeout and never holds up the process's exit.
    """
    results: dict = {}
    pending = queue.SimpleQueue()
    for call in calls:
        pending.put(call)
    done = threading.Condition()

    def work() -> None:
        while True:
            try:
                call = pending.get_nowait()
            except queue.Empty:
                return
            result = func(call)
            with done:
                results[call.pk] = result
                done.notify_all()

    for index in range(min(workers, len(calls))):
        threading.Thread(target=work, name=f"voicecall-restore-{index}", daemon=True).start()
    deadline = None if budget is None else time.monotonic() + budget
    with done:
        while len(results) < len(calls):
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            done.wait(remaining)
        # Calls not started yet are dropped from the line: nothing more goes to the carrier.
        while True:
            try:
                pending.get_nowait()
            except queue.Empty:
                break
        return dict(results)


def _transcript_timeout_ms() -> int:
    return get_config().config.transcript_timeout_ms
