"""Named errors of the call domain; every surface (CLI, RPC, tool, admin) maps them to one shape."""
from __future__ import annotations

from core.redact import redact


class VoiceCallError(Exception):
    """Base: the message is the user-facing text (the reference's wording where it has one)."""

    def __init__(self, message: str, *, call_id: str | None = None) -> None:
        # Messages are often built from a carrier's or provider's answer, which may echo credentials.
        message = redact(message)
        super().__init__(message)
        self.message = message
        self.call_id = call_id

    def __str__(self) -> str:
        return self.message


class SetupIncomplete(VoiceCallError):
    """The config is enabled but cannot run; carries the exact list of problems."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("Voice call setup incomplete: " + "; ".join(self.errors))


class VoiceCallDisabled(VoiceCallError):
    def __init__(self) -> None:
        super().__init__("Voice calls are disabled (enabled: false in the call config)")


class InvalidRequest(VoiceCallError):
    """A parameter is missing or malformed."""


class CallNotFound(VoiceCallError):
    def __init__(self, message: str = "Call not found") -> None:
        super().__init__(message)


class CallNotConnected(VoiceCallError):
    def __init__(self) -> None:
        super().__init__("Call not connected")


class CallHasEnded(VoiceCallError):
    def __init__(self) -> None:
        super().__init__("Call has ended")


class CapacityReached(VoiceCallError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"Maximum concurrent calls ({limit}) reached")


class TurnInProgress(VoiceCallError):
    def __init__(self) -> None:
        super().__init__("Already waiting for transcript")


class TranscriptTimeout(VoiceCallError):
    def __init__(self, timeout_ms: int) -> None:
        super().__init__(f"Timed out waiting for transcript after {timeout_ms}ms")


class CarrierError(VoiceCallError):
    """The carrier refused or failed a request."""


class CarrierUnreachable(CarrierError):
    """The request never reached the carrier (refused connection, name lookup, connect timeout): safe to send again."""


class UnsupportedByCarrier(VoiceCallError):
    """The active carrier cannot do what was asked (e.g. outbound DTMF)."""


class CallFailed(VoiceCallError):
    """Dialing failed after the record was written; the record is finalized as failed."""
