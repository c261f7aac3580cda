"""Telnyx Call Control v2: REST commands, Ed25519-signed JSON webhooks (answered with a plain 200), media streams."""
from __future__ import annotations

import logging

from core.config.keys import PublicKeyError, load_public_key

from ..base import (
    CarrierBackend,
    DialRequest,
    DialResult,
    ParsedWebhook,
    ProviderCallStatus,
    Prompt,
    WebhookRequest,
    WebhookVerification,
)
from ..dtmf import with_w_pauses
from . import webhook
from .media import TelnyxMediaCodec
from .rest import DIAL_TIMEOUT_SECONDS, TelnyxRest

log = logging.getLogger("providers")

DEFAULT_VOICE = "female"
DEFAULT_LANGUAGE = "en-US"
DEFAULT_TRANSCRIPTION_LANGUAGE = "en"
VOICE_PREFIXES = ("AWS.", "Azure.", "ElevenLabs.", "Telnyx.", "Polly.")


def speak_voice(voice: str | None) -> str:
    """A voice Telnyx's speak accepts: its own names pass, Polly.X becomes AWS.Polly.X, else female."""
    if not voice:
        return DEFAULT_VOICE
    if voice.lower() in ("female", "male"):
        return voice.lower()
    if voice.startswith("Polly."):
        return "AWS." + voice
    return voice if voice.startswith(VOICE_PREFIXES) else DEFAULT_VOICE


class TelnyxCarrier(CarrierBackend):
    name = "telnyx"
    supports_answer = True
    supports_dtmf_send = True
    supports_media_streams = True
    media_codec = TelnyxMediaCodec
    reports_speech_end = True
    signature_header_groups = ((webhook.SIGNATURE_HEADER, webhook.TIMESTAMP_HEADER),)

    def __init__(self, config, *, documents=None, stream_token=None, transport=None) -> None:
        super().__init__(config, documents=documents, stream_token=stream_token)
        settings = config.telnyx
        self.connection_id = settings.connection_id if settings else None
        self.public_key = None
        if settings and settings.public_key:
            try:
                self.public_key = load_public_key(settings.public_key.reveal())
            except PublicKeyError as exc:
                log.error("%s: Telnyx webhooks will be refused", exc)
        self.rest = TelnyxRest(
            api_key=settings.api_key.reveal() if settings and settings.api_key else "",
            base_url=settings.base_url if settings else None,
            transport=transport,
        )

    def verify_webhook(self, request: WebhookRequest) -> WebhookVerification:
        return webhook.verify(request, self.public_key)

    def parse_webhook(self, request: WebhookRequest, *, request_key: str) -> ParsedWebhook:
        return webhook.parse(request, request_key=request_key)

    def stream_fields(self, call_id: str) -> dict[str, str]:
        """The dial/answer fields that open the call's media stream (none unless streaming is on and reachable).

        rtp mode with PCMU both ways is what the stream codec speaks: Telnyx would otherwise stream
        the call's own codec and expect MP3 files back.
        """
        target = self.stream_target(call_id)
        if target is None:
            return {}
        url, token = target
        return {
            "stream_url": url,
            "stream_track": "inbound_track",
            "stream_codec": "PCMU",
            "stream_bidirectional_mode": "rtp",
            "stream_bidirectional_codec": "PCMU",
            "stream_auth_token": token,
        }

    def initiate_call(self, dial: DialRequest) -> DialResult:
        body = {
            "connection_id": self.connection_id,
            "to": dial.to_number,
            "from": dial.from_number,
            "webhook_url": dial.webhook_url,
            "webhook_url_method": "POST",
            "client_state": webhook.encode_client_state(dial.call_id),
            "timeout_secs": DIAL_TIMEOUT_SECONDS,
        }
        if dial.mode == "conversation":
            body.update(self.stream_fields(dial.call_id))
        return DialResult(provider_call_id=self.rest.dial(body))

    def answer_call(self, *, call_id: str, provider_call_id: str) -> None:
        # A fixed command id makes a repeated answer harmless; client_state ties later events to our id.
        # Only inbound calls are answered, and those are always conversations: they get the stream.
        self.rest.command(provider_call_id, "answer", {
            "command_id": f"voicecall-answer-{call_id}",
            "client_state": webhook.encode_client_state(call_id),
            **self.stream_fields(call_id),
        })

    def dial_account(self) -> str:
        return self.connection_id or ""

    def hangup_call(self, *, call_id: str, provider_call_id: str, reason: str) -> None:
        self.rest.command(provider_call_id, "hangup", ended_ok=True)

    def play_tts(self, *, call_id: str, provider_call_id: str, text: str, voice: str | None, locale: str | None) -> None:
        self.rest.command(provider_call_id, "speak", {
            "payload": text,
            "voice": speak_voice(voice),
            "language": locale or DEFAULT_LANGUAGE,
        })

    def start_listening(self, *, call_id: str, provider_call_id: str, turn_token: str | None, language: str | None,
                        prompt: Prompt | None = None) -> None:
        self.rest.command(provider_call_id, "transcription_start", {"language": language or DEFAULT_TRANSCRIPTION_LANGUAGE})

    def stop_listening(self, *, call_id: str, provider_call_id: str) -> None:
        self.rest.command(provider_call_id, "transcription_stop", ended_ok=True)

    def send_dtmf(self, *, call_id: str, provider_call_id: str, digits: str) -> None:
        self.rest.command(provider_call_id, "send_dtmf", {"digits": with_w_pauses(digits)})

    def get_call_status(self, provider_call_id: str) -> ProviderCallStatus:
        return self.rest.status(provider_call_id)

    def close(self) -> None:
        self.rest.close()
