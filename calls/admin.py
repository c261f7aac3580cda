"""Admin: call records, read-only, with transcript, turns, replies and events; conversation sessions; gateway nodes."""
from __future__ import annotations

from django.contrib import admin

from .admin_login import ThrottledAdminAuthenticationForm
from .models import (
    Call, CallEvent, CallTurn, ConversationSession, GatewayNode, ReplyTurn, SessionMessage, TranscriptEntry,
)
from .selectors import call_timeline


# Failed logins are counted per username and client address; too many lock the pair out for a while.
admin.site.login_form = ThrottledAdminAuthenticationForm


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class TranscriptInline(ReadOnlyInline):
    model = TranscriptEntry
    fields = ("timestamp", "speaker", "text", "is_final")
    readonly_fields = fields
    verbose_name_plural = "transcript"


class TurnInline(ReadOnlyInline):
    model = CallTurn
    fields = ("started_at", "prompt", "status", "transcript", "turn_latency_ms", "listen_wait_ms", "error")
    readonly_fields = fields


class ReplyInline(ReadOnlyInline):
    model = ReplyTurn
    fields = ("heard_at", "transcript", "status", "reply", "first_text_ms", "first_audio_ms", "total_ms", "error")
    readonly_fields = fields
    verbose_name_plural = "automatic replies (latencies in ms from the caller's last word)"


class EventInline(ReadOnlyInline):
    model = CallEvent
    fields = ("occurred_at", "type", "dedupe_key", "payload")
    readonly_fields = fields


@admin.register(Call)
class CallAdmin(admin.ModelAdmin):
    list_display = ("id", "started_at", "direction", "mode", "from_number", "to_number", "state", "end_reason", "provider")
    list_filter = (
        "state", "direction", "mode", "end_reason", "provider", "answered_by", "rejection_reason", "pairing",
        ("started_at", admin.DateFieldListFilter),
    )
    date_hierarchy = "started_at"
    search_fields = ("id", "provider_call_id", "from_number", "to_number", "session_key", "requester_session_key")
    ordering = ("-started_at",)
    inlines = (TranscriptInline, TurnInline, ReplyInline, EventInline)
    fieldsets = (
        (None, {"fields": ("id", "provider", "provider_call_id", "direction", "mode", "state")}),
        ("Parties", {"fields": ("from_number", "to_number", "agent_id", "session_key", "requester_session_key", "route_key", "route")}),
        ("To say and key in", {"fields": ("initial_message", "pending_dtmf")}),
        ("How it went", {"fields": ("answered_by", "answered_by_first", "turn_count", "end_reason", "hangup_reason", "last_error",
                                    "end_attempts", "end_retry_at")}),
        ("Inbound policy", {"fields": ("rejection_reason", "pairing", "pairing_attempts", "pairing_digits", "paired_code")}),
        ("Times", {"fields": ("started_at", "answered_at", "ended_at", "max_duration_deadline", "notify_hangup_at")}),
        ("Carrier extras", {"fields": ("metadata",)}),
    )

    def change_view(self, request, object_id, form_url="", extra_context=None):
        call = self.get_object(request, object_id)
        extra_context = {**(extra_context or {}), "timeline": call_timeline(call=call) if call else []}
        return super().change_view(request, object_id, form_url, extra_context)

    def get_readonly_fields(self, request, obj=None):
        return [field.name for field in Call._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # records are written by the gateway only; the page is view-only

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class SessionMessageInline(ReadOnlyInline):
    model = SessionMessage
    fields = ("spoken_at", "role", "text", "call")
    readonly_fields = fields
    verbose_name_plural = "memory"


@admin.register(ConversationSession)
class ConversationSessionAdmin(admin.ModelAdmin):
    """Each session's memory; deleting a session makes the agent forget that conversation."""

    list_display = ("key", "agent_id", "updated_at", "created_at")
    search_fields = ("key",)
    inlines = (SessionMessageInline,)
    readonly_fields = ("key", "agent_id", "created_at", "updated_at")

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(GatewayNode)
class GatewayNodeAdmin(admin.ModelAdmin):
    """Gateway processes, live and gone: written by the processes themselves and by the sweep, never by hand."""

    list_display = ("host", "pid", "started_at", "heartbeat_at", "stopped_at", "stop_reason", "open_streams")
    list_filter = (("stopped_at", admin.EmptyFieldListFilter),)
    search_fields = ("host", "id")
    readonly_fields = ("id", "host", "pid", "started_at", "heartbeat_at", "suspected_at", "stopped_at", "stop_reason")

    @admin.display(description="open streams")
    def open_streams(self, node: GatewayNode) -> int:
        return node.media_streams.filter(closed_at__isnull=True).count()

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
