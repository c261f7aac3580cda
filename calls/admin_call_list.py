"""The call list's own columns and filter: short ids, durations, the error that ended a call, live calls only."""
from __future__ import annotations

from datetime import datetime, timedelta

from django.contrib import admin
from django.db.models import DurationField, ExpressionWrapper, F, QuerySet
from django.db.models.functions import Coalesce, Now
from django.utils.html import format_html
from django.utils.timezone import localtime

from core.states import TERMINAL_STATES

from .clock import now
from .formatting import SHORT_ID
from .models import Call

ERROR_CHARS = 60  # the list shows this much of an error; the title and the record page show it all


def short_id(call: Call) -> str:
    full = str(call.pk)
    return format_html('<span class="call-id" title="{}">{}</span>', full, full[:SHORT_ID])


def call_duration(call: Call, at: datetime | None = None) -> timedelta | None:
    """Answered to ended, or to now while the call goes on; None for a call never answered."""
    if call.answered_at is None:
        return None
    end = call.ended_at or (None if call.is_terminal else (at or now()))
    return None if end is None else end - call.answered_at


def with_duration(queryset: QuerySet) -> QuerySet:
    """Annotated `duration_sort` (the same span, computed by the database) for sorting the column."""
    return queryset.annotate(duration_sort=ExpressionWrapper(
        Coalesce(F("ended_at"), Now()) - F("answered_at"), output_field=DurationField()))


def started_cell(call: Call) -> str:
    """`2026-12-05 17:59` in the admin's time zone, the full time with seconds in the title: one short line."""
    at = localtime(call.started_at)
    return format_html('<span title="{}">{}</span>', at.isoformat(timespec="seconds"), at.strftime("%Y-%m-%d %H:%M"))


def party_cell(call: Call) -> str:
    """The number on the other end, after an arrow for the direction (→ we called it, ← it called us)."""
    outbound = call.direction == "outbound"
    number = call.to_number if outbound else call.from_number
    return format_html('<span class="call-party" title="{} call from {} to {}">{} {}</span>',
                       "Outbound" if outbound else "Inbound", call.from_number, call.to_number,
                       "→" if outbound else "←", number)


def error_cell(call: Call) -> str:
    text = call.last_error or call.rejection_reason
    if not text:
        return ""
    shown = text if len(text) <= ERROR_CHARS else text[:ERROR_CHARS - 1] + "…"
    return format_html('<span class="call-error" title="{}">{}</span>', text, shown)


class LiveFilter(admin.SimpleListFilter):
    """Calls not in a terminal state (going on, or not placed yet), or the ended ones."""

    title = "live"
    parameter_name = "live"

    def lookups(self, request, model_admin):
        return (("yes", "Live"), ("no", "Ended"))

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.exclude(state__in=TERMINAL_STATES)
        if self.value() == "no":
            return queryset.filter(state__in=TERMINAL_STATES)
        return queryset
