"""Plivo's side of a simulated call: V3-signed form webhooks, the answer XML's <Stream>, its frames, the Call API."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import uuid
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from providers.carriers.plivo.media import parse_extra_headers
from providers.carriers.plivo.webhook import v3_base

from .carrier import CarrierSide, Dial, Refused, RestAnswer, StreamPlan, local_target

if TYPE_CHECKING:
    from .call import SimulatedCall

DIAL_PATH = re.compile(r"^/v1/Account/(?P<account>[^/]+)/Call/$")
CALL_PATH = re.compile(r"^/v1/Account/(?P<account>[^/]+)/(?:Call|Request)/(?P<sid>[^/]+)/(?P<rest>.*)$")
OUTBOUND_EVENTS = {"playAudio": "media", "checkpoint": "mark", "clearAudio": "clear"}


def parse_stream(document: str) -> StreamPlan:
    """The <Stream> a Plivo answer XML hands the call to, with the extraHeaders Plivo echoes at start."""
    try:
        root = ET.fromstring(document)
    except ET.ParseError:
        raise Refused(document[:300]) from None
    stream = root.find("Stream")
    if stream is None or not (stream.text or "").strip():
        raise Refused(document[:300])
    headers = stream.get("extraHeaders") or ""
    encoded = parse_extra_headers(headers).get("token")
    token = bytes.fromhex(encoded).decode() if encoded else None
    return StreamPlan(stream.text.strip(), token, extra={"extra_headers": headers.replace(",", ";")})


def _field(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    return (value[0] if value else "") if isinstance(value, list) else str(value or "")


class PlivoSide(CarrierSide):
    name = "plivo"
    outbound_events = OUTBOUND_EVENTS

    def new_sid(self) -> str:
        return str(uuid.uuid4())

    def new_stream_id(self) -> str:
        return str(uuid.uuid4())

    # --- webhooks -----------------------------------------------------------------------------

    async def post(self, call: SimulatedCall, url: str, params: dict[str, str]) -> str:
        """A V3-signed form webhook to the gateway's public `url`; the XML it answers."""
        full = {"CallUUID": call.sid, "From": call.caller, "To": call.callee,
                "Direction": "outbound" if call.dial is not None else "inbound", **params}
        if call.dial is not None:
            full.update(RequestUUID=call.dial.request_id, ALegUUID=call.sid, ALegRequestUUID=call.dial.request_id)
        nonce = "".join(secrets.choice("0123456789") for _ in range(20))
        base = v3_base("POST", url, {name: [value] for name, value in full.items()})
        digest = hmac.new(self.gateway.auth_token.encode(), f"{base}.{nonce}".encode(), hashlib.sha256).digest()
        signed = base64.b64encode(digest).decode()
        response = await call.http.post(local_target(self.gateway, url), content=urlencode(full), headers={
            "Content-Type": "application/x-www-form-urlencoded", "User-Agent": "PlivoHTTP/1.0",
            "X-Plivo-Signature-V3": signed, "X-Plivo-Signature-Ma-V3": signed, "X-Plivo-Signature-V3-Nonce": nonce,
        })
        if response.status_code >= 400:
            raise RuntimeError(f"webhook answered {response.status_code}: {response.text[:200]}")
        return response.text

    async def begin_inbound(self, call: SimulatedCall) -> StreamPlan:
        return parse_stream(await self.post(call, self.gateway.webhook_url,
                                            {"CallStatus": "in-progress", "Event": "StartApp"}))

    async def begin_outbound(self, call: SimulatedCall) -> StreamPlan:
        answer_url = _field(call.dial.body, "answer_url")
        return parse_stream(await self.post(call, answer_url, {"CallStatus": "in-progress", "Event": "StartApp"}))

    async def end(self, call: SimulatedCall, seconds: int) -> None:
        url = _field(call.dial.body, "hangup_url") if call.dial is not None else ""
        source = "Callee" if call.hung_up_by_gateway.is_set() else "Caller"
        await self.post(call, url or self.gateway.webhook_url, {
            "CallStatus": "completed", "Event": "Hangup", "HangupCause": "NORMAL_CLEARING",
            "HangupCauseName": "Normal Hangup", "HangupSource": source, "Duration": str(seconds),
            "BillDuration": str(seconds),
        })

    # --- the media stream (<Stream bidirectional="true" contentType="audio/x-mulaw;rate=8000">) -

    def opening(self, call: SimulatedCall, plan: StreamPlan) -> list[str]:
        return [json.dumps({
            "event": "start", "sequenceNumber": 0, "streamId": call.stream_sid,
            "extra_headers": plan.extra.get("extra_headers", ""),
            "start": {"callId": call.sid, "streamId": call.stream_sid, "accountId": self.gateway.account_sid,
                      "tracks": ["inbound"], "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000}},
        })]

    def media(self, call: SimulatedCall, sequence: int, timestamp_ms: int, payload_b64: str) -> str:
        return ('{"event":"media","sequenceNumber":%d,"streamId":"%s","media":{"track":"inbound",'
                '"timestamp":"%d","chunk":%d,"payload":"%s"}}'
                % (sequence, call.stream_sid, timestamp_ms, sequence, payload_b64))

    def mark_echo(self, call: SimulatedCall, name: str) -> str:
        return json.dumps({"event": "playedStream", "sequenceNumber": 0, "streamId": call.stream_sid, "name": name})

    def cleared(self, call: SimulatedCall) -> str | None:
        return json.dumps({"event": "clearedAudio", "sequenceNumber": 0, "streamId": call.stream_sid})

    def mark_name(self, message: dict[str, Any]) -> str:
        return message["name"]

    # --- REST (the Call API; paths end with a slash) -----------------------------------------------

    def rest(self, stub, method: str, path: str, body: dict[str, Any]) -> RestAnswer:
        if DIAL_PATH.match(path) and method == "POST":
            for name in ("from", "to", "answer_url"):
                if not body.get(name):
                    return RestAnswer(400, {"error": f"Missing mandatory parameter: {name}"})
            dial = Dial(sid=self.new_sid(), to=str(body["to"]), from_=str(body["from"]), body=body,
                        request_id=str(uuid.uuid4()))
            if not stub.dialled(dial):
                return RestAnswer(400, {"error": "this simulator places no outbound calls"})
            return RestAnswer(201, {"message": "call fired", "request_uuid": dial.request_id, "api_id": str(uuid.uuid4())})
        match = CALL_PATH.match(path)
        if not match:
            return RestAnswer(404, {"error": "not found"})
        sid = stub.aliases.get(match["sid"], match["sid"])  # the request UUID names the call until it is answered
        if not stub.live(sid):
            return RestAnswer(404, {"error": "not found"})
        if method == "DELETE" and not match["rest"]:
            stub.hang_up(sid)
            return RestAnswer(204)
        if method == "GET" and not match["rest"]:
            return RestAnswer(200, {"call_uuid": sid, "call_status": "in-progress", "api_id": str(uuid.uuid4())})
        stub.command(sid, match["rest"].strip("/") or "transfer", body)
        return RestAnswer(202, {"message": "accepted", "api_id": str(uuid.uuid4())})
