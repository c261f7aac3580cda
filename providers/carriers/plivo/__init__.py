"""Plivo Voice: REST control, V3-signed form webhooks and Plivo XML answers (speech via GetInput or a media stream)."""
from __future__ import annotations

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
from . import webhook, xml
from .media import PlivoMediaCodec
from .rest import PlivoRest, dialable

XML = "text/xml"


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

    def __init__(self, config, *, documents=None, stream_token=None, transport=None) -> None:
        super().__init__(config, documents=documents, stream_token=stream_token)
        settings = config.plivo
        self.auth_token = settings.auth_token.reveal() if settings and settings.auth_token else ""
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
        if flow == "hangup" or call is None:
            return self._xml(xml.response())
        if call.rejected:
            return WebhookAnswer(body=xml.reject(), content_type=XML, rejects_call=True)
        if call.ended:
            return self._xml(xml.hangup())
        if flow in ("xml-speak", "xml-listen") and call.document:
            return self._xml(call.document)
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
        return DialResult(provider_call_id=self.rest.make_call(body))

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

    def get_call_status(self, provider_call_id: str) -> ProviderCallStatus:
        return self.rest.status(provider_call_id)

    def close(self) -> None:
        self.rest.close()
