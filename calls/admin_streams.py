"""Admin: media streams, read-only: carrier, call, open and close, frame counters and lag percentiles from the stats written at close."""
from __future__ import annotations

import json

from django.contrib import admin
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from .admin_readonly import ReadOnlyInline, ReadOnlyModelAdmin
from .models import MediaStream

NONE = "—"
# The latency summaries calls/streams/stats.py writes (StreamStats.as_dict), in the order shown.
LATENCIES = (
    ("inboundLagMs", "inbound lag", "how far behind real time each inbound frame was handled"),
    ("pacingLateMs", "pacing lateness", "how late each outbound frame left against its 20 ms slot"),
    ("turnLatencyMs", "turn latency", "final transcript to the first reply audio frame sent"),
    ("turnOwnLatencyMs", "turn latency, own share", "the same less the wait for the speech service's first audio"),
)
FIRST_COUNTERS = ("frames_in", "frames_out", "dropped")


def counter(stream: MediaStream, key: str):
    """A counter of a closed stream (0 when it never moved), None while the stream is open."""
    if stream.closed_at is None:
        return None
    return (stream.stats or {}).get(key, 0) if isinstance(stream.stats, dict) else 0


def percentile(stream: MediaStream, summary: str, p: str) -> str:
    stats = stream.stats if isinstance(stream.stats, dict) else {}
    values = stats.get(summary)
    if stream.closed_at is None or not isinstance(values, dict) or not values.get("n"):
        return NONE
    return ms(values.get(p))


def ms(value) -> str:
    return NONE if not isinstance(value, int | float) else f"{value:g} ms"


def counters(stats: dict) -> list[tuple[str, int]]:
    """Every counter of a stream's stats: frames and drops first, then the rest by name."""
    found = {key: value for key, value in stats.items() if isinstance(value, int | float) and not isinstance(value, bool)}
    drops = sorted(key for key in found if key.startswith("dropped_"))
    rest = sorted(key for key in found if key not in FIRST_COUNTERS and key not in drops)
    ordered = [key for key in FIRST_COUNTERS if key in found] + drops + rest
    return [(key.replace("dropped_", "dropped: ").replace("_", " "), found[key]) for key in ordered]


class StreamStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return (("open", "open"), ("closed", "closed"))

    def queryset(self, request, queryset):
        if self.value() == "open":
            return queryset.filter(closed_at__isnull=True)
        if self.value() == "closed":
            return queryset.filter(closed_at__isnull=False)
        return queryset


def short_time(at) -> str:
    """The time of day for today, with the date before it otherwise (the list stays narrow)."""
    local = timezone.localtime(at)
    return local.strftime("%H:%M:%S" if local.date() == timezone.localdate() else "%b %d %H:%M")


class StreamStatsDisplay:
    """The columns and fields both the stream admin and the call page's inline show."""

    @admin.display(description="stream", ordering="stream_id")
    def stream(self, stream: MediaStream) -> str:
        # Carrier stream ids are long (MZ + 32 hex): the list shows their start, the title all of it.
        text = stream.stream_id if len(stream.stream_id) <= 10 else stream.stream_id[:8] + "…"
        return format_html('<span title="{}">{}</span>', stream.stream_id, text)

    @admin.display(description="call")
    def call_link(self, stream: MediaStream) -> str:
        return format_html('<a href="{}">{}</a>', reverse("admin:calls_call_change", args=[stream.call_id]), stream.call_id)

    @admin.display(description="call")
    def call_short(self, stream: MediaStream) -> str:
        call_id = str(stream.call_id)
        return format_html('<a href="{}" title="{}">{}…</a>', reverse("admin:calls_call_change", args=[call_id]),
                           call_id, call_id[:6])

    @admin.display(description="opened", ordering="opened_at")
    def opened(self, stream: MediaStream) -> str:
        return short_time(stream.opened_at)

    @admin.display(description="closed", ordering="closed_at")
    def closed(self, stream: MediaStream):
        return short_time(stream.closed_at) if stream.closed_at else "open"

    @admin.display(description="reason", ordering="close_reason")
    def reason(self, stream: MediaStream) -> str:
        return stream.close_reason or NONE

    @admin.display(description="dropped")
    def dropped(self, stream: MediaStream):
        return _or_dash(counter(stream, "dropped"))

    @admin.display(description="frames in/out")
    def frames(self, stream: MediaStream) -> str:
        if stream.closed_at is None:
            return NONE
        return f"{counter(stream, 'frames_in')}/{counter(stream, 'frames_out')}"

    @admin.display(description="lag p50/p99")
    def lag(self, stream: MediaStream) -> str:
        p50, p99 = percentile(stream, "inboundLagMs", "p50"), percentile(stream, "inboundLagMs", "p99")
        return NONE if p50 == NONE else f"{p50.removesuffix(' ms')}/{p99}"

    @admin.display(description="pacing p99")
    def pacing_p99(self, stream: MediaStream) -> str:
        return percentile(stream, "pacingLateMs", "p99")

    @admin.display(description="node", ordering="node__host")
    def node_short(self, stream: MediaStream) -> str:
        return f"{stream.node.host}:{stream.node.pid}" if stream.node else NONE


def _or_dash(value):
    return NONE if value is None else value


@admin.register(MediaStream)
class MediaStreamAdmin(StreamStatsDisplay, ReadOnlyModelAdmin):
    """Written by the gateway when a stream opens and closes; never edited. Viewable by whoever may view calls."""

    list_display = (
        "stream", "carrier", "call_short", "opened", "closed", "reason", "frames", "dropped", "lag", "pacing_p99", "node_short",
    )
    list_filter = ("carrier", StreamStateFilter, "close_reason")
    list_select_related = ("node",)
    empty_value_display = NONE
    search_fields = ("stream_id", "call__id")
    ordering = ("-opened_at",)
    date_hierarchy = "opened_at"
    fieldsets = (
        (None, {"fields": ("stream_id", "carrier", "call_link", "node")}),
        ("Open and close", {"fields": ("opened_at", "closed_at", "duration", "close_reason")}),
        ("Counters", {"fields": ("counter_table",)}),
        ("Latency", {"fields": ("latency_table",)}),
        ("Stats as written", {"fields": ("raw_stats",), "classes": ("collapse",)}),
    )
    readonly_fields = ("stream_id", "carrier", "call_link", "node", "opened_at", "closed_at", "duration", "close_reason",
                       "counter_table", "latency_table", "raw_stats")

    @admin.display(description="duration")
    def duration(self, stream: MediaStream) -> str:
        if stream.closed_at is None:
            return "open"
        seconds = (stream.closed_at - stream.opened_at).total_seconds()
        minutes, seconds = divmod(round(seconds), 60)
        return f"{minutes} min {seconds} s" if minutes else f"{seconds} s"

    @admin.display(description="counters")
    def counter_table(self, stream: MediaStream) -> str:
        if stream.closed_at is None:
            return "open: the counters are written when the stream closes"
        rows = counters(stream.stats if isinstance(stream.stats, dict) else {})
        if not rows:
            return "none written (the stream was closed by another process or replaced)"
        return format_html(
            '<table class="stream-counters"><thead><tr><th>counter</th><th>count</th></tr></thead><tbody>{}</tbody></table>',
            format_html_join("", "<tr><td>{}</td><td>{}</td></tr>", rows),
        )

    @admin.display(description="percentiles")
    def latency_table(self, stream: MediaStream) -> str:
        stats = stream.stats if isinstance(stream.stats, dict) else {}
        if stream.closed_at is None:
            return "open: the percentiles are written when the stream closes"
        rows = []
        for key, label, meaning in LATENCIES:
            values = stats.get(key)
            if isinstance(values, dict):
                empty = not values.get("n")
                rows.append((label, meaning, values.get("n", 0), *(NONE if empty else ms(values.get(p)) for p in ("p50", "p99", "max"))))
        if not rows:
            return "none written (the stream was closed by another process or replaced)"
        return format_html(
            '<table class="stream-latency"><thead><tr><th>measure</th><th>samples</th><th>p50</th><th>p99</th><th>max</th>'
            "</tr></thead><tbody>{}</tbody></table>",
            format_html_join("", '<tr><td>{0}<br><small class="quiet">{1}</small></td><td>{2}</td><td>{3}</td>'
                                 "<td>{4}</td><td>{5}</td></tr>", rows),
        )

    @admin.display(description="stats")
    def raw_stats(self, stream: MediaStream) -> str:
        return format_html("<pre>{}</pre>", json.dumps(stream.stats, indent=2, sort_keys=True))

    def has_view_permission(self, request, obj=None) -> bool:
        return request.user.has_perm("calls.view_call") or super().has_view_permission(request, obj)


class MediaStreamInline(StreamStatsDisplay, ReadOnlyInline):
    """A call's streams on its record page, each linking to its own page."""

    model = MediaStream
    empty_text = "No media streams."
    show_change_link = True
    fields = ("stream_id", "carrier", "opened", "closed", "close_reason", "frames", "dropped", "lag", "pacing_p99", "node")
    readonly_fields = fields
    verbose_name_plural = "media streams"

    def has_view_permission(self, request, obj=None) -> bool:
        return request.user.has_perm("calls.view_call") or super().has_view_permission(request, obj)
