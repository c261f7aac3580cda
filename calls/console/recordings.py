"""GET /admin/console/recordings/<id>/audio: a call's recording for the admin's player (calls.view_call).

The stored file is streamed with Range support (browsers seek with it). A carrier recording not
fetched is downloaded from the carrier with the carrier's credentials and passed on: the browser is
never sent to a URL that needs them. A deleted, failed or missing recording is a 404 saying why.
"""
from __future__ import annotations

import io
import logging
import re
from collections.abc import AsyncIterator, Iterator

from asgiref.sync import sync_to_async
from django.core.exceptions import PermissionDenied
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, StreamingHttpResponse
from django.urls import reverse

from core.errors import VoiceCallError

from ..config import get_config
from ..models import Recording, RecordingSource, RecordingStatus
from ..recording_files import file_path

log = logging.getLogger(__name__)

PERMISSION = "calls.view_call"
CHUNK = 64 * 1024
RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
TEXT = "text/plain; charset=utf-8"


def recording_audio_url(recording_id) -> str:
    return reverse("console:recording-audio", kwargs={"recording_id": recording_id})


def playable(recording: Recording) -> bool:
    """Whether the player has something to ask for: a stored file, or a finished carrier recording's URL."""
    if recording.status == RecordingStatus.DELETED:
        return False
    return bool(recording.file) or (recording.source == RecordingSource.CARRIER and recording.status == RecordingStatus.COMPLETED
                                    and bool(recording.url))


def recording_audio(request: HttpRequest, recording_id) -> HttpResponse:
    if request.method not in ("GET", "HEAD"):
        return HttpResponseNotAllowed(["GET", "HEAD"])
    if not request.user.has_perm(PERMISSION):
        raise PermissionDenied
    recording = Recording.objects.select_related("call").filter(pk=recording_id).first()
    if recording is None:
        return _not_found("No such recording.")
    if recording.status == RecordingStatus.DELETED:
        when = f" on {recording.deleted_at:%Y-%m-%d %H:%M} UTC" if recording.deleted_at else ""
        return _not_found(f"This recording was deleted{when} (recording.retentionDays).")
    config = get_config().config
    if recording.file:
        try:
            path = file_path(config, recording.file)
            handle = path.open("rb")
        except (ValueError, OSError):
            log.warning("recording %s: its file %r is missing from the recordings directory", recording.pk, recording.file)
            return _not_found("This recording's file is missing from the recordings directory.")
        size = path.stat().st_size
        return _ranged(request, handle, size, recording.content_type or "audio/wav")
    if not playable(recording):
        if recording.status == RecordingStatus.FAILED:
            return _not_found(f"This recording failed: {recording.error or 'no reason given'}.")
        return _not_found("This recording has no audio yet (it is still in progress).")
    return _from_carrier(request, recording)


def _from_carrier(request: HttpRequest, recording: Recording) -> HttpResponse:
    from ..runtime import get_runtime

    try:
        carrier = get_runtime().carrier
        if carrier.name != recording.call.provider:
            return _not_found(f"This recording is kept by {recording.call.provider}, which is no longer the configured carrier.")
        body, content_type = carrier.fetch_recording(recording.url)
    except VoiceCallError as exc:
        log.warning("recording %s: the carrier did not give it: %s", recording.pk, exc.message)
        return HttpResponse(f"The carrier did not give the recording: {exc.message}\n", status=502, content_type=TEXT)
    return _ranged(request, io.BytesIO(body), len(body), content_type)


def _ranged(request: HttpRequest, handle, size: int, content_type: str) -> HttpResponse:
    """The whole content (200) or the one byte range asked for (206); 416 for a range outside it."""
    start, end = 0, size - 1
    status = 200
    header = request.headers.get("Range", "").strip()
    match = RANGE.match(header) if header else None
    if match and (match.group(1) or match.group(2)):
        first, last = match.group(1), match.group(2)
        if first:
            start, end = int(first), min(int(last), size - 1) if last else size - 1
        else:  # the last N bytes
            start, end = max(0, size - int(last)), size - 1
        if start >= size or start > end:
            handle.close()
            response = HttpResponse(status=416)
            response["Content-Range"] = f"bytes */{size}"
            return response
        status = 206
    length = end - start + 1
    if request.method == "HEAD":
        handle.close()
        response = HttpResponse(status=status, content_type=content_type)
    else:
        response = StreamingHttpResponse(_served(request, _chunks(handle, start, length)), status=status,
                                         content_type=content_type)
    response["Content-Length"] = str(length)
    response["Accept-Ranges"] = "bytes"
    response["Cache-Control"] = "private, no-store"
    response["X-Content-Type-Options"] = "nosniff"
    if status == 206:
        response["Content-Range"] = f"bytes {start}-{end}/{size}"
    return response


def _chunks(handle, start: int, length: int) -> Iterator[bytes]:
    with handle:
        handle.seek(start)
        left = length
        while left > 0:
            piece = handle.read(min(CHUNK, left))
            if not piece:
                return
            left -= len(piece)
            yield piece


def _served(request: HttpRequest, chunks: Iterator[bytes]) -> Iterator[bytes] | AsyncIterator[bytes]:
    """Under ASGI each chunk is read on a worker thread as the previous one goes out (a plain iterator would be read whole)."""
    if not isinstance(request, ASGIRequest):
        return chunks

    async def pieces() -> AsyncIterator[bytes]:
        while (piece := await sync_to_async(next)(chunks, None)) is not None:
            yield piece

    return pieces()


def _not_found(message: str) -> HttpResponse:
    return HttpResponse(message + "\n", status=404, content_type=TEXT)
