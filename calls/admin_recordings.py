"""Admin: a call's recordings (carrier and local), read-only, each with a player fed by the console's permission-checked audio view."""
from __future__ import annotations

from django.contrib import admin
from django.utils.html import format_html

from .admin_readonly import ReadOnlyInline
from .models import Recording, RecordingStatus

NONE = "—"


class RecordingInline(ReadOnlyInline):
    model = Recording
    empty_text = "No recordings."
    fields = ("started_at", "source", "status", "player", "duration", "channels", "size_bytes", "stored", "expires_at",
              "deleted_at", "error")
    readonly_fields = fields
    verbose_name_plural = "recordings"

    @admin.display(description="play")
    def player(self, recording: Recording) -> str:
        from .console.recordings import playable, recording_audio_url

        if not playable(recording):
            return "deleted" if recording.status == RecordingStatus.DELETED else NONE
        return format_html('<audio controls preload="none" src="{}"></audio>', recording_audio_url(recording.pk))

    @admin.display(description="duration")
    def duration(self, recording: Recording) -> str:
        return NONE if recording.duration_seconds is None else f"{recording.duration_seconds:.1f} s"

    @admin.display(description="kept")
    def stored(self, recording: Recording) -> str:
        if recording.file:
            return f"file {recording.file}"
        return "at the carrier" if recording.url else NONE
