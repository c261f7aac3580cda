"""Normalized call events: the frozen dataclasses every carrier parser produces (docs/compatibility.md, Normalized events)."""
from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from .states import END_REASONS


def now_ms() -> int:
    return int(time.time() * 1000)


MAX_KEY_LENGTH = 255  # CallEvent.dedupe_key
# 9000-01-01. Times up to year 9999 could be stored, but an event time is also the start of deadlines
# (the max duration from the answer): near the end of the calendar that sum overflows and a webhook
# failed with a 500 (found by the fuzz job). No carrier's clock is centuries ahead.
LAST_MILLISECOND = 221_845_392_000_000


class EventFormatError(ValueError):
    """An event in a webhook body is malformed; the message names the field."""


@dataclass(frozen=True, kw_only=True)
class NormalizedEvent:
    """Fields common to every event. `call_id` is our id or the carrier's id."""

    type: ClassVar[str] = ""

    call_id: str
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    provider_call_id: str | None = None
    timestamp: int = field(default_factory=now_ms)
    dedupe_key: str | None = None
    turn_token: str | None = None
    direction: str | None = None
    from_number: str | None = None
    to_number: str | None = None

    @property
    def key(self) -> str:
        """The replay key: the explicit dedupe key, else the event id (hashed when over 255 chars)."""
        key = self.dedupe_key or self.id
        if len(key) > MAX_KEY_LENGTH:
            return "sha256:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
        return key

    def to_dict(self) -> dict[str, Any]:
        """The event in the reference's camelCase JSON shape."""
        data = {"type": self.type}
        for name, value in asdict(self).items():
            if value is None:
                continue
            data[_CAMEL.get(name, name)] = value
        return data


@dataclass(frozen=True, kw_only=True)
class CallInitiated(NormalizedEvent):
    type: ClassVar[str] = "call.initiated"


@dataclass(frozen=True, kw_only=True)
class CallRinging(NormalizedEvent):
    type: ClassVar[str] = "call.ringing"


@dataclass(frozen=True, kw_only=True)
class CallAnswered(NormalizedEvent):
    type: ClassVar[str] = "call.answered"


@dataclass(frozen=True, kw_only=True)
class CallActive(NormalizedEvent):
    type: ClassVar[str] = "call.active"


@dataclass(frozen=True, kw_only=True)
class CallSpeaking(NormalizedEvent):
    type: ClassVar[str] = "call.speaking"
    text: str = ""


@dataclass(frozen=True, kw_only=True)
class CallSpeech(NormalizedEvent):
    type: ClassVar[str] = "call.speech"
    transcript: str = ""
    is_final: bool = True
    confidence: float | None = None


@dataclass(frozen=True, kw_only=True)
class CallSilence(NormalizedEvent):
    type: ClassVar[str] = "call.silence"
    duration_ms: int = 0


@dataclass(frozen=True, kw_only=True)
class CallDtmf(NormalizedEvent):
    type: ClassVar[str] = "call.dtmf"
    digits: str = ""


@dataclass(frozen=True, kw_only=True)
class CallEnded(NormalizedEvent):
    type: ClassVar[str] = "call.ended"
    reason: str = "completed"
    detail: str = ""  # the carrier's own words for why (its cause, SIP code): a failed call's error


@dataclass(frozen=True, kw_only=True)
class CallError(NormalizedEvent):
    type: ClassVar[str] = "call.error"
    error: str = "unknown error"
    retryable: bool = False


@dataclass(frozen=True, kw_only=True)
class CallSpoken(NormalizedEvent):
    """The carrier finished playing what the gateway asked it to say."""

    type: ClassVar[str] = "call.spoken"


@dataclass(frozen=True, kw_only=True)
class CallAmd(NormalizedEvent):
    """Answering-machine detection's verdict (human, machine_start, fax, unknown, ...)."""

    type: ClassVar[str] = "call.amd"
    answered_by: str = "unknown"


@dataclass(frozen=True, kw_only=True)
class CallRecording(NormalizedEvent):
    """A carrier recording of the call changed: started, ready (with its URL and length), or failed.

    Applied to calls that already ended too: carriers report a recording once the call is over.
    """

    type: ClassVar[str] = "call.recording"
    recording_id: str = ""  # the carrier's id of the recording
    status: str = "completed"  # in-progress | completed | failed
    url: str | None = None  # where the carrier keeps the file (may need the carrier's credentials)
    duration_seconds: float | None = None
    channels: int | None = None
    error: str | None = None  # why it failed (absent: no audio)


RECORDING_STATUSES = ("in-progress", "completed", "failed")


@dataclass(frozen=True, kw_only=True)
class CallStreamFailed(NormalizedEvent):
    """The carrier could not open (or keep) the call's media stream; `error` is its reason."""

    type: ClassVar[str] = "call.stream_failed"
    error: str = "unknown"


TRANSFER_OUTCOMES = ("connected", "failed")


@dataclass(frozen=True, kw_only=True)
class CallTransfer(NormalizedEvent):
    """How a transfer of the call went (the carrier's word on the new leg): connected or failed.

    Applied even to a call that has ended: a cold transfer ends the gateway's part of the call
    before the target answers. `hangup_caller`: the caller's leg is still up at the carrier after a
    failure (nothing else ends it).
    """

    type: ClassVar[str] = "call.transfer"
    transfer_id: str = ""
    outcome: str = "connected"
    error: str = ""
    hangup_caller: bool = False


EVENT_TYPES: dict[str, type[NormalizedEvent]] = {
    cls.type: cls
    for cls in (
        CallInitiated,
        CallRinging,
        CallAnswered,
        CallActive,
        CallSpeaking,
        CallSpeech,
        CallSilence,
        CallDtmf,
        CallEnded,
        CallError,
        CallSpoken,
        CallAmd,
        CallRecording,
        CallStreamFailed,
        CallTransfer,
    )
}

_CAMEL = {
    "call_id": "callId",
    "provider_call_id": "providerCallId",
    "dedupe_key": "dedupeKey",
    "turn_token": "turnToken",
    "from_number": "from",
    "to_number": "to",
    "is_final": "isFinal",
    "duration_ms": "durationMs",
    "answered_by": "answeredBy",
    "recording_id": "recordingId",
    "duration_seconds": "durationSeconds",
    "transfer_id": "transferId",
    "hangup_caller": "hangupCaller",
}
_SNAKE = {camel: snake for snake, camel in _CAMEL.items()}
_OPTIONAL_STRINGS = ("id", "providerCallId", "dedupeKey", "turnToken", "from", "to")


def event_from_dict(data: Any, *, where: str = "event", default_dedupe_key: str | None = None) -> NormalizedEvent:
    """Build an event from the reference JSON shape, applying its defaults.

    Raises EventFormatError naming the offending field (prefixed with `where`).
    """
    if not isinstance(data, dict):
        raise EventFormatError(f"{where}: must be an object")
    kind = data.get("type")
    if not isinstance(kind, str) or not kind:
        raise EventFormatError(f"{where}.type: required")
    cls = EVENT_TYPES.get(kind)
    if cls is None:
        raise EventFormatError(f"{where}.type: unknown event type {kind!r} (expected one of {', '.join(EVENT_TYPES)})")
    call_id = data.get("callId")
    if not isinstance(call_id, str) or not call_id.strip():
        raise EventFormatError(f"{where}.callId: required")
    allowed = {"type", "callId", "timestamp", "direction", *_OPTIONAL_STRINGS} | {
        _CAMEL.get(f, f) for f in cls.__dataclass_fields__
    }
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise EventFormatError(f"{where}: unknown field(s) for {kind}: {', '.join(unknown)}")

    kwargs: dict[str, Any] = {"call_id": call_id.strip()}
    for name in _OPTIONAL_STRINGS:
        value = data.get(name)
        if value is None:
            continue
        if not isinstance(value, str) or not value:
            raise EventFormatError(f"{where}.{name}: must be a non-empty string")
        kwargs[_SNAKE.get(name, name)] = value
    if "dedupe_key" not in kwargs and "id" not in kwargs and default_dedupe_key:
        kwargs["dedupe_key"] = default_dedupe_key
    if "timestamp" in data:
        timestamp = data["timestamp"]
        if not _is_number(timestamp) or not 0 <= timestamp < LAST_MILLISECOND:
            raise EventFormatError(f"{where}.timestamp: must be milliseconds since the epoch")
        kwargs["timestamp"] = int(timestamp)
    direction = data.get("direction")
    if direction is not None:
        if direction not in ("inbound", "outbound"):
            raise EventFormatError(f'{where}.direction: must be "inbound" or "outbound"')
        kwargs["direction"] = direction
    kwargs.update(_type_fields(cls, data, where))
    return cls(**kwargs)


def _type_fields(cls: type[NormalizedEvent], data: dict[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if cls is CallSpeaking and "text" in data:
        out["text"] = _string(data["text"], f"{where}.text")
    elif cls is CallSpeech:
        if "transcript" in data:
            out["transcript"] = _string(data["transcript"], f"{where}.transcript")
        if "isFinal" in data:
            if not isinstance(data["isFinal"], bool):
                raise EventFormatError(f"{where}.isFinal: must be true or false")
            out["is_final"] = data["isFinal"]
        if data.get("confidence") is not None:
            confidence = data["confidence"]
            if not _is_number(confidence) or not 0 <= confidence <= 1:
                raise EventFormatError(f"{where}.confidence: must be a number between 0 and 1")
            out["confidence"] = float(confidence)
    elif cls is CallSilence and "durationMs" in data:
        duration = data["durationMs"]
        if not _is_number(duration) or duration < 0:
            raise EventFormatError(f"{where}.durationMs: must be a number of milliseconds")
        out["duration_ms"] = int(duration)
    elif cls is CallDtmf and "digits" in data:
        out["digits"] = _string(data["digits"], f"{where}.digits")
    elif cls is CallEnded and "reason" in data:
        reason = data["reason"]
        if not isinstance(reason, str) or reason not in END_REASONS:  # an object is not hashable: `in` would raise
            raise EventFormatError(f"{where}.reason: must be one of {', '.join(sorted(END_REASONS))}")
        out["reason"] = reason
        if "detail" in data:
            out["detail"] = _string(data["detail"], f"{where}.detail")
            if len(out["detail"]) > 200:  # it becomes a failed call's error: a line, as carriers' parsers keep it
                raise EventFormatError(f"{where}.detail: at most 200 characters")
    elif cls is CallAmd and "answeredBy" in data:
        out["answered_by"] = _string(data["answeredBy"], f"{where}.answeredBy") or "unknown"
    elif cls is CallRecording:
        out.update(_recording_fields(data, where))
    elif cls is CallTransfer:
        out["transfer_id"] = _string(data.get("transferId"), f"{where}.transferId")
        if "outcome" in data:
            if data["outcome"] not in TRANSFER_OUTCOMES:
                raise EventFormatError(f"{where}.outcome: must be one of {', '.join(TRANSFER_OUTCOMES)}")
            out["outcome"] = data["outcome"]
        if "error" in data:
            out["error"] = _string(data["error"], f"{where}.error")
        if "hangupCaller" in data:
            if not isinstance(data["hangupCaller"], bool):
                raise EventFormatError(f"{where}.hangupCaller: must be true or false")
            out["hangup_caller"] = data["hangupCaller"]
    elif cls is CallError:
        if "error" in data:
            out["error"] = _string(data["error"], f"{where}.error") or "unknown error"
        if "retryable" in data:
            if not isinstance(data["retryable"], bool):
                raise EventFormatError(f"{where}.retryable: must be true or false")
            out["retryable"] = data["retryable"]
    return out


def _recording_fields(data: dict[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "recordingId" in data:
        out["recording_id"] = _string(data["recordingId"], f"{where}.recordingId")
        if len(out["recording_id"]) > 128:
            raise EventFormatError(f"{where}.recordingId: longer than 128 characters")
    if "status" in data:
        if data["status"] not in RECORDING_STATUSES:
            raise EventFormatError(f"{where}.status: must be one of {', '.join(RECORDING_STATUSES)}")
        out["status"] = data["status"]
    for name in ("url", "error"):
        if data.get(name) is not None:
            out[name] = _string(data[name], f"{where}.{name}")
    if out.get("url") and (not out["url"].lower().startswith(("http://", "https://")) or len(out["url"]) > 1024):
        raise EventFormatError(f"{where}.url: must be an http(s) URL of at most 1024 characters")
    if data.get("durationSeconds") is not None:
        duration = data["durationSeconds"]
        if not _is_number(duration) or not 0 <= duration < 10**7:
            raise EventFormatError(f"{where}.durationSeconds: must be a number of seconds")
        out["duration_seconds"] = float(duration)
    if data.get("channels") is not None:
        if data["channels"] not in (1, 2) or isinstance(data["channels"], bool):
            raise EventFormatError(f"{where}.channels: must be 1 or 2")
        out["channels"] = data["channels"]
    return out


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise EventFormatError(f"{where}: must be a string")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
