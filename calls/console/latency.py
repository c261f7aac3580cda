"""The latency dashboard's numbers: turn latency percentiles per time bucket, a turn's parts, calls by outcome."""
from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any

from django.db.models import Count, Q, QuerySet
from django.db.models.functions import Trunc
from django.utils import timezone

from core.states import is_terminal

from ..cli.stats import PERCENTILES, summarize
from ..models import Call, CallEvent, CallTurn, ReplyTurn, TurnStatus

# Rows read per series and window at most (newest first). Percentiles need every value, which no
# portable SQL aggregate gives, so values are read and bucketed here; past this many the oldest of
# the window are left out and the page says so. Calls by outcome are counted in the database.
MAX_ROWS = 100_000
# How realtime bridges record a turn: a CallEvent of this type, payload {"latencyMs": …}.
REALTIME_TURN_EVENT = "realtime.turn"


@dataclass(frozen=True)
class Window:
    key: str
    label: str
    unit: str  # "hour" or "day": the bucket size
    buckets: int


WINDOWS = {
    window.key: window
    for window in (
        Window("24h", "Last 24 hours (by hour)", "hour", 24),
        Window("7d", "Last 7 days (by day)", "day", 7),
        Window("30d", "Last 30 days (by day)", "day", 30),
    )
}
DEFAULT_WINDOW = "24h"


@dataclass(frozen=True)
class Filters:
    """What the rows are narrowed to; empty means any. `responder` narrows auto-replies only."""

    route: str = ""  # Call.route_key: the called number's route
    agent: str = ""  # Call.agent_id
    carrier: str = ""  # Call.provider
    responder: str = ""  # ReplyTurn.responder, its model, or the model's provider prefix

    def calls(self, prefix: str = "") -> Q:
        q = Q()
        for value, field in ((self.route, "route_key"), (self.agent, "agent_id"), (self.carrier, "provider")):
            if value:
                q &= Q(**{prefix + field: value})
        return q

    def replies(self) -> Q:
        q = self.calls("call__")
        if self.responder:
            q &= Q(responder=self.responder) | Q(model=self.responder) | Q(model__startswith=self.responder + "/")
        return q


def bucket_starts(window: Window, now: datetime) -> list[datetime]:
    """The window's bucket starts, oldest first; the last one holds `now` (a bucket still filling)."""
    tz = timezone.get_current_timezone()
    local = timezone.localtime(now, tz)
    if window.unit == "hour":
        # Hours stepped in UTC: always 60 minutes each, whatever the zone's clock changes.
        last = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        return [last - timedelta(hours=n) for n in range(window.buckets - 1, -1, -1)]
    today = local.date()
    return [timezone.make_aware(datetime.combine(today - timedelta(days=n), time()), tz)
            for n in range(window.buckets - 1, -1, -1)]


def bucket_label(start: datetime, unit: str) -> str:
    local = timezone.localtime(start)
    return local.strftime("%m-%d %H:00") if unit == "hour" else local.strftime("%Y-%m-%d")


def _percentile_row(values: list[float]) -> dict[str, Any]:
    summary = summarize(values)
    row = {"count": summary["count"]}
    for p in PERCENTILES:
        row[f"p{p}"] = summary[f"p{p}Ms"] if values else None
    return row


class _Bucketer:
    """Spreads (timestamp, value) pairs over the window's buckets."""

    def __init__(self, starts: list[datetime]):
        self.starts = starts
        self.values: list[list[float]] = [[] for _ in starts]

    def add(self, at: datetime, value: float | None) -> None:
        index = bisect.bisect_right(self.starts, at) - 1
        if index >= 0 and value is not None:
            self.values[index].append(value)

    def every(self) -> list[float]:
        return [value for bucket in self.values for value in bucket]


def _series(key: str, name: str, title: str, unit: str, starts: list[datetime], bucketer: _Bucketer,
            capped: bool) -> dict[str, Any]:
    buckets = [{"label": bucket_label(start, unit), "start": start.isoformat(), **_percentile_row(values)}
               for start, values in zip(starts, bucketer.values)]
    return {"key": key, "name": name, "title": title, "buckets": buckets, "overall": _percentile_row(bucketer.every()), "capped": capped}


def _newest(queryset: QuerySet, order: str, *fields: str) -> tuple[list[tuple], bool]:
    """The newest MAX_ROWS rows' fields (one more is read to tell whether any were left out)."""
    rows = list(queryset.order_by(f"-{order}").values_list(order, *fields)[: MAX_ROWS + 1])
    return rows[:MAX_ROWS], len(rows) > MAX_ROWS


def realtime_latency(payload: Any) -> float | None:
    value = payload.get("latencyMs") if isinstance(payload, dict) else None
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 else None


def dashboard(window: Window, filters: Filters, now: datetime | None = None) -> dict[str, Any]:
    """Everything the latency page draws and tabulates, as one JSON-ready structure."""
    now = now or timezone.now()
    starts = bucket_starts(window, now)
    since = starts[0]
    labels = [bucket_label(start, window.unit) for start in starts]

    turns, turns_capped = _newest(
        CallTurn.objects.filter(filters.calls("call__"), status=TurnStatus.COMPLETED, completed_at__gte=since,
                                completed_at__lte=now),
        "completed_at", "turn_latency_ms", "listen_wait_ms")
    turn_latency, listen_wait = _Bucketer(starts), _Bucketer(starts)
    for at, latency, wait in turns:
        turn_latency.add(at, latency)
        listen_wait.add(at, wait)

    replies, replies_capped = _newest(
        ReplyTurn.objects.filter(filters.replies(), heard_at__gte=since, heard_at__lte=now),
        "heard_at", "first_audio_ms", "first_text_ms", "total_ms", "responder", "model")
    first_audio, first_text, reply_total = _Bucketer(starts), _Bucketer(starts), _Bucketer(starts)
    by_responder: dict[tuple[str, str], list[float]] = defaultdict(list)
    for at, audio, text, total, responder, model in replies:
        first_audio.add(at, audio)
        first_text.add(at, text)
        reply_total.add(at, total)
        if audio is not None:
            by_responder[(responder, model)].append(audio)

    realtime_rows, realtime_capped = _newest(
        CallEvent.objects.filter(filters.calls("call__"), type=REALTIME_TURN_EVENT, occurred_at__gte=since,
                                 occurred_at__lte=now),
        "occurred_at", "payload")
    realtime = _Bucketer(starts)
    for at, payload in realtime_rows:
        realtime.add(at, realtime_latency(payload))

    unit = window.unit
    series = [
        _series("continue", "completed continue turns",
                "continue turns (turn started, prompt included → caller's final transcript)",
                unit, starts, turn_latency, turns_capped),
        _series("reply", "auto-replies with audio sent",
                "auto-replies (caller's final transcript → first reply audio sent)",
                unit, starts, first_audio, replies_capped),
        _series("realtime", "realtime turns",
                "realtime turns (caller's speech end → model's first audio played)",
                unit, starts, realtime, realtime_capped),
    ]
    parts = [
        {"key": "listen_wait", "title": "listen wait (continue: listening began → final transcript)",
         "measured": True, **_percentile_row(listen_wait.every())},
        {"key": "transcription_final", "title": "transcription final (caller's end of speech → final transcript)",
         "measured": False, **_percentile_row([])},
        {"key": "first_text", "title": "responder first text (final transcript → responder's first text)",
         "measured": True, **_percentile_row(first_text.every())},
        {"key": "first_audio", "title": "first audio out (final transcript → first reply audio sent)",
         "measured": True, **_percentile_row(first_audio.every())},
        {"key": "reply_total", "title": "reply done (final transcript → reply fully sent)",
         "measured": True, **_percentile_row(reply_total.every())},
    ]
    responders = [
        {"responder": responder or "—", "model": model or "—", **_percentile_row(values)}
        for (responder, model), values in sorted(by_responder.items())
    ]
    return {
        "window": {"key": window.key, "label": window.label, "unit": window.unit, "since": since.isoformat(),
                   "until": now.isoformat()},
        "labels": labels,
        "percentiles": [f"p{p}" for p in PERCENTILES],
        "series": series,
        "parts": parts,
        "responders": responders,
        "outcomes": calls_by_outcome(window, filters, starts, now),
        "maxRows": MAX_ROWS,
        "empty": not (turns or replies or realtime_rows),
    }


def outcome_of(state: str, end_reason: str) -> str:
    """A call's outcome: how it ended, or "in progress" while it has not."""
    return end_reason or (state if is_terminal(state) else "in progress")


def calls_by_outcome(window: Window, filters: Filters, starts: list[datetime], now: datetime) -> dict[str, Any]:
    """Calls started per bucket by outcome, counted in the database (one row per bucket, state and end reason)."""
    # Hour buckets are UTC hours (see bucket_starts); day buckets are the current time zone's days.
    tz = UTC if window.unit == "hour" else timezone.get_current_timezone()
    counted = (Call.objects.filter(filters.calls(), started_at__gte=starts[0], started_at__lte=now)
               .annotate(bucket=Trunc("started_at", window.unit, tzinfo=tz))
               .values_list("bucket", "state", "end_reason").annotate(n=Count("pk")).order_by())
    per_bucket: list[dict[str, int]] = [defaultdict(int) for _ in starts]
    for bucket, state, end_reason, n in counted:
        index = bisect.bisect_right(starts, bucket) - 1
        if index >= 0:
            per_bucket[index][outcome_of(state, end_reason)] += n
    outcomes = sorted({outcome for counts in per_bucket for outcome in counts}, key=_outcome_order)
    rows = [{"label": bucket_label(start, window.unit), "counts": [counts.get(o, 0) for o in outcomes],
             "total": sum(counts.values())} for start, counts in zip(starts, per_bucket)]
    return {"outcomes": outcomes, "rows": rows, "total": sum(row["total"] for row in rows)}


def _outcome_order(outcome: str) -> tuple[int, str]:
    # The usual ending first, calls still going last; the rest by name.
    return (0 if outcome == "completed" else 2 if outcome == "in progress" else 1, outcome)


def distinct_values(field: str, since: datetime, limit: int = 200) -> list[str]:
    """The window's calls' distinct non-empty values of `field` (the filter's choices), at most `limit`."""
    return list(Call.objects.filter(started_at__gte=since).exclude(**{field: ""})
                .order_by(field).values_list(field, flat=True).distinct()[:limit])


def responder_values(since: datetime, limit: int = 200) -> list[str]:
    """The window's auto-replies' distinct responders and models (the responder filter's choices)."""
    values: set[str] = set()
    rows = (ReplyTurn.objects.filter(heard_at__gte=since).order_by()
            .values_list("responder", "model").distinct()[:limit])
    for responder, model in rows:
        values.update(v for v in (responder, model) if v)
    return sorted(values)

