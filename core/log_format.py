"""How the console writes log lines: text (the default) or one JSON object per line (LOG_FORMAT=json).

Both name the call a line is about (core.call_context) and are used behind core.redact.RedactFilter,
so what they format is already redacted.
"""
from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

from .call_context import current_call_id

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def call_id_of(record: logging.LogRecord) -> str | None:
    """The call a record is about: `extra={"call_id": ...}` wins over the running work's call."""
    explicit = getattr(record, "call_id", None)
    return str(explicit) if explicit else current_call_id()


class TextFormatter(logging.Formatter):
    """The usual text line; "[call <id>]" after the logger name when the line is about a call."""

    def __init__(self, fmt: str | None = None, datefmt: str | None = None, style: str = "%", **kwargs) -> None:
        super().__init__(fmt or TEXT_FORMAT, datefmt, style, **kwargs)

    def formatMessage(self, record: logging.LogRecord) -> str:
        call_id = call_id_of(record)
        if not call_id:
            return super().formatMessage(record)
        name = record.name
        record.name = f"{name} [call {call_id}]"
        try:
            return super().formatMessage(record)
        finally:
            record.name = name


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, call_id, exception, stack."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        call_id = call_id_of(record)
        if call_id:
            line["call_id"] = call_id
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        # ASCII escapes: a lone surrogate in a message cannot break the console's encoding.
        return json.dumps(line, default=str)
