"""Call records with their turn latencies as CSV lines, made a chunk of calls at a time (for a streamed download)."""
from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from django.db.models import Q

from ..cli.stats import percentile
from ..models import Call, CallEvent, CallTurn, ReplyTurn, TurnStatus
from .latency import REALTIME_TURN_EVENT, Filters, realtime_latency

# Calls read per query (their turns, replies and realtime turns then in one query each).
CHUNK = 500
CALL_FIELDS = ("id", "started_at", "answered_at", "ended_at", "direction", "from_number", "to_number", "route_key",
               "agent_id", "provider", "state", "end_reason", "turn_count")
HEADER = [
    "call_id", "started_at", "answered_at", "ended_at", "duration_s", "direction", "from", "to", "route", "agent",
    "carrier", "state", "end_reason", "turn_count",
    "continue_turns", "continue_p50_ms", "continue_max_ms", "continue_latencies_ms",
    "replies", "reply_first_audio_p50_ms", "reply_first_audio_max_ms", "reply_first_audio_ms",
    "realtime_turns", "realtime_p50_ms", "realtime_max_ms", "realtime_latencies_ms",
]
# A spreadsheet runs a cell starting with one of these as a formula (CSV injection); a leading quote
# makes it text. Phone numbers ("+1555…") get one too: better a visible quote than a formula.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def _stamp(value: datetime | None) -> str:
    return value.isoformat() if value else ""


def _latencies(values: list[int]) -> list[Any]:
    """count, p50, max and every value in order (space-separated in one cell)."""
    if not values:
        return [0, "", "", ""]
    ordered = sorted(values)
    return [len(values), percentile(ordered, 50), ordered[-1], " ".join(str(v) for v in values)]


def _row(call: tuple, turns: list[int], replies: list[int], realtime: list[int]) -> list[str]:
    (call_id, started, answered, ended, direction, from_number, to_number, route, agent, carrier, state, end_reason,
     turn_count) = call
    duration = round((ended - (answered or started)).total_seconds(), 1) if ended else ""
    cells = [call_id, _stamp(started), _stamp(answered), _stamp(ended), duration, direction, from_number, to_number,
             route, agent, carrier, state, end_reason, turn_count,
             *_latencies(turns), *_latencies(replies), *_latencies(realtime)]
    return [safe_cell(cell) for cell in cells]


def _latencies_of(call_ids: list) -> tuple[dict, dict, dict]:
    """Each call's continue turn latencies, reply first-audio times and realtime turn latencies, in time order."""
    turns, replies, realtime = defaultdict(list), defaultdict(list), defaultdict(list)
    for call_id, value in (CallTurn.objects.filter(call_id__in=call_ids, status=TurnStatus.COMPLETED,
                                                   turn_latency_ms__isnull=False)
                           .order_by("completed_at", "id").values_list("call_id", "turn_latency_ms")):
        turns[call_id].append(value)
    for call_id, value in (ReplyTurn.objects.filter(call_id__in=call_ids, first_audio_ms__isnull=False)
                           .order_by("heard_at", "id").values_list("call_id", "first_audio_ms")):
        replies[call_id].append(value)
    for call_id, payload in (CallEvent.objects.filter(call_id__in=call_ids, type=REALTIME_TURN_EVENT)
                             .order_by("occurred_at", "id").values_list("call_id", "payload")):
        value = realtime_latency(payload)
        if value is not None:
            realtime[call_id].append(value)
    return turns, replies, realtime


def csv_lines(since: datetime, until: datetime, filters: Filters) -> Iterator[str]:
    """The header, then one line per call started in [since, until] matching `filters`, oldest first.

    Calls are read CHUNK at a time by keyset (started_at, id), so memory stays flat however many there are.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def line(cells: list) -> str:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(cells)
        return buffer.getvalue()

    yield line(HEADER)
    calls = Call.objects.filter(filters.calls(), started_at__gte=since, started_at__lte=until).order_by("started_at", "id")
    after = None
    while True:
        page = calls
        if after is not None:
            started_at, call_id = after
            page = page.filter(Q(started_at__gt=started_at) | Q(started_at=started_at, id__gt=call_id))
        chunk = list(page.values_list(*CALL_FIELDS)[:CHUNK])
        if not chunk:
            return
        turns, replies, realtime = _latencies_of([row[0] for row in chunk])
        yield "".join(line(_row(row, turns[row[0]], replies[row[0]], realtime[row[0]])) for row in chunk)
        after = (chunk[-1][1], chunk[-1][0])
        if len(chunk) < CHUNK:
            return
