"""What `voicecall status`, `tail` and `latency` print for a person: UTC times, durations, tables."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import Any

# Kept free of Django and the models: `status` imports it, and `status` must start fast.
from calls.formatting import duration, short_id

SPEAKERS = {"bot": "bot", "user": "caller"}


def when(ms: int | None) -> str:
    """An epoch-milliseconds time as `2026-12-05 10:30:02 UTC` (always UTC, so logs and hosts agree)."""
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def offset(seconds: float) -> str:
    """A transcript line's time from the call's start: `+00:07`, `+1:02:03`."""
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"+{hours}:{minutes:02d}:{secs:02d}" if hours else f"+{minutes:02d}:{secs:02d}"


def call_duration(record: dict[str, Any], now_ms: int | None) -> float | None:
    """Seconds from the answer to the end, or to `now_ms` for a live call (as the admin counts them).

    None for a call never answered, and for one with no end when there is no now to count to (a
    record read back from a file) or that ended without a time.
    """
    answered = record.get("answeredAt")
    if answered is None:
        return None
    end = record.get("endedAt")
    if end is None and not record.get("endReason"):
        end = now_ms
    return None if end is None else (end - answered) / 1000


def other_party(record: dict[str, Any]) -> str:
    """The number that is not ours: who was called, or who called."""
    key = "from" if record.get("direction") == "inbound" else "to"
    return record.get(key) or "-"


def table(header: Sequence[str], rows: Iterable[Sequence[str]], *, right: Sequence[int] = ()) -> str:
    """Columns padded to their widest cell; `right` lists the columns aligned right (numbers)."""
    cells = [list(header), *[list(row) for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = []
    for row in cells:
        parts = [cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


# --- status --------------------------------------------------------------------------------------


def call_text(record: dict[str, Any], now_ms: int) -> str:
    """One call record (`call_record`, or a scheduled dial's summary) for reading."""
    metadata = record.get("metadata") or {}
    state = record.get("state", "-")
    live = record.get("endedAt") is None and "scheduledAt" not in record and not record.get("endReason")
    rows: list[tuple[str, str]] = [
        ("State", state + (" (live)" if live and record.get("startedAt") else "")),
        ("Direction", record.get("direction", "-")),
    ]
    if "from" in record:
        rows.append(("From", record["from"]))
    if "to" in record:
        rows.append(("To", record["to"]))
    if record.get("provider"):
        carrier = record["provider"]
        if record.get("providerCallId"):
            carrier += f" (carrier call id {record['providerCallId']})"
        rows.append(("Carrier", carrier))
    if "scheduledAt" in record:
        rows.append(("Scheduled for", when(record["scheduledAt"])))
    if record.get("dialListId"):
        rows.append(("Dial list", f"{record['dialListId']}" + (f", row {record['row']}" if "row" in record else "")))
    for label, key in (("Started", "startedAt"), ("Answered", "answeredAt"), ("Ended", "endedAt")):
        if record.get(key) is not None:
            rows.append((label, when(record[key])))
    length = call_duration(record, now_ms)
    if length is not None:
        rows.append(("Duration", duration(length) + (" so far" if live else "")))
    if record.get("endReason"):
        rows.append(("End reason", record["endReason"]))
    error = metadata.get("lastError") or record.get("error")
    if error:
        rows.append(("Error", str(error)))
    for label, key in (("Rejected", "rejectionReason"), ("Hang-up", "hangupReason"), ("Answered by", "answeredBy"),
                       ("Mode", "mode"), ("Message", "initialMessage"), ("DTMF", "dtmfSequence")):
        if metadata.get(key) and metadata[key] != record.get("endReason"):
            rows.append((label, str(metadata[key])))
    if record.get("agentId"):
        rows.append(("Agent", record["agentId"] + (f" (session {record['sessionKey']})" if record.get("sessionKey") else "")))
    if metadata.get("turnCount"):
        turns = f"{metadata['turnCount']}"
        if metadata.get("lastTurnLatencyMs") is not None:
            turns += f", last turn {metadata['lastTurnLatencyMs']} ms"
        if metadata.get("lastTurnListenWaitMs") is not None:
            turns += f" (listen wait {metadata['lastTurnListenWaitMs']} ms)"
        rows.append(("Turns", turns))
    for transfer in record.get("transfers") or []:
        text = f"{transfer.get('mode', '')} to {transfer.get('to', '-')}: {transfer.get('status', '-')}"
        if transfer.get("error"):
            text += f" ({transfer['error']})"
        rows.append(("Transfer", text))
    width = max(len(label) for label, _ in rows) + 1
    lines = [f"Call {record.get('callId', '-')}"] + [f"  {(label + ':').ljust(width)} {value}" for label, value in rows]
    transcript = record.get("transcript")
    if transcript is not None:
        lines.append("Transcript:" if transcript else "Transcript: (nothing said yet)")
        lines += transcript_lines(transcript, record.get("startedAt"))
    return "\n".join(lines)


def transcript_lines(transcript: list[dict[str, Any]], started_ms: int | None) -> list[str]:
    speakers = [SPEAKERS.get(entry.get("speaker", ""), entry.get("speaker", "")) for entry in transcript]
    width = max((len(speaker) for speaker in speakers), default=0)
    lines = []
    for entry, speaker in zip(transcript, speakers):
        stamp = entry.get("timestamp")
        at = offset((stamp - started_ms) / 1000) if stamp is not None and started_ms is not None else "?"
        partial = "" if entry.get("isFinal", True) else " …"
        lines.append(f"  {at}  {speaker.ljust(width)}  {entry.get('text', '')}{partial}")
    return lines


def live_calls_text(records: list[dict[str, Any]], now_ms: int) -> str:
    """The live calls as a table (short ids: the full ones are in --json), or `No live calls.`."""
    if not records:
        return "No live calls."
    rows = []
    for record in records:
        length = call_duration(record, now_ms)
        rows.append((short_id(record["callId"]), other_party(record), record.get("direction", "-"),
                     record.get("state", "-"), duration(length) if length is not None else "-"))
    return table(("ID", "NUMBER", "DIRECTION", "STATE", "DURATION"), rows, right=(4,))


# --- tail ----------------------------------------------------------------------------------------


def latest_ms(record: dict[str, Any]) -> int | None:
    """The newest time a record shows (for a record read from a file, which has no update time)."""
    times = [record.get(key) for key in ("startedAt", "answeredAt", "endedAt")]
    times += [entry.get("timestamp") for entry in record.get("transcript") or []]
    known = [t for t in times if isinstance(t, (int, float)) and not isinstance(t, bool)]
    return int(max(known)) if known else None


def tail_line(record: dict[str, Any], changed_ms: int | None, now_ms: int | None) -> str:
    """One line per change: when, which call, who, state, how long, and the newest transcript line."""
    parts = [when(changed_ms if changed_ms is not None else latest_ms(record)),
             short_id(str(record.get("callId", "-"))), record.get("direction", "-"),
             other_party(record), record.get("state", "-")]
    length = call_duration(record, now_ms)
    if length is not None:
        parts.append(duration(length))
    error = (record.get("metadata") or {}).get("lastError")
    if record.get("endReason") and record["endReason"] != record.get("state"):
        parts.append(f"ended: {record['endReason']}")
    if error:
        parts.append(f"error: {error}")
    transcript = record.get("transcript") or []
    if transcript:
        last = transcript[-1]
        parts.append(f'{SPEAKERS.get(last.get("speaker", ""), last.get("speaker", ""))}: "{last.get("text", "")}"')
    return "  ".join(str(part) for part in parts)


# --- latency -------------------------------------------------------------------------------------


def latency_text(data: dict[str, Any], *, over: str, empty: str) -> str:
    """The latency summary as a small table in milliseconds; `over` names what was read, `empty` when nothing was timed."""
    series = (("turn latency", data["turnLatency"]), ("listen wait", data["listenWait"]))
    if not any(summary["count"] for _, summary in series):
        return empty
    columns = ("count", "minMs", "avgMs", "p50Ms", "p90Ms", "p95Ms", "p99Ms", "maxMs")
    header = ("", "count", "min", "avg", "p50", "p90", "p95", "p99", "max")
    rows = [(name, *(_number(summary[key]) for key in columns)) for name, summary in series]
    return f"Over {over}, in ms:\n" + table(header, rows, right=range(1, len(header)))


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"
