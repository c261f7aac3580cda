"""The headline figures a benchmark hands to `make bench` (bench/summary.py): one JSON file of rows."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def figure(measure: str, value: float | int | str, *, unit: str = "", target: str = "",
           met: bool | None = None) -> dict[str, Any]:
    """One row: what was measured, its value (rounded for reading), the target and whether it is met."""
    if isinstance(value, float):
        value = round(value, 2 if abs(value) < 100 else 0)
        value = int(value) if isinstance(value, float) and value.is_integer() and abs(value) >= 100 else value
    return {"measure": measure, "value": f"{value}{(' ' + unit) if unit else ''}", "target": target, "met": met}


def write_summary(path: str | None, rows: list[dict[str, Any]]) -> None:
    """Write the rows to `path` (the benchmark's --summary argument); nothing when it is None."""
    if path:
        Path(path).write_text(json.dumps(rows))


def read_summary(path: Path) -> list[dict[str, Any]]:
    try:
        return json.loads(path.read_text() or "[]")
    except (OSError, ValueError):
        return []
