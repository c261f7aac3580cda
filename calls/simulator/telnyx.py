"""Telnyx's side of a simulated call: Ed25519-signed JSON events, the answer/dial's stream, its frames, Call Control REST."""
from __future__ import annotations

import base64
import json
import re
import secrets
import time
import uuid
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from providers.carriers.telnyx.media import AUTH_TOKEN_HEADER
from providers.carriers.telnyx.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER

from .carrier import CarrierSide, Dial, Refused, RestAnswer, StreamPlan, local_target

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from .call import SimulatedCall

DIAL_PATH = re.compile(r"^/v2/calls$")
CALL_PATH = re.compile(r"^/v2/calls/(?P<sid>[^/]+)$")
ACTION_PATH = re.compile(r"^/v2/calls/(?P<sid>[^/]+)/actions/(?P<action>[^/]+)$")
CALL_ENDED = {"errors": [{"code": "90018", "title": "Call has already ended",
                          "detail": "This call is no longer active and can't receive commands."}]}


def new_private_key() -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate()


def load_private_key(text: str) -> Ed25519PrivateKey:
    """An Ed25519 private key from PEM, or base64 of its 32-byte seed; ValueError naming the problem."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from core.config.keys import b64decode

    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = load_pem_private_key(text.encode("ascii"), password=None)
        else:
            key = Ed25519PrivateKey.from_private_bytes(b64decode(text))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not an Ed25519 private key (PEM, or base64 of the 32-byte seed): {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("not an Ed25519 private key")
    return key


def private_key_text(key: Ed25519PrivateKey) -> str:
    """Base64 of the 32-byte seed (what load_private_key reads back)."""
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    return base64.b64encode(key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())).decode()


def public_key_text(key: Ed25519PrivateKey) -> str:
    """Base64 of the raw public key: the value for telnyx.publicKey."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def _iso_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class TelnyxSide(CarrierSide):
    name = "telnyx"
    answer_timeout = 15.0  # seconds an inbound call waits for the gateway's answer command

    def new_sid(self) -> str:
        return "v3:" + secrets.token_urlsafe(30)

    def new_stream_id(self) -> str:
        return str(uuid.uuid4())

    # --- webhooks -----------------------------------------------------------------------------

    async def event(self, call: SimulatedCall, event_type: str, **extra: Any) -> None:
        """One signed Call Control event for the call, to its webhook URL."""
        key = self.gateway.telnyx_private_key
        if key is None:
            raise RuntimeError("the simulated Telnyx needs the private key of telnyx.publicKey to sign its webhooks")
        payload = {
            "call_control_id": call.sid, "call_leg_id": call.leg_id, "call_session_id": call.leg_id,
            "connection_id": self.gateway.account_sid or "sim-connection", "client_state": call.client_state,
            "from": call.caller, "to": call.callee, "direction": "outgoing" if call.dial is not None else "incoming",
            **extra,
        }
        envelope = {"data": {"record_type": "event", "event_type": event_type, "id": str(uuid.uuid4()),
                             "occurred_at": _iso_now(), "payload": payload}, "meta": {"attempt": 1}}
        body = json.dumps(envelope, separators=(",", ":")).encode()
        timestamp = str(int(time.time()))
        signed = base64.b64encode(key.sign(timestamp.encode() + b"|" + body)).decode()
        url = (call.dial.body.get("webhook_url") if call.dial is not None else None) or self.gateway.webhook_url
        response = await call.http.post(local_target(self.gateway, url), content=body, headers={
            "Content-Type": "application/json", "User-Agent": "telnyx-webhooks",
            SIGNATURE_HEADER: signed, TIMESTAMP_HEADER: timestamp,
        })
        if response.status_code >= 400:
            raise RuntimeError(f"webhook answered {response.status_code}: {response.text[:200]}")

    async def begin_inbound(self, call: SimulatedCall) -> StreamPlan:
        await self.event(call, "call.initiated", state="parked")
        try:
            action, body = await call.command("answer", "hangup", "reject", timeout=self.answer_timeout)
        except TimeoutError:
            raise Refused("the gateway sent no answer command (is telnyx.baseUrl the simulator's REST API?)") from None
        if action != "answer":
            raise Refused(f"the gateway sent {action} instead of answering")
        call.client_state = body.get("client_state") or call.client_state
        return await self._answered(call, body)

    async def begin_outbound(self, call: SimulatedCall) -> StreamPlan:
        await self.event(call, "call.initiated", state="bridging")
        return await self._answered(call, call.dial.body)

    async def _answered(self, call: SimulatedCall, fields: dict[str, Any]) -> StreamPlan:
        await self.event(call, "call.answered", state="answered")
        url = fields.get("stream_url")
        if not url:
            raise Refused("the call was answered without a stream_url")
        await self.event(call, "streaming.started", stream_id=call.stream_sid, stream_url=url)
        token = fields.get("stream_auth_token")
        return StreamPlan(url, token, headers={AUTH_TOKEN_HEADER: token} if token else {})

    async def end(self, call: SimulatedCall, seconds: int) -> None:
        source = "callee" if call.hung_up_by_gateway.is_set() else "caller"
        await self.event(call, "call.hangup", state="hangup", hangup_cause="normal_clearing", hangup_source=source,
                         sip_hangup_cause="200")

    # --- the media stream (stream_bidirectional_mode rtp, PCMU) ---------------------------------

    def opening(self, call: SimulatedCall, plan: StreamPlan) -> list[str]:
        return [json.dumps({"event": "connected", "version": "1.0.0"}), json.dumps({
            "event": "start", "sequence_number": "1", "stream_id": call.stream_sid,
            "start": {"call_control_id": call.sid, "client_state": call.client_state, "custom_parameters": {},
                      "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}},
        })]

    def media(self, call: SimulatedCall, sequence: int, timestamp_ms: int, payload_b64: str) -> str:
        return ('{"event":"media","sequence_number":"%d","stream_id":"%s","media":{"track":"inbound",'
                '"chunk":"%d","timestamp":"%d","payload":"%s"}}'
                % (sequence, call.stream_sid, sequence - 1, timestamp_ms, payload_b64))

    def mark_echo(self, call: SimulatedCall, name: str) -> str:
        call.sequence += 1  # one count for every message, media or not
        return json.dumps({"event": "mark", "sequence_number": str(call.sequence), "stream_id": call.stream_sid,
                           "mark": {"name": name}})

    def stop(self, call: SimulatedCall) -> str | None:
        return json.dumps({"event": "stop", "sequence_number": "0", "stream_id": call.stream_sid,
                           "stop": {"call_control_id": call.sid}})

    # --- REST (Call Control v2) -----------------------------------------------------------------

    def rest(self, stub, method: str, path: str, body: dict[str, Any]) -> RestAnswer:
        if DIAL_PATH.match(path) and method == "POST":
            for name in ("connection_id", "to", "from"):
                if not body.get(name):
                    return RestAnswer(422, {"errors": [{"code": "10015", "title": "Invalid value for parameter",
                                                         "detail": f"The '{name}' parameter is required."}]})
            dial = Dial(sid=self.new_sid(), to=str(body["to"]), from_=str(body["from"]), body=body)
            if not stub.dialled(dial):
                return RestAnswer(403, {"errors": [{"code": "10010", "title": "this simulator places no outbound calls"}]})
            return RestAnswer(200, {"data": {"call_control_id": dial.sid, "call_leg_id": str(uuid.uuid4()),
                                             "call_session_id": str(uuid.uuid4()), "is_alive": False,
                                             "record_type": "call", "client_state": body.get("client_state")}})
        match = CALL_PATH.match(path)
        if match and method == "GET":
            sid = match["sid"]
            if sid not in stub.status:
                return RestAnswer(404, {"errors": [{"code": "10005", "title": "Resource not found"}]})
            return RestAnswer(200, {"data": {"call_control_id": sid, "is_alive": stub.live(sid), "record_type": "call"}})
        match = ACTION_PATH.match(path)
        if not match or method != "POST":
            return RestAnswer(404, {"errors": [{"code": "10005", "title": "Resource not found"}]})
        sid, action = match["sid"], match["action"]
        if not stub.live(sid):
            return RestAnswer(422, CALL_ENDED)
        if action == "hangup":
            stub.hang_up(sid)
        else:
            stub.command(sid, action, body)
        return RestAnswer(200, {"data": {"result": "ok"}})
