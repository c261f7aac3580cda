"""Dial lists as CSV: the header checked, each row read and checked, bad rows reported by row number.

A dial list is a CSV file with a header row. Columns (names case-insensitive, any order):
`to` (E.164, required), `message` (what to say, required and not empty), and optionally `mode`
(notify or conversation; empty: the configured default), `dtmfSequence` (digits to press once
answered, conversation mode only) and `at` (when to dial the row; empty: as soon as possible).
An unknown or repeated column refuses the whole file: a typo'd `mesage` must not dial everyone
with nothing to say. A bad row is reported with its row number (the header is row 1, as a
spreadsheet numbers them) and skipped; the rest are dialed.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import datetime

from core.errors import InvalidRequest
from core.phone import DTMF_MESSAGE, DTMF_PATTERN, E164, E164_MESSAGE

from .dial_time import due_time_parse
from .models import CallMode, PendingDial

COLUMNS = ("to", "message", "mode", "dtmfSequence", "at")
REQUIRED = ("to", "message")
MAX_BYTES = 5 * 1024 * 1024
MAX_ROWS = 10_000
# What a row may hold, from the model's own column sizes (a longer cell is a row error, not a crash).
MAX_TO = PendingDial._meta.get_field("to_number").max_length
MAX_DTMF = PendingDial._meta.get_field("dtmf_sequence").max_length
MAX_MESSAGE = 4000


class DialListRefused(InvalidRequest):
    """The whole file is refused (header, encoding, size): nothing in it is dialed."""


@dataclass(frozen=True)
class DialRow:
    row: int
    to: str
    message: str
    mode: str = ""
    dtmf_sequence: str = ""
    at: datetime | None = None
    error: str = ""  # empty: the row is good


def dial_rows_read(data: bytes | str, *, now: datetime, default_mode: str) -> list[DialRow]:
    """Every data row of the file, good or not (bad ones carry their error); DialListRefused for the whole file."""
    if isinstance(data, bytes):
        if len(data) > MAX_BYTES:
            raise DialListRefused(f"dial list is over {MAX_BYTES // (1024 * 1024)} MB")
        try:
            text = data.decode("utf-8-sig")  # a spreadsheet's UTF-8 export starts with a byte order mark
        except UnicodeDecodeError as exc:
            raise DialListRefused(f"dial list is not UTF-8 text (byte {exc.start} cannot be read)") from None
    else:
        text = data.removeprefix("\ufeff")
    if "\x00" in text:
        raise DialListRefused("dial list is not a CSV text file (it holds NUL characters)")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None or not any(cell.strip() for cell in header):
            raise DialListRefused(f"dial list is empty: the first row must be a header naming the columns ({', '.join(COLUMNS)})")
        columns = _header_columns(header)
        rows: list[DialRow] = []
        while True:
            number = reader.line_num + 1
            cells = next(reader, None)
            if cells is None:
                break
            if not any(cell.strip() for cell in cells):
                continue  # a blank line
            if len(rows) >= MAX_ROWS:
                raise DialListRefused(f"dial list has more than {MAX_ROWS} rows; split it")
            rows.append(_row(number, columns, cells, now=now, default_mode=default_mode))
    except csv.Error as exc:
        raise DialListRefused(f"dial list is not valid CSV at line {reader.line_num}: {exc}") from None
    if not rows:
        raise DialListRefused("dial list has a header but no rows")
    return rows


def _header_columns(header: list[str]) -> list[str]:
    known = {name.lower(): name for name in COLUMNS}
    columns: list[str] = []
    for position, cell in enumerate(header, 1):
        name = cell.strip()
        if not name:
            raise DialListRefused(f"header column {position} has no name (columns: {', '.join(COLUMNS)})")
        canonical = known.get(name.lower())
        if canonical is None:
            raise DialListRefused(f"unknown column {name!r} in the header (columns: {', '.join(COLUMNS)}); nothing was dialed")
        if canonical in columns:
            raise DialListRefused(f"column {canonical!r} appears twice in the header")
        columns.append(canonical)
    missing = [name for name in REQUIRED if name not in columns]
    if missing:
        raise DialListRefused(f"the header has no {' and no '.join(repr(name) for name in missing)} column")
    return columns


def _row(number: int, columns: list[str], cells: list[str], *, now: datetime, default_mode: str) -> DialRow:
    values = {name: (cells[i].strip() if i < len(cells) else "") for i, name in enumerate(columns)}
    problems: list[str] = []
    extra = cells[len(columns):]
    if any(cell.strip() for cell in extra):
        problems.append(f"{len(cells)} cells but the header names {len(columns)} columns (a cell in no column)")
    at = None
    if values.get("at"):
        try:
            at = due_time_parse(values["at"], now=now, param="at")
        except InvalidRequest as exc:
            problems.append(exc.message)
    mode = values.get("mode", "").lower()
    problems += dial_problems(
        to=values["to"], message=values["message"], mode=mode, dtmf_sequence=values.get("dtmfSequence", ""),
        default_mode=default_mode, message_required=True,
    )
    return DialRow(
        row=number, to=values["to"][:MAX_TO], message=values["message"][:MAX_MESSAGE], mode=mode if mode in CallMode.values else "",
        dtmf_sequence=values.get("dtmfSequence", "")[:MAX_DTMF], at=at, error="; ".join(problems),
    )


def dial_problems(*, to: str, message: str, mode: str, dtmf_sequence: str, default_mode: str, message_required: bool) -> list[str]:
    """What is wrong with one dial's fields, each naming its field (empty when nothing is)."""
    problems: list[str] = []
    if not to:
        problems.append("to: empty")
    elif len(to) > MAX_TO or not E164.fullmatch(to):
        problems.append(f"to: {to[:40]!r}: {E164_MESSAGE}")
    if message_required and not message:
        problems.append("message: empty")
    elif len(message) > MAX_MESSAGE:
        problems.append(f"message: longer than {MAX_MESSAGE} characters")
    if mode and mode not in CallMode.values:
        problems.append(f"mode: {mode[:40]!r} is not notify or conversation")
    if dtmf_sequence:
        if len(dtmf_sequence) > MAX_DTMF or not DTMF_PATTERN.fullmatch(dtmf_sequence):
            problems.append(f"dtmfSequence: {DTMF_MESSAGE}")
        elif (mode or default_mode) != CallMode.CONVERSATION:
            problems.append("dtmfSequence requires conversation mode")
    return problems
