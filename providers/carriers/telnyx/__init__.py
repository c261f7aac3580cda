"""Telnyx Call Control v2: REST commands, Ed25519-signed JSON webhooks (answered with a plain 200), media streams."""
from __future__ import annotations

import logging

from core.config.keys import PublicKeyError, load_public_key
from core.urls import webhook_url

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
from ..recordings import download
from . import webhook
from .media import TelnyxMediaCodec
from .rest import DIAL_TIMEOUT_SECONDS, TelnyxRest

log = logging.getLogger("providers")

DEFAULT_VOICE = "female"
DEFAULT_LANGUAGE = "en-US"
DEFAULT_TRANSCRIPTION_LANGUAGE = "en"
# Both parties, one channel each, as WAV (the format the admin's player and the local recordings share).
RECORD_FIELDS = {"format": "wav", "channels": "dual"}
VOICE_PREFIXES = ("AWS.", "Azure.", "ElevenLabs.", "Telnyx.", "Polly.")
# Our amd mode → answering_machine_detection: voicemail also reports the end of the greeting (the beep).
AMD_MODES = {"detect": "detect", "voicemail": "detect_beep"}


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
    supports_recording = True
    records_in_dial = True
    supports_transfer = True

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
        self.transport = transport
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
        if dial.amd in AMD_MODES:
            # The stream waits for the verdict (start_held_call): a conversation never starts against a machine.
            body["answering_machine_detection"] = AMD_MODES[dial.amd]
            body["answering_machine_detection_config"] = {
                "total_analysis_time_millis": dial.amd_timeout_ms,
                "greeting_total_analysis_time_millis": dial.amd_timeout_ms,
            }
        elif dial.mode == "conversation":
            body.update(self.stream_fields(dial.call_id))
        if dial.record:
            body.update(record="record-from-answer", record_channels="dual", record_format="wav")
        return DialResult(provider_call_id=self.rest.dial(body))

    def start_held_call(self, *, call_id: str, provider_call_id: str, mode: str) -> None:
        fields = self.stream_fields(call_id) if mode == "conversation" else {}
        if fields:
            self.rest.command(provider_call_id, "streaming_start", fields)

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

    def start_recording(self, *, call_id: str, provider_call_id: str) -> str:
        # The recording's id arrives with call.recording.saved.
        self.rest.command(provider_call_id, "record_start", {"command_id": f"voicecall-record-{call_id}", **RECORD_FIELDS})
        return ""

    def fetch_recording(self, url: str) -> tuple[bytes, str]:
        # Telnyx hands out pre-signed storage URLs: no credential of ours goes with the request.
        return download(url, carrier=self.name, credentials_required=False, transport=self.transport)

    def transfer_call(self, *, call_id: str, provider_call_id: str, target: str, transfer_id: str = "") -> str:
        # The new leg's webhooks come to us with a state naming the call and the transfer.
        body = {
            "command_id": f"voicecall-transfer-{transfer_id}",
            "to": target,
            "timeout_secs": DIAL_TIMEOUT_SECONDS,
            "target_leg_client_state": webhook.transfer_client_state(call_id, transfer_id),
            "webhook_url": webhook_url(self.config),
            "webhook_url_method": "POST",
        }
        from_number = self.config.effective_from_number()
        if from_number:  # else Telnyx presents the call's own From
            body["from"] = from_number
        self.rest.command(provider_call_id, "transfer", body)
        return ""

    def get_call_status(self, provider_call_id: str) -> ProviderCallStatus:
        return self.rest.status(provider_call_id)

    def close(self) -> None:
        self.rest.close()
