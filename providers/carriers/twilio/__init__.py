"""Twilio Programmable Voice: REST control, signed form webhooks and TwiML answers."""
from __future__ import annotations

import logging
from urllib.parse import urlsplit

from core.urls import media_stream_url, realtime_streams_on, webhook_url, with_query

from ..base import (
    CallView,
    CarrierBackend,
    DialRequest,
    DialResult,
    ParsedWebhook,
    ProviderCallStatus,
    Prompt,
    WebhookAnswer,
    WebhookRequest,
    WebhookVerification,
)
from ..dtmf import twilio_digits
from ..recordings import download, origin
from . import twiml, webhook
from .media import TwilioMediaCodec
from .rest import REGION_HOSTS, TwilioRest

log = logging.getLogger("providers")

XML = "application/xml"
# Our amd mode → Twilio's MachineDetection: voicemail waits for the end of the greeting (the beep).
AMD_MODES = {"detect": "Enable", "voicemail": "DetectMessageEnd"}
AMD_TIMEOUT_RANGE = (3, 59)  # MachineDetectionTimeout, seconds


class TwilioCarrier(CarrierBackend):
    name = "twilio"
    supports_dtmf_send = True
    supports_media_streams = True
    media_codec = TwilioMediaCodec
    uses_turn_tokens = True
    signature_header_groups = ((webhook.SIGNATURE_HEADER,),)
    listens_with_prompt = True
    greets_in_answer = True
    notify_in_dial = True
    dials_with_dtmf = True
    supports_recording = True
    records_in_dial = True
    supports_transfer = True
    supports_warm_transfer = True  # through a conference

    def __init__(self, config, *, documents=None, stream_token=None, transport=None) -> None:
        super().__init__(config, documents=documents, stream_token=stream_token)
        settings = config.twilio
        self.auth_token = settings.auth_token.reveal() if settings and settings.auth_token else ""
        self.account_sid = settings.account_sid if settings else ""
        self.api_origins = {origin(host) for host in REGION_HOSTS.values()}
        if settings and settings.base_url:
            self.api_origins.add(origin(settings.base_url))
        self.transport = transport
        self.rest = TwilioRest(
            account_sid=settings.account_sid if settings else "",
            auth_token=self.auth_token,
            region=settings.region if settings else "us1",
            base_url=settings.base_url if settings else None,
            transport=transport,
        )

    # --- URLs Twilio calls back ------------------------------------------------------------

    def _url(self, call_id: str, **params: str | None) -> str:
        return with_query(webhook_url(self.config), callId=call_id, **params)

    def stream_url(self) -> str | None:
        return media_stream_url(self.config)

    def hold_music_url(self) -> str:
        parts = urlsplit(webhook_url(self.config))
        return f"{parts.scheme}://{parts.netloc}/voice/hold-music"

    # --- webhooks --------------------------------------------------------------------------

    def verify_webhook(self, request: WebhookRequest) -> WebhookVerification:
        return webhook.verify(self.config, request, self.auth_token)

    def parse_webhook(self, request: WebhookRequest, *, request_key: str) -> ParsedWebhook:
        return webhook.parse(request, request_key=request_key)

    def answer_webhook(self, parsed: ParsedWebhook, *, call: CallView | None) -> WebhookAnswer:
        kind = parsed.facts.get("kind")
        if kind == "transfer":
            # The caller's call is ours no more: a dial that reached nobody says so and ends it.
            return self._xml(twiml.transfer_failed() if parsed.facts.get("transfer_failed") else twiml.response())
        if kind in ("status", "amd", "recording") or call is None:
            return self._xml(twiml.response())
        if call.rejected:
            return WebhookAnswer(body=twiml.reject(), content_type=XML, rejects_call=True)
        if call.ended:
            return self._xml(twiml.hangup())
        cid = call.call_id
        if call.held:
            # Answering-machine detection listens: the line is kept quiet until its verdict.
            return self._xml(twiml.keepalive(self._url(cid, flow="keepalive")))
        if kind in ("voice", "resume", "start"):
            # A resume reconnects the stream the digits' update ended; the call keeps the place it
            # already had, so only a new inbound call may be put on hold.
            streamed = self._stream_answer(call, may_hold=kind == "voice")
            if streamed is not None:
                return streamed
        if parsed.facts.get("answering") and call.initial_message and call.mode == "conversation":
            document = twiml.listen(
                self._url(cid, turnToken=call.pending_turn_token or None), language=None,
                relisten_url=self._url(cid, flow="relisten"), prompt=call.initial_message, voice=call.voice,
            )
            return WebhookAnswer(body=document, content_type=XML, greeting_delivered=True)
        if parsed.facts.get("answering") and call.initial_message and call.mode == "notify":
            # A notify call whose message did not travel with the dial (answering-machine detection held it).
            document = twiml.notify(call.initial_message, voice=call.voice, language=None,
                                    hangup_delay_sec=self.config.outbound.notify_hangup_delay_sec)
            return WebhookAnswer(body=document, content_type=XML, greeting_delivered=True)
        return self._xml(self._idle(call))

    def _stream_answer(self, call: CallView, *, may_hold: bool) -> WebhookAnswer | None:
        """The call's audio on a stream: the realtime bridge for a conversation when realtime is
        on, else the media stream when streaming is on; None when the call does not stream."""
        if call.mode == "conversation" and realtime_streams_on(self.config):
            # The realtime model speaks the greeting as its first turn, over the stream.
            target = self.stream_target(call.call_id)
            if target is not None:
                return self._xml(twiml.stream(target[0], token=target[1]))
        stream_url = self.stream_url()
        if stream_url and call.stream_token:
            if may_hold and call.direction == "inbound" and call.media_streams_active >= self.config.max_concurrent_calls:
                return self._xml(twiml.hold(self.hold_music_url()))
            return self._xml(twiml.stream(stream_url, token=call.stream_token))
        return None

    def _streams(self) -> bool:
        """Whether calls answered by this carrier get their audio over a stream."""
        return bool(self.stream_url() or realtime_streams_on(self.config))

    def _idle(self, call: CallView) -> str:
        """While nothing is being said: listen if the call is listening, else hold the line."""
        if call.state == "listening":
            return twiml.listen(
                self._url(call.call_id, turnToken=call.pending_turn_token or None), language=None,
                relisten_url=self._url(call.call_id, flow="relisten"),
            )
        return twiml.keepalive(self._url(call.call_id, flow="keepalive"))

    @staticmethod
    def _xml(document: str) -> WebhookAnswer:
        return WebhookAnswer(body=document, content_type=XML)

    # --- call control ----------------------------------------------------------------------

    def initiate_call(self, dial: DialRequest) -> DialResult:
        twiml_document = None
        if dial.mode == "notify" and dial.initial_message and dial.amd == "off":
            # Sent with the dial, so the first words never wait on a webhook round trip.
            twiml_document = twiml.notify(
                dial.initial_message, voice=dial.voice, language=None,
                hangup_delay_sec=self.config.outbound.notify_hangup_delay_sec,
            )
        elif dial.dtmf_sequence:
            twiml_document = twiml.play_digits(twilio_digits(dial.dtmf_sequence), then=with_query(dial.webhook_url, callId=dial.call_id))
        data = self.rest.create_call(
            to=dial.to_number,
            from_=dial.from_number,
            status_callback=with_query(dial.webhook_url, callId=dial.call_id, type="status"),
            url=with_query(dial.webhook_url, callId=dial.call_id),
            twiml=twiml_document,
            recording_callback=with_query(dial.webhook_url, callId=dial.call_id, type="recording") if dial.record else None,
            extra=self._amd_fields(dial),
        )
        status = "queued" if data.get("status") == "queued" else "initiated"
        return DialResult(provider_call_id=data["sid"], status=status)

    @staticmethod
    def _amd_fields(dial: DialRequest) -> list[tuple[str, str]]:
        """Asynchronous answering-machine detection: the call runs its TwiML at once, the verdict comes to ?type=amd."""
        if dial.amd not in AMD_MODES:
            return []
        seconds = min(AMD_TIMEOUT_RANGE[1], max(AMD_TIMEOUT_RANGE[0], round(dial.amd_timeout_ms / 1000)))
        return [
            ("MachineDetection", AMD_MODES[dial.amd]),
            ("MachineDetectionTimeout", str(seconds)),
            ("AsyncAmd", "true"),
            ("AsyncAmdStatusCallback", with_query(dial.webhook_url, callId=dial.call_id, type="amd")),
            ("AsyncAmdStatusCallbackMethod", "POST"),
        ]

    def start_held_call(self, *, call_id: str, provider_call_id: str, mode: str) -> None:
        # The call fetches its answer again (flow=start), now with the stream or the greeting.
        self.rest.update_twiml(provider_call_id, twiml.response(twiml.redirect(self._url(call_id, flow="start"))))

    def leave_message(self, *, call_id: str, provider_call_id: str, text: str, voice: str | None,
                      wait_for_beep: bool) -> None:
        # DetectMessageEnd gave its verdict at the end of the greeting: say it now, then hang up.
        document = twiml.notify(text, voice=voice, language=None, hangup_delay_sec=self.config.outbound.notify_hangup_delay_sec)
        self.rest.update_twiml(provider_call_id, document)

    def dial_account(self) -> str:
        return (self.config.twilio.account_sid or "") if self.config.twilio else ""

    def hangup_call(self, *, call_id: str, provider_call_id: str, reason: str) -> None:
        self.rest.hangup(provider_call_id)

    def play_tts(self, *, call_id: str, provider_call_id: str, text: str, voice: str | None, locale: str | None) -> None:
        document = twiml.speak(
            text, voice=voice, language=locale,
            reply_action=self._url(call_id), keepalive_url=self._url(call_id, flow="keepalive"),
        )
        self.rest.update_twiml(provider_call_id, document)

    def start_listening(self, *, call_id: str, provider_call_id: str, turn_token: str | None, language: str | None,
                        prompt: Prompt | None = None) -> None:
        document = twiml.listen(
            self._url(call_id, turnToken=turn_token), language=language,
            relisten_url=self._url(call_id, flow="relisten"),
            prompt=prompt.text if prompt else None,
            voice=prompt.voice if prompt else None,
            prompt_language=prompt.locale if prompt else None,
        )
        self.rest.update_twiml(provider_call_id, document)

    def stop_listening(self, *, call_id: str, provider_call_id: str) -> None:
        """Nothing to do: a <Gather> ends by itself with the caller's answer."""

    def send_dtmf(self, *, call_id: str, provider_call_id: str, digits: str) -> None:
        # Updating a call's TwiML ends its running <Connect><Stream>: with streaming on, the
        # redirect after the digits asks for the stream again (flow=resume), so the call keeps its
        # audio on a new stream; the old stream's close then falls within the disconnect grace.
        flow = "resume" if self._streams() else "keepalive"
        self.rest.update_twiml(provider_call_id, twiml.play_digits(twilio_digits(digits), then=self._url(call_id, flow=flow)))

    def start_recording(self, *, call_id: str, provider_call_id: str) -> str:
        return self.rest.start_recording(provider_call_id, self._url(call_id, type="recording"))

    def fetch_recording(self, url: str) -> tuple[bytes, str]:
        # The recording resource's URL gives the file in the format its extension names.
        path = url.split("?", 1)[0]
        if not path.rsplit("/", 1)[-1].endswith((".wav", ".mp3")):
            url = path + ".wav" + (url[len(path):])
        return download(url, carrier=self.name, auth=(self.account_sid, self.auth_token),
                        trusted_origins=self.api_origins, transport=self.transport)
    def transfer_call(self, *, call_id: str, provider_call_id: str, target: str, transfer_id: str = "") -> str:
        # Replacing the call's TwiML ends its stream or gather: the gateway is out of the call from here.
        news = self._url(call_id, type="transfer", transferId=transfer_id)
        self.rest.update_twiml(provider_call_id, twiml.dial(target, action=news, status_callback=news))
        return ""

    def warm_transfer(self, *, call_id: str, provider_call_id: str, target: str, summary: str,
                      transfer_id: str = "") -> str:
        """The target is called into a conference room named for the transfer and hears the summary
        before joining; the caller waits in the room with hold music until then."""
        room = f"voicecall-transfer-{transfer_id}"
        created = self.rest.create_call(
            to=target, from_=self.config.effective_from_number() or "",
            status_callback=self._url(call_id, type="transfer", transferId=transfer_id, leg="target"),
            twiml=twiml.conference_brief(room, summary=summary, voice=None),
        )
        try:
            self.rest.update_twiml(provider_call_id, twiml.conference_wait(room, wait_url=self.hold_music_url()))
        except Exception:
            # The caller could not be moved: the target must not be left ringing into an empty room.
            try:
                self.rest.hangup(created["sid"])
            except Exception as exc:  # the first failure is the one to report
                log.warning("twilio: cancelling the warm transfer's call %s failed: %s", created["sid"], exc)
            raise
        return created["sid"]

    def get_call_status(self, provider_call_id: str) -> ProviderCallStatus:
        return self.rest.status(provider_call_id)

    def close(self) -> None:
        self.rest.close()

