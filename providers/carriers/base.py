"""The carrier interface. Subclass CarrierBackend and implement the methods marked "must".

A backend is built once per config by the call runtime, which hands it all it needs from the
call domain: the config, a DocumentStore, and the function that derives a call's media-stream
token (backends never import `calls`). Its REST methods are called from service code (worker
threads or Celery tasks, never the event loop) and raise CarrierError on failure. Webhook
methods never touch the database: `parse_webhook` turns a verified request into normalized
events; once they are applied, `answer_webhook` gets a read-only view of the call and returns
the document the carrier expects (TwiML, Plivo XML, or a plain 200).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, Protocol
from urllib.parse import parse_qsl

from core.errors import UnsupportedByCarrier

if TYPE_CHECKING:
    from core.config import VoiceCallConfig

    from .media import MediaCodec
    from core.events import NormalizedEvent


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

    # Verification and parsing each read the query and the form: parsed once, copies handed out.
    @cached_property
    def _query_pairs(self) -> tuple[tuple[str, str], ...]:
        return tuple(parse_qsl(self.query_string, keep_blank_values=True))

    @cached_property
    def _form_pairs(self) -> tuple[tuple[str, str], ...]:
        return tuple(parse_qsl(self.body.decode("utf-8"), keep_blank_values=True))

    @property
    def query(self) -> dict[str, str]:
        return dict(self._query_pairs)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def form_pairs(self) -> list[tuple[str, str]]:
        """The body as form fields, repeated names kept in order; ValueError if it is not UTF-8."""
        return list(self._form_pairs)

    def form(self) -> dict[str, str]:
        """The body as form fields (the last value of a repeated name wins)."""
        return dict(self.form_pairs())


@dataclass(frozen=True)
class WebhookVerification:
    ok: bool
    reason: str | None = None
    # The replay key: two deliveries of the same signed request share it.
    request_key: str | None = None


@dataclass
class ParsedWebhook:
    """A verified request, read: its events, and what `answer_webhook` needs to know later."""

    events: list[NormalizedEvent] = field(default_factory=list)
    # Our call id or the carrier's: the call the answer is about (looked up after processing).
    call_ref: str | None = None
    # A document stored earlier for this call (e.g. Plivo's speak XML), named in the request.
    document_token: str | None = None
    # Carrier-private facts for building the answer (request kind, flow, turn token, ...).
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CallView:
    """What the answer may depend on, read after the request's events were applied."""

    call_id: str
    provider_call_id: str | None
    direction: str
    state: str
    mode: str
    ended: bool
    rejected: bool = False  # the inbound policy refused this call in this request
    initial_message: str | None = None  # the greeting / notify message not yet spoken
    voice: str | None = None  # the preferred TTS voice of the call's effective config
    # The token of the turn waiting for speech ("" when it has none); None when no turn waits.
    pending_turn_token: str | None = None
    document: str | None = None  # the stored document named by ParsedWebhook.document_token
    stream_token: str | None = None  # authenticates this call's media stream connection
    media_streams_active: int = 0  # media streams open on the gateway (for the hold answer)
    # Answering-machine detection holds the call's start (greeting, stream, listening) until its
    # verdict: the answer only keeps the line (start_held_call later starts what it would have).
    held: bool = False


@dataclass
class WebhookAnswer:
    """The HTTP answer for the carrier."""

    status_code: int = 200
    body: str = "OK"
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    # The answer speaks the call's initial message itself: record it as spoken.
    greeting_delivered: bool = False
    # The answer refuses the call itself, so no separate hang-up request is needed.
    rejects_call: bool = False


@dataclass(frozen=True)
class Prompt:
    """Words to say before listening (carriers whose listen request would cut off a separate speak)."""

    text: str
    voice: str | None = None
    locale: str | None = None


class DocumentStore(Protocol):
    """Where a backend keeps a document to serve on a later webhook of the same call."""

    def put(self, call_id: str, body: str) -> str:
        """Store `body`; returns the token the later request names it by."""
        ...


class EventList(list):
    """The events of one request: fields they all share, and dedupe keys "<key prefix>:<index>"."""

    def __init__(self, key_prefix: str, **common: Any) -> None:
        super().__init__()
        self.key_prefix = key_prefix
        self.common = common

    def add(self, cls: type[NormalizedEvent], **fields: Any) -> None:
        self.append(cls(**self.common, **fields, dedupe_key=f"{self.key_prefix}:{len(self)}"))


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
    amd: str = "off"  # off | detect | voicemail (the call's amd_mode)
    amd_timeout_ms: int = 30000
    record: bool = False  # carrier recording from the answer (the call's record_carrier)


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


END_DETAIL_CHARS = 200
SAYS_NOTHING = {"", "unspecified", "unknown", "0"}  # note values carriers send when they have nothing to say


def end_detail(cause: object, *notes: tuple[str, object]) -> str:
    """What a carrier said of why a call ended, as one printable line: `cause (note value, ...)`.

    It becomes the call's error when the call failed, so it is bounded and cleaned: it is the
    carrier's text, in a webhook anyone may try to forge before the signature is checked.
    """
    def clean(value: object) -> str:
        text = value if isinstance(value, str) else str(value) if type(value) is int else ""
        return " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())

    said = [f"{label} {clean(value)}" for label, value in notes if clean(value).lower() not in SAYS_NOTHING]
    head = clean(cause) or (said.pop(0) if said else "")
    return (head + (f" ({', '.join(said)})" if said else ""))[:END_DETAIL_CHARS]


def normalize_provider_status(raw: object) -> ProviderCallStatus:
    """Map a carrier's call status (case and spaces ignored) to a ProviderCallStatus."""
    status = (raw.strip().lower() if isinstance(raw, str) else "") or "unknown"
    if status in TERMINAL_PROVIDER_STATUSES:
        return ProviderCallStatus(status=TERMINAL_PROVIDER_STATUSES[status], is_terminal=True)
    return ProviderCallStatus(status=status, is_terminal=False, is_unknown=status == "unknown")


class CarrierBackend:
    """Base class for carriers. Capability flags declare optional abilities."""

    name: ClassVar[str] = ""
    supports_dtmf_send: ClassVar[bool] = False
    supports_answer: ClassVar[bool] = False
    supports_media_streams: ClassVar[bool] = False
    # The carrier's media-stream frame format (providers/carriers/media.py), when it streams.
    media_codec: ClassVar[type[MediaCodec] | None] = None
    # Carriers that echo a per-turn token back with speech results (Twilio's Gather action URL).
    uses_turn_tokens: ClassVar[bool] = False
    # Groups of headers; a request must carry every header of at least one group before its
    # body is read (empty: no pre-auth header gate).
    signature_header_groups: ClassVar[tuple[tuple[str, ...], ...]] = ()
    # A listen request replaces what is playing, so the words before it travel with it (Prompt).
    listens_with_prompt: ClassVar[bool] = False
    # The answer to the webhook that answers a call can carry the initial message itself.
    greets_in_answer: ClassVar[bool] = False
    # A notify call's message is sent with the dial request (played by the carrier on answer).
    notify_in_dial: ClassVar[bool] = False
    # The carrier reports when speech it was asked to play has finished (a call.spoken event).
    reports_speech_end: ClassVar[bool] = False
    # Digits to dial after connecting (dtmfSequence) travel with the dial request; otherwise they
    # are sent with send_dtmf once the call is answered.
    dials_with_dtmf: ClassVar[bool] = False
    # Cold transfer (transfer_call); warm transfer needs conferences (warm_transfer).
    supports_transfer: ClassVar[bool] = False
    supports_warm_transfer: ClassVar[bool] = False
    # Carrier-side recording started on a live call (start_recording) and downloaded (fetch_recording).
    supports_recording: ClassVar[bool] = False
    # An outbound call's recording is asked for with its dial (DialRequest.record); otherwise it is
    # started with start_recording once the call is answered.
    records_in_dial: ClassVar[bool] = False
    # In voicemail mode the machine verdict comes at the end of the greeting (or a later event reports
    # it); otherwise the message waits for the beep itself (leave_message with wait_for_beep).
    reports_greeting_end: ClassVar[bool] = True

    def __init__(
        self,
        config: VoiceCallConfig,
        *,
        documents: DocumentStore | None = None,
        stream_token: Callable[[str], str] | None = None,
    ) -> None:
        self.config = config
        self.documents = documents
        # call id -> the token its media stream must present (None: this backend opens no streams).
        self.stream_token = stream_token
        # call id -> a new one-time token for its realtime stream URL; set by the gateway's runtime.
        self.realtime_token: Callable[[str], str] | None = None

    def stream_target(self, call_id: str) -> tuple[str, str] | None:
        """Where a conversation call's audio streams, and the token it presents: the realtime
        bridge (a one-time token in the URL) when realtime is on, else the media stream; None: no stream."""
        from core.urls import media_stream_url, realtime_stream_url, realtime_streams_on

        if realtime_streams_on(self.config):
            if self.realtime_token is None:
                return None
            token = self.realtime_token(call_id)
            url = realtime_stream_url(self.config, token)
            return (url, token) if url else None
        url = media_stream_url(self.config)
        if url is None or self.stream_token is None:
            return None
        return url, self.stream_token(call_id)

    @classmethod
    def has_signature_headers(cls, headers: dict[str, str]) -> bool:
        # A class method: a server checks a request's head before the runtime (this backend) is built.
        if not cls.signature_header_groups:
            return True
        return any(all(headers.get(h) for h in group) for group in cls.signature_header_groups)

    # --- webhooks -------------------------------------------------------------------------

    def verify_webhook(self, request: WebhookRequest) -> WebhookVerification:
        """Must: check the carrier's signature and return the request's replay key."""
        raise NotImplementedError

    def parse_webhook(self, request: WebhookRequest, *, request_key: str) -> ParsedWebhook:
        """Must: turn a verified request into events (WebhookParseError when malformed)."""
        raise NotImplementedError

    def answer_webhook(self, parsed: ParsedWebhook, *, call: CallView | None) -> WebhookAnswer:
        """The answer once the events are applied; `call` is None when no call was found."""
        return WebhookAnswer()

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

    def start_listening(
        self,
        *,
        call_id: str,
        provider_call_id: str,
        turn_token: str | None,
        language: str | None,
        prompt: Prompt | None = None,
    ) -> None:
        """Must: start collecting the caller's speech (final transcripts arrive as call.speech).

        `prompt` is given only to carriers with `listens_with_prompt`: say it, then listen.
        """
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

    def start_held_call(self, *, call_id: str, provider_call_id: str, mode: str) -> None:
        """Answering-machine detection found a person (or nothing): start what the call's answer held back
        (the answer document, the media stream). The greeting itself follows as after any answer."""

    def leave_message(self, *, call_id: str, provider_call_id: str, text: str, voice: str | None,
                      wait_for_beep: bool) -> None:
        """Say `text` to an answering machine (after its beep when `wait_for_beep`); the gateway hangs up after."""
        self.play_tts(call_id=call_id, provider_call_id=provider_call_id, text=text, voice=voice, locale=None)

    def transfer_call(self, *, call_id: str, provider_call_id: str, target: str, transfer_id: str = "") -> str:
        """Cold transfer: connect the caller to `target` (E.164 or SIP URI), leaving the gateway out of the
        call; returns the carrier's reference of the new leg ("" when it gives none). The outcome arrives
        later as a `call.transfer` event naming `transfer_id`."""
        raise UnsupportedByCarrier(f"transfer is not supported by {self.name}")

    def warm_transfer(self, *, call_id: str, provider_call_id: str, target: str, summary: str,
                      transfer_id: str = "") -> str:
        """Warm transfer: call `target`, say `summary` to whoever answers, then join the caller."""
        raise UnsupportedByCarrier(f"warm transfer is not supported by {self.name}")

    def start_recording(self, *, call_id: str, provider_call_id: str) -> str:
        """Start recording a live call at the carrier; returns the carrier's recording id ("" when later)."""
        raise UnsupportedByCarrier(f"recording is not supported by {self.name}")

    def fetch_recording(self, url: str) -> tuple[bytes, str]:
        """Download a recording the carrier made (authenticated): its bytes and content type."""
        raise UnsupportedByCarrier(f"recording is not supported by {self.name}")

    def dial_account(self) -> str:
        """The account outbound dials count against for its calls-per-second limit ("" when there is one only)."""
        return ""

    def close(self) -> None:
        """Release connections (called when the runtime is replaced)."""
