"""The carrier interface. Subclass CarrierBackend and implement the methods marked "must".

A backend is built once per config by the call runtime. Its REST methods are called from
service code (worker threads or Celery tasks, never the event loop) and raise CarrierError
on failure. Webhook methods get a WebhookRequest and never touch the database: they turn the
carrier's request into normalized events plus the answer the carrier expects.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar
from urllib.parse import parse_qsl

from calls.errors import UnsupportedByCarrier

if TYPE_CHECKING:
    from calls.config import VoiceCallConfig
    from calls.events import NormalizedEvent


@dataclass(frozen=True)
class WebhookRequest:
    """An HTTP request from a carrier, as received (body read, nothing parsed yet)."""

    method: str
    path: str
    query_string: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    remote_addr: str | None = None
    scheme: str = "http"

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(self.query_string, keep_blank_values=True))

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass(frozen=True)
class WebhookVerification:
    ok: bool
    reason: str | None = None
    # The replay key: two deliveries of the same signed request share it.
    request_key: str | None = None


@dataclass
class WebhookResult:
    """What a webhook produced: events to process and the answer to send back."""

    events: list[NormalizedEvent] = field(default_factory=list)
    status_code: int = 200
    body: str = "OK"
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


class WebhookParseError(ValueError):
    """The request is verified but malformed; answered 400 with this message."""


@dataclass(frozen=True)
class DialRequest:
    call_id: str
    from_number: str
    to_number: str
    webhook_url: str
    mode: str
    initial_message: str | None = None
    voice: str | None = None
    dtmf_sequence: str | None = None


@dataclass(frozen=True)
class DialResult:
    provider_call_id: str
    status: str = "initiated"


@dataclass(frozen=True)
class ProviderCallStatus:
    status: str
    is_terminal: bool
    is_unknown: bool = False


# Carrier status → our end reason, for statuses that mean the call is over.
TERMINAL_PROVIDER_STATUSES = {
    "completed": "completed",
    "failed": "failed",
    "busy": "busy",
    "no-answer": "no-answer",
    "canceled": "hangup-bot",
}


def normalize_provider_status(raw: str | None) -> ProviderCallStatus:
    """Map a carrier's call status (case and spaces ignored) to a ProviderCallStatus."""
    status = (raw or "").strip().lower() or "unknown"
    if status in TERMINAL_PROVIDER_STATUSES:
        return ProviderCallStatus(status=TERMINAL_PROVIDER_STATUSES[status], is_terminal=True)
    return ProviderCallStatus(status=status, is_terminal=False, is_unknown=status == "unknown")


class CarrierBackend:
    """Base class for carriers. Capability flags declare optional abilities."""

    name: ClassVar[str] = ""
    supports_dtmf_send: ClassVar[bool] = False
    supports_answer: ClassVar[bool] = False
    supports_media_streams: ClassVar[bool] = False
    # Carriers that echo a per-turn token back with speech results (Twilio's Gather action URL).
    uses_turn_tokens: ClassVar[bool] = False
    # Groups of headers; a request must carry every header of at least one group before its
    # body is read (empty: no pre-auth header gate).
    signature_header_groups: ClassVar[tuple[tuple[str, ...], ...]] = ()

    def __init__(self, config: VoiceCallConfig) -> None:
        self.config = config

    def has_signature_headers(self, headers: dict[str, str]) -> bool:
        if not self.signature_header_groups:
            return True
        return any(all(headers.get(h) for h in group) for group in self.signature_header_groups)

    # --- webhooks -------------------------------------------------------------------------

    def verify_webhook(self, request: WebhookRequest) -> WebhookVerification:
        """Must: check the carrier's signature and return the request's replay key."""
        raise NotImplementedError

    def parse_webhook(self, request: WebhookRequest, *, request_key: str) -> WebhookResult:
        """Must: turn a verified request into events and the carrier's expected answer."""
        raise NotImplementedError

    # --- call control (REST) --------------------------------------------------------------

    def initiate_call(self, dial: DialRequest) -> DialResult:
        """Must: place an outbound call; return the carrier's call id."""
        raise NotImplementedError

    def hangup_call(self, *, call_id: str, provider_call_id: str, reason: str) -> None:
        """Must: end the call. A call the carrier no longer knows counts as ended."""
        raise NotImplementedError

    def play_tts(self, *, call_id: str, provider_call_id: str, text: str, voice: str | None, locale: str | None) -> None:
        """Must: speak `text` on the call and return when the carrier accepted it."""
        raise NotImplementedError

    def start_listening(self, *, call_id: str, provider_call_id: str, turn_token: str | None, language: str | None) -> None:
        """Must: start collecting the caller's speech (final transcripts arrive as call.speech)."""
        raise NotImplementedError

    def stop_listening(self, *, call_id: str, provider_call_id: str) -> None:
        """Must: stop collecting speech (a no-op for carriers that stop by themselves)."""
        raise NotImplementedError

    def get_call_status(self, provider_call_id: str) -> ProviderCallStatus:
        """Must: ask the carrier whether the call is still up (used when restoring calls)."""
        raise NotImplementedError

    # --- optional abilities (declare them with the capability flags) -----------------------

    def answer_call(self, *, call_id: str, provider_call_id: str) -> None:
        raise UnsupportedByCarrier(f"{self.name} does not answer calls by command")

    def send_dtmf(self, *, call_id: str, provider_call_id: str, digits: str) -> None:
        raise UnsupportedByCarrier(f"{self.name} does not support outbound DTMF")

    def close(self) -> None:
        """Release connections (called when the runtime is replaced)."""
