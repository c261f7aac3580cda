"""The rows of local recordings: a stream's WAV started (in progress), finished (completed or failed), or settled after its process died."""
from __future__ import annotations

import uuid
import wave
from datetime import datetime, timedelta

from django.db.models import Exists, OuterRef, Q

from ..clock import now
from ..models import MediaStream, Recording, RecordingSource, RecordingStatus
from ..recording_files import file_path
from ..runtime import get_runtime
from .common import log

WAV = "audio/wav"


def local_recording_start(*, call_id: str, recording_id: uuid.UUID, name: str) -> None:
    """The row of a stream's recording, in progress from now (its file is `name`, relative to the directory)."""
    Recording.objects.create(id=recording_id, call_id=call_id, source=RecordingSource.LOCAL, file=name,
                             content_type=WAV, channels=2, status=RecordingStatus.IN_PROGRESS)


def local_recording_finish(*, recording_id: uuid.UUID, size_bytes: int | None, duration_seconds: float | None,
                           error: str = "") -> bool:
    """Completed (its length, size and expiry from recording.retentionDays), or failed with `error`.

    Only a recording still in progress changes: False when it is unknown or already settled.
    """
    at = now()
    fields = {"completed_at": at, "size_bytes": size_bytes, "duration_seconds": duration_seconds}
    if error:
        fields.update(status=RecordingStatus.FAILED, error=error[:2000])
    else:
        days = get_runtime().config.recording.retention_days
        fields.update(status=RecordingStatus.COMPLETED, expires_at=at + timedelta(days=days) if days > 0 else None)
    changed = Recording.objects.filter(pk=recording_id, status=RecordingStatus.IN_PROGRESS).update(**fields)
    if not changed:
        log.info("local recording %s was not in progress; its end changes nothing", recording_id)
    return bool(changed)


# A recording whose stream ended this long ago and that is still in progress lost its process.
ORPHAN_AFTER = timedelta(minutes=1)
STOPPED = "the gateway stopped while recording; the audio up to its last written second is kept"


def local_recordings_reap(*, at: datetime | None = None) -> int:
    """Settle local recordings left in progress by a process that died (its stream gone for a minute).

    The file's header is kept valid as it is written (calls/streams/recording.py), so its sizes
    tell how much audio it holds: the row is completed with them and a note, or failed when the
    file cannot be read.
    """
    current = at or now()
    cutoff = current - ORPHAN_AFTER
    settled_streams = ~Exists(MediaStream.objects.filter(call=OuterRef("call")).filter(
        Q(closed_at__isnull=True) | Q(closed_at__gt=cutoff)))
    orphans = list(Recording.objects.filter(source=RecordingSource.LOCAL, status=RecordingStatus.IN_PROGRESS,
                                            started_at__lt=cutoff).filter(settled_streams).values_list("pk", "file"))
    config = get_runtime().config
    for pk, name in orphans:
        size, duration, error = _written(config, name)
        log.warning("local recording %s was left in progress (%s)", pk, error or STOPPED)
        local_recording_finish(recording_id=pk, size_bytes=size, duration_seconds=duration, error=error)
        if not error:
            Recording.objects.filter(pk=pk).update(error=STOPPED)
    return len(orphans)


def _written(config, name: str) -> tuple[int | None, float | None, str]:
    """(size, seconds, "") of a recording file as its header says, or (None, None, the reason)."""
    try:
        path = file_path(config, name)
        with wave.open(str(path), "rb") as wav:
            frames, rate = wav.getnframes(), wav.getframerate()
        return path.stat().st_size, round(frames / rate, 3), ""
    except (OSError, ValueError, EOFError, wave.Error) as exc:
        return None, None, f"the gateway stopped while recording and the file cannot be read: {exc}"
