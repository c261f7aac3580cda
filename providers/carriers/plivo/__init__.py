"""Plivo Voice: REST control, V3-signed form webhooks and Plivo XML answers (speech via GetInput or a media stream)."""
from __future__ import annotations

import logging

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
from ..dtmf import with_w_pauses
from ..recordings import download, origin
from . import webhook, xml
from .media import PlivoMediaCodec
from .rest import BASE_URL, PlivoRest, dialable

log = logging.getLogger("providers")

XML = "text/xml"
# Where Plivo keeps recordings (its media host) besides its API.
MEDIA_ORIGIN = ("https", "media.plivo.com")
AMD_TIME_RANGE_MS = (2000, 10000)  # machine_detection_time


class PlivoCarrier(CarrierBackend):
    name = "plivo"
    supports_dtmf_send = True
    supports_media_streams = True
    media_codec = PlivoMediaCodec
    uses_turn_tokens = True
    signature_header_groups = (webhook.V3_HEADERS, webhook.V2_HEADERS)
    listens_with_prompt = True
    greets_in_answer = True
    dials_with_dtmf = True
    supports_recording = True  # started with the Record API once the call is answered, inbound or outbound
    # Machine detection says only "machine": the message waits for the beep itself (<Wait beep>).
    reports_greeting_end = False
    supports_transfer = True
    supports_warm_transfer = True  # through a conference

    def __init__(self, config, *, documents=None, stream_token=None, transport=None) -> None:
        super().__init__(config, documents=documents, stream_token=stream_token)
        settings = config.plivo
        self.auth_token = settings.auth_token.reveal() if settings and settings.auth_token else ""
        self.auth_id = settings.auth_id if settings else ""
        self.api_origins = {origin(settings.base_url if settings and settings.base_url else BASE_URL), MEDIA_ORIGIN}
        self.transport = transport
        self.rest = PlivoRest(
            auth_id=settings.auth_id if settings else "",
            auth_token=self.auth_token,
            base_url=settings.base_url if settings else None,
            transport=transport,
        )

    def _url(self, call_id: str, flow: str, **params: str | None) -> str:
        return with_query(webhook_url(self.config), provider="plivo", flow=flow, callId=call_id, **params)

    # --- webhooks --------------------------------------------------------------------------

    def verify_webhook(self, request: WebhookRequest) -> WebhookVerification:
        return webhook.verify(self.config, request, self.auth_token)

    def parse_webhook(self, request: WebhookRequest, *, request_key: str) -> ParsedWebhook:
        return webhook.parse(request, request_key=request_key)

    def answer_webhook(self, parsed: ParsedWebhook, *, call: CallView | None) -> WebhookAnswer:
        flow = parsed.facts.get("flow")
        if flow in ("hangup", "recording", "amd") or call is None:
            return self._xml(xml.response())
        if flow == "transfer":
            # The caller is with the target, or the dial reached nobody: then they hear so, and it ends.
            return self._xml(xml.transfer_failed() if parsed.facts.get("transfer_failed") else xml.response())
        if flow in ("xml-transfer", "transfer-brief") and call.document:
            # The transfer's document (the caller's <Dial> or room, the target's summary and room),
            # served although the call has ended for the gateway.
            return self._xml(call.document)
        if call.rejected:
            return WebhookAnswer(body=xml.reject(), content_type=XML, rejects_call=True)
        if call.ended:
            return self._xml(xml.hangup())
        if flow in ("xml-speak", "xml-listen") and call.document:
            return self._xml(call.document)
        if call.held:
            # Machine detection listens: the line is kept quiet until its verdict.
            return self._xml(xml.keepalive(self._url(call.call_id, "keepalive")))
        if parsed.facts.get("answering") and call.mode == "conversation" and realtime_streams_on(self.config):
            target = self.stream_target(call.call_id)
            if target is not None:
                return self._xml(xml.stream(target[0], token=target[1]))
        stream_url = media_stream_url(self.config)
        if stream_url and parsed.facts.get("answering") and call.mode == "conversation" and call.stream_token:
            # The stream speaks the greeting once its transcription is ready, so it is not delivered here.
            return self._xml(xml.stream(stream_url, token=call.stream_token))
        if parsed.facts.get("answering") and call.initial_message:
            if call.mode == "notify":
                document = xml.notify(call.initial_message, language=None, voice=call.voice,
                                      hangup_delay_sec=self.config.outbound.notify_hangup_delay_sec)
            else:
                document = self._listen(call.call_id, call.pending_turn_token or None, language=None,
                                        prompt=Prompt(call.initial_message, call.voice))
            return WebhookAnswer(body=document, content_type=XML, greeting_delivered=True)
        if call.state == "listening":
            return self._xml(self._listen(call.call_id, call.pending_turn_token or None, language=None))
        return self._xml(xml.keepalive(self._url(call.call_id, "keepalive")))

    def _listen(self, call_id: str, turn_token: str | None, *, language: str | None, prompt: Prompt | None = None) -> str:
        return xml.listen(
            self._url(call_id, "getinput", turnToken=turn_token), language=language,
            relisten_url=self._url(call_id, "relisten"),
            prompt=prompt.text if prompt else None, voice=prompt.voice if prompt else None,
            prompt_language=prompt.locale if prompt else None,
        )

    @staticmethod
    def _xml(document: str) -> WebhookAnswer:
        return WebhookAnswer(body=document, content_type=XML)

    # --- call control ----------------------------------------------------------------------

    def initiate_call(self, dial: DialRequest) -> DialResult:
        body = {
            "from": dialable(dial.from_number),
            "to": dialable(dial.to_number),
            "answer_url": with_query(dial.webhook_url, provider="plivo", callId=dial.call_id, flow="answer"),
            "answer_method": "POST",
            "hangup_url": with_query(dial.webhook_url, provider="plivo", callId=dial.call_id, flow="hangup"),
            "hangup_method": "POST",
            "hangup_on_ring": max(1, self.config.ring_timeout_ms // 1000),
        }
        if dial.dtmf_sequence:
            body["send_digits"] = with_w_pauses(dial.dtmf_sequence)
        if dial.amd in ("detect", "voicemail"):
            # Asynchronous: the call is answered (answer_url) while detection listens; the verdict comes to flow=amd.
            body["machine_detection"] = "true"
            body["machine_detection_time"] = min(AMD_TIME_RANGE_MS[1], max(AMD_TIME_RANGE_MS[0], dial.amd_timeout_ms))
            body["machine_detection_url"] = with_query(dial.webhook_url, provider="plivo", callId=dial.call_id, flow="amd")
            body["machine_detection_method"] = "POST"
        return DialResult(provider_call_id=self.rest.make_call(body))

    def start_held_call(self, *, call_id: str, provider_call_id: str, mode: str) -> None:
        # The call fetches its answer again (flow=start), now with the stream or the greeting.
        self.rest.transfer(provider_call_id, self._url(call_id, "start"))

    def leave_message(self, *, call_id: str, provider_call_id: str, text: str, voice: str | None,
                      wait_for_beep: bool) -> None:
        beep_wait = max(1, self.config.amd_timeout_ms // 1000) if wait_for_beep else 0
        document = xml.voicemail(text, language=None, voice=voice, beep_wait_sec=beep_wait,
                                 hangup_delay_sec=self.config.outbound.notify_hangup_delay_sec)
        self._transfer_to_document(call_id, provider_call_id, "xml-speak", document)

    def dial_account(self) -> str:
        return (self.config.plivo.auth_id or "") if self.config.plivo else ""

    def hangup_call(self, *, call_id: str, provider_call_id: str, reason: str) -> None:
        self.rest.hangup(provider_call_id)

    def _transfer_to_document(self, call_id: str, call_uuid: str, flow: str, document: str) -> None:
        if self.documents is None:
            raise RuntimeError("the Plivo backend needs a document store to speak on live calls")
        token = self.documents.put(call_id, document)
        self.rest.transfer(call_uuid, self._url(call_id, flow, doc=token))

    def play_tts(self, *, call_id: str, provider_call_id: str, text: str, voice: str | None, locale: str | None) -> None:
        document = xml.speak(text, language=locale, voice=voice, then=self._url(call_id, "keepalive"))
        self._transfer_to_document(call_id, provider_call_id, "xml-speak", document)

    def start_listening(self, *, call_id: str, provider_call_id: str, turn_token: str | None, language: str | None,
                        prompt: Prompt | None = None) -> None:
        document = self._listen(call_id, turn_token, language=language, prompt=prompt)
        self._transfer_to_document(call_id, provider_call_id, "xml-listen", document)

    def stop_listening(self, *, call_id: str, provider_call_id: str) -> None:
        """Nothing to do: GetInput ends by itself with the caller's answer."""

    def send_dtmf(self, *, call_id: str, provider_call_id: str, digits: str) -> None:
        self.rest.send_dtmf(provider_call_id, with_w_pauses(digits))

    def start_recording(self, *, call_id: str, provider_call_id: str) -> str:
        return self.rest.record(provider_call_id, {
            "time_limit": self.config.max_duration_seconds,  # Plivo stops at 60 seconds unless told
            "file_format": "wav",
            "record_channel_type": "stereo",
            "callback_url": self._url(call_id, "recording"),
            "callback_method": "POST",
        })

    def fetch_recording(self, url: str) -> tuple[bytes, str]:
        return download(url, carrier=self.name, auth=(self.auth_id, self.auth_token),
                        trusted_origins=self.api_origins, transport=self.transport)
    def transfer_call(self, *, call_id: str, provider_call_id: str, target: str, transfer_id: str = "") -> str:
        news = self._url(call_id, "transfer", transferId=transfer_id)
        from_number = self.config.effective_from_number()
        document = xml.dial(target, action=news, callback_url=news, caller_id=dialable(from_number) if from_number else None)
        self._transfer_to_document(call_id, provider_call_id, "xml-transfer", document)
        return ""

    def warm_transfer(self, *, call_id: str, provider_call_id: str, target: str, summary: str,
                      transfer_id: str = "") -> str:
        """The target is called and, once it answers, hears the summary and joins the conference room
        named for the transfer; the caller waits in that room until then."""
        if self.documents is None:
            raise RuntimeError("the Plivo backend needs a document store for transfers")
        room = f"voicecall-transfer-{transfer_id}"
        brief = self.documents.put(call_id, xml.conference_brief(room, summary=summary))
        from_number = self.config.effective_from_number() or ""
        request_uuid = self.rest.make_call({
            "from": dialable(from_number),
            "to": dialable(target),
            "answer_url": self._url(call_id, "transfer-brief", transferId=transfer_id, doc=brief),
            "answer_method": "POST",
            "hangup_url": self._url(call_id, "transfer", transferId=transfer_id, leg="target"),
            "hangup_method": "POST",
            "hangup_on_ring": max(1, self.config.ring_timeout_ms // 1000),
        })
        try:
            self._transfer_to_document(call_id, provider_call_id, "xml-transfer", xml.conference_wait(room))
        except Exception:
            # The caller could not be moved: the target must not be left ringing into an empty room.
            try:
                self.rest.hangup(request_uuid)
            except Exception as exc:  # the first failure is the one to report
                log.warning("plivo: cancelling the warm transfer's call %s failed: %s", request_uuid, exc)
            raise
        return request_uuid

    def get_call_status(self, provider_call_id: str) -> ProviderCallStatus:
        return self.rest.status(provider_call_id)

    def close(self) -> None:
        self.rest.close()
