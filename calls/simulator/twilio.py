"""Twilio's side of a simulated call: signed form webhooks, TwiML's <Connect><Stream>, Media Streams frames, REST."""
from __future__ import annotations

import json
import re
import secrets
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from providers.carriers.twilio.webhook import signature

from .carrier import CarrierSide, Dial, Refused, RestAnswer, StreamPlan, local_target

if TYPE_CHECKING:
    from .call import SimulatedCall

ACCOUNT_PATH = re.compile(r"^/2010-04-01/Accounts/(?P<account>[^/]+)/Calls\.json$")
CALL_PATH = re.compile(r"^/2010-04-01/Accounts/(?P<account>[^/]+)/Calls/(?P<sid>[^/]+)\.json$")


def parse_stream(twiml: str) -> tuple[str | None, str | None]:
    """The <Connect><Stream url> and its token <Parameter>, if the TwiML connects a stream."""
    try:
        root = ET.fromstring(twiml)
    except ET.ParseError:
        return None, None
    stream = root.find("./Connect/Stream")
    if stream is None:
        return None, None
    token = None
    for parameter in stream.findall("Parameter"):
        if parameter.get("name") == "token":
            token = parameter.get("value")
    return stream.get("url"), token


def _first(form: dict[str, Any], name: str) -> str:
    value = form.get(name)
    return (value[0] if value else "") if isinstance(value, list) else str(value or "")


class TwilioSide(CarrierSide):
    name = "twilio"

    def new_sid(self) -> str:
        return "CA" + secrets.token_hex(16)

    def new_stream_id(self) -> str:
        return "MZ" + secrets.token_hex(16)

    # --- webhooks -----------------------------------------------------------------------------

    async def post(self, call: SimulatedCall, url: str, params: dict[str, str]) -> str:
        """A signed form webhook to the gateway's public `url`; the TwiML (or nothing) it answers."""
        gateway = self.gateway
        body = {
            "CallSid": call.sid, "AccountSid": gateway.account_sid, "From": call.caller, "To": call.callee,
            "Caller": call.caller, "Called": call.callee, "ApiVersion": "2010-04-01",
            "Direction": "outbound-api" if call.dial is not None else "inbound", **params,
        }
        sig = signature(gateway.auth_token, url, list(body.items()))
        response = await call.http.post(local_target(gateway, url), content=urlencode(body), headers={
            "Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": sig,
            "I-Twilio-Idempotency-Token": secrets.token_hex(8),
        })
        if response.status_code >= 400:
            raise RuntimeError(f"webhook answered {response.status_code}: {response.text[:200]}")
        return response.text

    async def begin_inbound(self, call: SimulatedCall) -> StreamPlan:
        return self._plan(await call._webhook({"CallStatus": "ringing"}))

    async def begin_outbound(self, call: SimulatedCall) -> StreamPlan:
        status_url = _first(call.dial.body, "StatusCallback")
        if status_url:
            await self.post(call, status_url, {"CallStatus": "ringing"})
        answer_url = _first(call.dial.body, "Url")
        if not answer_url:  # the dial carried its TwiML inline (a notify call): nothing streams
            raise Refused(_first(call.dial.body, "Twiml")[:300] or "the dial has neither Url nor Twiml")
        plan = self._plan(await self.post(call, answer_url, {"CallStatus": "in-progress"}))
        if status_url:
            await self.post(call, status_url, {"CallStatus": "in-progress"})
        return plan

    @staticmethod
    def _plan(twiml: str) -> StreamPlan:
        url, token = parse_stream(twiml)
        if not url:
            raise Refused(twiml[:300])
        return StreamPlan(url, token)

    async def end(self, call: SimulatedCall, seconds: int) -> None:
        params = {"CallStatus": "completed", "CallDuration": str(seconds)}
        if call.dial is None:
            await call._webhook(params)
        elif _first(call.dial.body, "StatusCallback"):
            await self.post(call, _first(call.dial.body, "StatusCallback"), params)

    # --- the media stream ---------------------------------------------------------------------

    def opening(self, call: SimulatedCall, plan: StreamPlan) -> list[str]:
        return [json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}), json.dumps({
            "event": "start", "sequenceNumber": "1", "streamSid": call.stream_sid,
            "start": {"accountSid": self.gateway.account_sid, "streamSid": call.stream_sid, "callSid": call.sid,
                      "tracks": ["inbound"], "customParameters": {"token": plan.token},
                      "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}},
        })]

    def media(self, call: SimulatedCall, sequence: int, timestamp_ms: int, payload_b64: str) -> str:
        return ('{"event":"media","sequenceNumber":"%d","streamSid":"%s","media":{"track":"inbound",'
                '"chunk":"%d","timestamp":"%d","payload":"%s"}}'
                % (sequence, call.stream_sid, sequence - 1, timestamp_ms, payload_b64))

    def mark_echo(self, call: SimulatedCall, name: str) -> str:
        return json.dumps({"event": "mark", "sequenceNumber": "0", "streamSid": call.stream_sid, "mark": {"name": name}})

    def stop(self, call: SimulatedCall) -> str | None:
        return json.dumps({"event": "stop", "sequenceNumber": "0", "streamSid": call.stream_sid,
                           "stop": {"accountSid": self.gateway.account_sid, "callSid": call.sid}})

    # --- REST ---------------------------------------------------------------------------------

    def rest(self, stub, method: str, path: str, body: dict[str, Any]) -> RestAnswer:
        dial = ACCOUNT_PATH.match(path)
        if dial and method == "POST":
            call = Dial(sid=self.new_sid(), to=_first(body, "To"), from_=_first(body, "From"), body=body)
            if not stub.dialled(call):
                return RestAnswer(400, {"code": 21210, "message": "this simulator places no outbound calls", "status": 400})
            return RestAnswer(201, {"sid": call.sid, "status": "queued", "to": call.to, "from": call.from_})
        match = CALL_PATH.match(path)
        if not match:
            return RestAnswer(404, {"code": 20404, "message": "The requested resource was not found", "status": 404})
        sid = match["sid"]
        if sid not in stub.status:
            return RestAnswer(404, {"code": 20404, "message": f"Call {sid} not found", "status": 404})
        if method == "POST" and _first(body, "Status") == "completed":
            stub.hang_up(sid)
        elif method == "POST" and _first(body, "Twiml"):
            stub.command(sid, "twiml", {"Twiml": _first(body, "Twiml")})
        return RestAnswer(200, {"sid": sid, "status": stub.status[sid]})
