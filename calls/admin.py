"""Admin: call records, read-only, with transcript, turns, replies, media streams and events; conversation sessions; dial lists; gateway nodes.

The media streams' own pages are in admin_streams.
"""
from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db.models import Count
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse

from core.errors import VoiceCallError

from .admin_call_list import LiveFilter, call_duration, error_cell, party_cell, short_id, started_cell, with_duration
from .admin_login import ThrottledAdminAuthenticationForm
from .admin_readonly import ReadOnlyInline, ReadOnlyModelAdmin
from .admin_recordings import RecordingInline
from .admin_streams import MediaStreamInline
from .dial_progress import dial_list_progress
from .dial_rows import COLUMNS, MAX_BYTES, MAX_ROWS
from .formatting import duration as human_duration
from .models import (
    Call, CallEvent, CallTurn, ConversationSession, DialList, GatewayNode, PendingDial, PendingDialStatus, ReplyTurn,
    SessionMessage, TranscriptEntry, Transfer,
)
from .selectors import call_timeline


# Failed logins are counted per username and client address; too many lock the pair out for a while.
admin.site.login_form = ThrottledAdminAuthenticationForm


class TranscriptInline(ReadOnlyInline):
    empty_text = "No transcript yet."
    model = TranscriptEntry
    fields = ("timestamp", "speaker", "text", "is_final")
    readonly_fields = fields
    verbose_name_plural = "transcript"


class TurnInline(ReadOnlyInline):
    empty_text = "No turns."
    model = CallTurn
    fields = ("started_at", "prompt", "status", "transcript", "turn_latency_ms", "listen_wait_ms", "error")
    readonly_fields = fields


class ReplyInline(ReadOnlyInline):
    empty_text = "No automatic replies."
    model = ReplyTurn
    fields = ("heard_at", "transcript", "status", "reply", "first_text_ms", "first_audio_ms", "total_ms", "error")
    readonly_fields = fields
    verbose_name_plural = "automatic replies (latencies in ms from the caller's last word)"


class TransferInline(ReadOnlyInline):
    empty_text = "No transfers."
    model = Transfer
    fields = ("requested_at", "kind", "target", "requested_by", "status", "summary", "provider_ref", "error", "finished_at")
    readonly_fields = fields
    verbose_name_plural = "transfers (status: requested, dialing, connected or failed)"


class EventInline(ReadOnlyInline):
    empty_text = "No events."
    model = CallEvent
    fields = ("occurred_at", "type", "dedupe_key", "payload")
    readonly_fields = fields


@admin.register(Call)
class CallAdmin(ReadOnlyModelAdmin):
    # One line per call at 1366 px: the other party's number with the direction as an arrow, and no end reason
    # column (an ended call's state is its end reason); the filters still have both.
    list_display = ("call_id", "started", "party", "mode", "state", "duration", "error", "provider")
    list_filter = (
        LiveFilter, "state", "direction", "mode", "end_reason", "provider", "answered_by", "rejection_reason", "pairing",
        ("started_at", admin.DateFieldListFilter),
    )
    date_hierarchy = "started_at"
    search_fields = ("id", "provider_call_id", "from_number", "to_number", "session_key", "requester_session_key")
    ordering = ("-started_at",)
    inlines = (TranscriptInline, TurnInline, ReplyInline, MediaStreamInline, TransferInline, RecordingInline, EventInline)
    fieldsets = (
        (None, {"fields": ("id", "provider", "provider_call_id", "direction", "mode", "state")}),
        ("Parties", {"fields": ("from_number", "to_number", "agent_id", "session_key", "requester_session_key", "route_key", "route")}),
        ("To say and key in", {"fields": ("initial_message", "pending_dtmf")}),
        ("How it went", {"fields": ("amd_mode", "answered_by", "answered_by_first", "turn_count", "end_reason", "hangup_reason", "last_error",
                                    "end_attempts", "end_retry_at")}),
        ("Inbound policy", {"fields": ("rejection_reason", "pairing", "pairing_attempts", "pairing_digits", "paired_code")}),
        ("Times", {"fields": ("started_at", "answered_at", "ended_at", "max_duration_deadline", "notify_hangup_at")}),
        ("Carrier extras", {"fields": ("metadata",)}),
    )

    @admin.display(description="id", ordering="id")
    def call_id(self, call: Call) -> str:
        return short_id(call)

    @admin.display(description="started", ordering="started_at")
    def started(self, call: Call) -> str:
        return started_cell(call)

    @admin.display(description="other party")
    def party(self, call: Call) -> str:
        return party_cell(call)

    @admin.display(description="duration", ordering="duration_sort")
    def duration(self, call: Call) -> str:
        span = call_duration(call)
        return "" if span is None else human_duration(span.total_seconds())

    @admin.display(description="error")
    def error(self, call: Call) -> str:
        return error_cell(call)

    def get_queryset(self, request):
        return with_duration(super().get_queryset(request))

    def change_view(self, request, object_id, form_url="", extra_context=None):
        # Imported here: the admin is loaded by every command (autodiscover), the call services only when needed.
        from .console.actions import PERMISSION as ACT_ON_CALL
        from .console.actions import action_url_template, action_urls

        call = self.get_object(request, object_id)
        extra_context = {**(extra_context or {}), "timeline": call_timeline(call=call) if call else []}
        if call is not None and not call.is_terminal and request.user.has_perm(ACT_ON_CALL):
            # Only operators see the action forms, and only while there is a call to act on.
            extra_context["call_actions"] = {
                "call_id": call.pk, "urls": action_urls(call.pk), "url_template": action_url_template(),
            }
        return super().change_view(request, object_id, form_url, extra_context)

    def get_readonly_fields(self, request, obj=None):
        return [field.name for field in Call._meta.fields]


class SessionMessageInline(ReadOnlyInline):
    empty_text = "Nothing remembered yet."
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


class DialListUploadForm(forms.Form):
    file = forms.FileField(
        label="CSV file",
        help_text=(
            f"First row: the column names. Columns: {', '.join(COLUMNS)} (to and message required). "
            f"At most {MAX_ROWS} rows and {MAX_BYTES // (1024 * 1024)} MB."
        ),
    )
    name = forms.CharField(max_length=255, required=False, help_text="Default: the file name.")


@admin.register(DialList)
class DialListAdmin(admin.ModelAdmin):
    """Upload a CSV dial list; its page shows the counts and each row's outcome, read-only."""

    list_display = ("name", "created_at", "rows_total", "rows_rejected", "progress")
    ordering = ("-created_at",)
    readonly_fields = ("id", "name", "created_at", "rows_total", "rows_rejected")
    actions = ("cancel_waiting_rows",)
    add_form_template = "admin/calls/diallist/upload.html"

    @admin.display(description="rows by status")
    def progress(self, obj: DialList) -> str:
        # One grouped query per list: the list page stays cheap however long the lists are.
        counts = dict(obj.dials.order_by().values_list("status").annotate(n=Count("pk")))
        return ", ".join(f"{counts[status]} {status}" for status in PendingDialStatus.values if counts.get(status))

    @admin.action(description="Cancel the rows still waiting (calls already placed go on)")
    def cancel_waiting_rows(self, request, queryset) -> None:
        from .services import dial_list_cancel

        cancelled = sum(dial_list_cancel(dial_list_id=dial_list.pk) for dial_list in queryset)
        self.message_user(request, f"{cancelled} waiting rows cancelled.")

    def add_view(self, request, form_url="", extra_context=None):
        if not self.has_add_permission(request):
            return super().add_view(request, form_url, extra_context)  # answers 403 as usual
        form = DialListUploadForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            from .services import dial_list_create

            upload = form.cleaned_data["file"]
            try:
                if upload.size > MAX_BYTES:
                    raise VoiceCallError(f"dial list is over {MAX_BYTES // (1024 * 1024)} MB")
                dial_list = dial_list_create(name=form.cleaned_data["name"] or upload.name, data=upload.read())
            except VoiceCallError as exc:
                form.add_error("file", exc.message)
            else:
                self.message_user(
                    request, f"{dial_list.rows_total - dial_list.rows_rejected} rows will be dialed, {dial_list.rows_rejected} refused.",
                    messages.WARNING if dial_list.rows_rejected else messages.SUCCESS,
                )
                return HttpResponseRedirect(reverse("admin:calls_diallist_change", args=[dial_list.pk]))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Upload a dial list",
            "form": form,
            "has_view_permission": self.has_view_permission(request),
            **(extra_context or {}),
        }
        return TemplateResponse(request, self.add_form_template, context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        dial_list = self.get_object(request, object_id)
        progress = dial_list_progress(dial_list=dial_list) if dial_list else None
        extra_context = {**(extra_context or {}), "progress": progress}
        return super().change_view(request, object_id, form_url, extra_context)

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # rows are dialed by the gateway; the page is view-only

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # the rows are the record of who was called


@admin.register(PendingDial)
class PendingDialAdmin(ReadOnlyModelAdmin):
    """Scheduled calls and dial-list rows not placed yet (and what became of them), read-only."""

    list_display = ("id", "due_at", "to_number", "status", "dial_list", "row", "error")
    list_filter = ("status", ("dial_list", admin.RelatedOnlyFieldListFilter))
    search_fields = ("id", "to_number", "idempotency_key")
    ordering = ("-due_at",)

    def get_readonly_fields(self, request, obj=None):
        return [field.name for field in PendingDial._meta.fields]
