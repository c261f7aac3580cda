"""`voicecall latency`: turn latency and listen wait summaries from turn rows or a calls.jsonl file."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..selectors import turn_latencies

PERCENTILES = (50, 90, 95, 99)


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest rank: index = clamp(ceil(p/100 × n) − 1, 0, n − 1); 0 for an empty series."""
    if not sorted_values:
        return 0
    index = min(len(sorted_values) - 1, max(0, math.ceil(p / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


def summarize(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    summary: dict[str, float] = {
        "count": len(ordered),
        "minMs": ordered[0] if ordered else 0,
        "maxMs": ordered[-1] if ordered else 0,
        "avgMs": round(sum(ordered) / len(ordered), 1) if ordered else 0,
    }
    for p in PERCENTILES:
        summary[f"p{p}Ms"] = percentile(ordered, p)
    return summary


def latency_from_db(last: int) -> dict[str, Any]:
    """Stats over the last `last` completed turns (every turn counted once)."""
    turns = turn_latencies(last=last)
    return {
        "turnsScanned": len(turns),
        "turnLatency": summarize([t for t, _ in turns if t is not None]),
        "listenWait": summarize([w for _, w in turns if w is not None]),
    }


def latency_from_file(path: Path, last: int) -> dict[str, Any]:
    """Stats over the last `last` lines of a reference-format calls.jsonl (malformed lines skipped).

    Each line is a whole call snapshot, so one turn can appear in several lines — the
    reference counts it each time, and so does this.
    """
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").split("\n") if line.strip()][-last:]
    latencies: list[float] = []
    waits: list[float] = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("call"), dict):
            record = record["call"]
        metadata = record.get("metadata") if isinstance(record, dict) else None
        if not isinstance(metadata, dict):
            continue
        for key, bucket in (("lastTurnLatencyMs", latencies), ("lastTurnListenWaitMs", waits)):
            value = metadata.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                bucket.append(value)
    return {"recordsScanned": len(lines), "turnLatency": summarize(latencies), "listenWait": summarize(waits)}
