"""Carrier recordings: started once a call is answered, updated from the carrier's callbacks, fetched and kept; the retention sweep for every recording."""
from __future__ import annotations

import os
import time
from datetime import datetime, timedelta

from django.db import IntegrityError, transaction

from core.errors import VoiceCallError
from core.events import CallRecording

from .. import background
from ..clock import from_ms, now
from ..models import Call, Direction, Recording, RecordingSource, RecordingStatus
from ..recording_files import file_path, relative_name
from ..runtime import get_runtime
from .common import carrier_request, log

# A download that fails is tried again after each of these delays (seconds), then left with its error.
FETCH_RETRY_DELAYS = (2.0, 10.0)
ERROR_LIMIT = 500
# A completed recording with neither a file nor an error this long after it completed lost its fetch
# job (its process died, or the broker did not take it): the purge queues it again, for a day.
FETCH_LOST_AFTER = timedelta(minutes=15)
FETCH_RESUME_WITHIN = timedelta(days=1)
CANONICAL_TYPES = {"wav": "audio/wav", "mp3": "audio/mpeg"}
EXTENSIONS = {"audio/wav": "wav", "audio/x-wav": "wav", "audio/wave": "wav", "audio/mpeg": "mp3", "audio/mp3": "mp3"}


def recording_on_answer(*, call: Call, carrier) -> None:
    """A call that should be recorded by the carrier was just answered: start the recording, unless its dial asked for it."""
    if not call.record_carrier:
        return
    if call.direction == Direction.OUTBOUND and carrier.records_in_dial:
        return
    background.submit("calls.recording_start", call_id=str(call.pk))


@background.job("calls.recording_start")
def recording_start(*, call_id: str) -> None:
    """Ask the carrier to record the live call; a refusal is kept on a failed recording row."""
    call = Call.objects.filter(pk=call_id).first()
    if call is None or call.is_terminal or not call.provider_call_id:
        return
    if call.recordings.filter(source=RecordingSource.CARRIER).exclude(status=RecordingStatus.FAILED).exists():
        return  # already recording (a callback came first, or an earlier start)
    carrier = get_runtime().carrier
    try:
        carrier_id = carrier_request("start recording", carrier.start_recording, quiet=True,
                                     call_id=str(call.pk), provider_call_id=call.provider_call_id)
    except VoiceCallError as exc:
        log.warning("call %s: the carrier recording did not start: %s", call.pk, exc.message)
        Recording.objects.create(call=call, source=RecordingSource.CARRIER, status=RecordingStatus.FAILED,
                                 error=f"the recording did not start: {exc.message}"[:ERROR_LIMIT])
        return
    log.info("call %s: carrier recording started (%s)", call.pk, carrier_id or "its id comes with the callback")
    if carrier_id:
        try:
            with transaction.atomic():
                Recording.objects.get_or_create(call=call, source=RecordingSource.CARRIER,
                                                provider_recording_id=carrier_id[:128])
        except IntegrityError:
            pass  # its callback created it meanwhile


def recording_event_apply(*, call: Call, event: CallRecording, config) -> None:
    """A carrier's recording callback, in the webhook's transaction: the row created or brought forward.

    A recording only moves forward (in-progress → completed or failed); a late or repeated
    callback for a finished or deleted one changes nothing.
    """
    row = (Recording.objects.select_for_update()
           .filter(call=call, source=RecordingSource.CARRIER, provider_recording_id=event.recording_id).first())
    at = from_ms(event.timestamp)
    new = row is None
    if new:
        row = Recording(call=call, source=RecordingSource.CARRIER, provider_recording_id=event.recording_id, started_at=at)
    elif row.status != RecordingStatus.IN_PROGRESS:
        log.info("call %s: recording %s is already %s; %s callback ignored", call.pk, event.recording_id, row.status, event.status)
        return
    if event.url:
        row.url = event.url
    if event.channels:
        row.channels = event.channels
    if event.duration_seconds is not None:
        row.duration_seconds = event.duration_seconds
    if event.status == RecordingStatus.COMPLETED:
        row.status = RecordingStatus.COMPLETED
        row.completed_at = at
        if event.duration_seconds is not None and new:
            row.started_at = at - timedelta(seconds=event.duration_seconds)
        row.expires_at = expiry(config, at)
    elif event.status == RecordingStatus.FAILED:
        row.status = RecordingStatus.FAILED
        row.completed_at = at
        row.error = (event.error or "the carrier's recording failed")[:ERROR_LIMIT]
    row.save()
    log.info("call %s: carrier recording %s %s", call.pk, event.recording_id, row.status)
    if row.status == RecordingStatus.COMPLETED and row.url and config.recording.fetch:
        background.submit("calls.recording_fetch", call_id=str(call.pk), recording_id=str(row.pk))


def expiry(config, completed_at: datetime) -> datetime | None:
    """When a recording completed now is deleted (recording.retentionDays; None: kept)."""
    days = config.recording.retention_days
    return completed_at + timedelta(days=days) if days > 0 else None


@background.job("calls.recording_fetch")
def recording_fetch(*, call_id: str, recording_id: str) -> None:
    """Download a completed carrier recording into the recordings directory (retried a few times).

    Each failure is written on the row; the last one stays there. A recording deleted meanwhile is
    not written, and a file already stored is not fetched again.
    """
    row = Recording.objects.select_related("call").filter(pk=recording_id).first()
    if row is None or row.status != RecordingStatus.COMPLETED or row.file or not row.url:
        return
    runtime = get_runtime()
    if row.call.provider != runtime.carrier.name:
        _fetch_failed(row, f"recorded by {row.call.provider}, but the carrier now is {runtime.carrier.name}")
        return
    attempts = len(FETCH_RETRY_DELAYS) + 1
    for attempt in range(attempts):
        try:
            body, content_type = carrier_request("fetch recording", runtime.carrier.fetch_recording, quiet=True, url=row.url)
            break
        except VoiceCallError as exc:
            last = attempt == attempts - 1
            _fetch_failed(row, f"download failed (attempt {attempt + 1} of {attempts}): {exc.message}")
            if last:
                return
            time.sleep(FETCH_RETRY_DELAYS[attempt])
    extension = EXTENSIONS.get(content_type, "bin")
    content_type = CANONICAL_TYPES.get(extension, content_type)
    name = relative_name(row.call_id, row.pk, extension)
    path = file_path(runtime.config, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    partial.write_bytes(body)
    os.replace(partial, path)
    stored = Recording.objects.filter(pk=row.pk, status=RecordingStatus.COMPLETED).update(
        file=name, size_bytes=len(body), content_type=content_type[:64], error="",
    )
    if not stored:  # deleted by the sweep while downloading
        path.unlink(missing_ok=True)
        return
    log.info("call %s: recording %s stored (%d bytes, %s)", call_id, row.pk, len(body), content_type)


def _fetch_failed(row: Recording, error: str) -> None:
    log.warning("call %s: recording %s: %s", row.call_id, row.pk, error)
    Recording.objects.filter(pk=row.pk).update(error=error[:ERROR_LIMIT])


def recordings_fetch_resume(*, config, at: datetime | None = None) -> int:
    """Queue again the downloads whose job was lost (see FETCH_LOST_AFTER); returns how many."""
    if not config.recording.fetch:
        return 0
    moment = at or now()
    lost = (Recording.objects.filter(source=RecordingSource.CARRIER, status=RecordingStatus.COMPLETED, file="", error="",
                                     completed_at__lt=moment - FETCH_LOST_AFTER,
                                     completed_at__gte=moment - FETCH_RESUME_WITHIN)
            .exclude(url="").values_list("pk", "call_id")[:100])
    count = 0
    for pk, call_id in list(lost):
        log.info("call %s: recording %s was never stored; fetching it again", call_id, pk)
        background.submit("calls.recording_fetch", call_id=str(call_id), recording_id=str(pk))
        count += 1
    return count


def recordings_expire(*, config, at: datetime | None = None) -> int:
    """Delete the files of recordings past their expiry (carrier and local) and mark them deleted.

    The file goes first, then the row is claimed with a conditional update: two sweepers in
    different processes both unlink (the second finds nothing) and one marks the row. A file
    already missing is no error. Returns how many recordings were marked deleted (at most 1000 a
    sweep; the next sweep takes the rest).
    """
    moment = at or now()
    # A recording still being written is never cut short, whatever its expiry says.
    due = Recording.objects.filter(expires_at__lte=moment).exclude(status__in=(RecordingStatus.DELETED, RecordingStatus.IN_PROGRESS))
    deleted = 0
    for pk, call_id, name in list(due.values_list("pk", "call_id", "file")[:1000]):
        if name:
            try:
                file_path(config, name).unlink(missing_ok=True)
            except ValueError as exc:
                log.warning("recording %s: file not deleted: %s", pk, exc)
            except OSError as exc:
                log.warning("recording %s: file not deleted (tried again next sweep): %s", pk, exc)
                continue
        claimed = due.filter(pk=pk).update(status=RecordingStatus.DELETED, deleted_at=moment)
        if claimed:
            deleted += 1
            log.info("call %s: recording %s deleted (retention)", call_id, pk)
            # A download that finished between the unlink and the claim left its file: it goes too.
            stored = Recording.objects.filter(pk=pk).values_list("file", flat=True).first()
            if stored and stored != name:
                _unlink_quietly(config, pk, stored)
    return deleted


def _unlink_quietly(config, pk, name: str) -> None:
    try:
        file_path(config, name).unlink(missing_ok=True)
    except (ValueError, OSError) as exc:
        log.warning("recording %s: file not deleted: %s", pk, exc)
