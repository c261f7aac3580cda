"""Fake Telnyx Call Control v2: REST commands, and Ed25519-signed JSON webhooks for every call event."""
from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from nacl.signing import SigningKey

from .base import Delivery, FakeServer, Recorded, Reply, now_utc, small_wav

__all__ = ["FakeTelnyx", "FakeTelnyxCall"]

E164 = re.compile(r"^\+[1-9]\d{1,14}$")

# action slug -> fields the command must carry
ACTIONS: dict[str, tuple[str, ...]] = {
    "answer": (),
    "hangup": (),
    "reject": ("cause",),
    "speak": ("payload", "voice"),
    "gather_using_speak": ("payload", "voice"),
    "gather": (),
    "gather_stop": (),
    "transcription_start": (),
    "transcription_stop": (),
    "send_dtmf": ("digits",),
    "playback_start": (),
    "playback_stop": (),
    "streaming_start": (),
    "streaming_stop": (),
    "record_start": ("channels", "format"),
    "record_stop": (),
    "transfer": ("to",),
    "bridge": ("call_control_id",),
}
# hangup_cause -> sip_hangup_cause, as usually seen in call.hangup payloads
SIP_CAUSES = {
    "normal_clearing": "200", "originator_cancel": "487", "call_rejected": "603", "user_busy": "486",
    "no_answer": "480", "timeout": "408", "not_found": "404",
}
REJECT_CAUSES = {"CALL_REJECTED": "call_rejected", "USER_BUSY": "user_busy", "NOT_FOUND": "not_found",
                 "TEMPORARILY_UNAVAILABLE": "call_rejected"}


def _iso(moment: datetime | None) -> str | None:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if moment else None


@dataclass
class FakeTelnyxCall:
    """One call leg as the fake sees it; tests read it, the fake mutates it under its lock."""

    call_control_id: str
    call_leg_id: str
    call_session_id: str
    connection_id: str
    from_: str
    to: str
    direction: str  # incoming | outgoing
    state: str  # parked | bridging | answered | hangup
    client_state: str | None = None
    webhook_url: str | None = None
    is_alive: bool = True
    commands: list[dict[str, Any]] = field(default_factory=list)  # {action, body, duplicate}
    spoken: list[dict[str, Any]] = field(default_factory=list)  # speak / gather_using_speak bodies
    dtmf_sent: list[str] = field(default_factory=list)
    transcription: bool = False
    transcription_language: str | None = None
    gather: dict[str, Any] | None = None  # active gather / gather_using_speak command
    streams: list[dict[str, Any]] = field(default_factory=list)
    playbacks: list[dict[str, Any]] = field(default_factory=list)
    hangup_cause: str | None = None
    hangup_source: str | None = None
    dial: dict[str, Any] = field(default_factory=dict)  # the POST /v2/calls body
    start_time: datetime = field(default_factory=now_utc)
    answered_at: datetime | None = None
    end_time: datetime | None = None
    command_ids: set[str] = field(default_factory=set, repr=False)
    record_on_answer: dict[str, Any] | None = None  # the dial's record fields (record-from-answer)
    recordings: list[str] = field(default_factory=list)  # ids of this call's recordings
    transfer_of: str | None = None  # a transfer's new leg: the caller's leg it is bridged to once answered
    transfers: list[str] = field(default_factory=list)  # the new legs transfer commands on this leg created

    @property
    def call_duration(self) -> int:
        if self.answered_at is None:
            return 0
        return int(((self.end_time or now_utc()) - self.answered_at).total_seconds())


class FakeTelnyx(FakeServer):
    """Telnyx's /v2 Call Control API on a loopback port, delivering signed webhooks to the gateway.

    Knobs: timestamp_offset (seconds added to telnyx-timestamp: stale/future signatures),
    tamper (change one byte of the body after signing), webhook_url (the connection's default
    webhook URL, for dials without webhook_url). A recording (record: "record-from-answer" on the
    dial, or record_start) ends with its call: call.recording.saved follows call.hangup, with a
    pre-signed URL on the fake that serves a small real WAV (no API key needed, a wrong signature 403).
    """

    def __init__(
        self,
        api_key: str = "KEYFAKE0123456789_fake",
        signing_key: SigningKey | None = None,
        *,
        webhook_url: str | None = None,
        timestamp_offset: int = 0,
        tamper: bool = False,
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.signing_key = signing_key or SigningKey.generate()
        self.webhook_url = webhook_url
        self.timestamp_offset = timestamp_offset
        self.tamper = tamper
        self.calls: dict[str, FakeTelnyxCall] = {}
        self.recordings: dict[str, dict[str, Any]] = {}  # recording_id -> {id, call, channels, format, started, ended, token}
        self.recording_audio = small_wav()
        self.routes = [
            ("GET", re.compile(r"^/recordings/(?P<recording_id>[^/.]+)\.(?P<ext>wav|mp3)$"), self._recording_media),
            ("POST", re.compile(r"^/v2/calls$"), self._dial),
            ("GET", re.compile(r"^/v2/calls/(?P<call_id>[^/]+)$"), self._retrieve),
            ("POST", re.compile(r"^/v2/calls/(?P<call_id>[^/]+)/actions/(?P<action>[^/]+)$"), self._command),
        ]
        self._effects: dict[str, Callable[[FakeTelnyxCall, dict[str, Any]], Reply | None]] = {
            "answer": self._do_answer,
            "hangup": self._do_hangup,
            "reject": self._do_reject,
            "speak": self._do_speak,
            "gather_using_speak": self._do_gather,
            "gather": self._do_gather,
            "gather_stop": self._do_gather_stop,
            "transcription_start": self._do_transcription_start,
            "transcription_stop": self._do_transcription_stop,
            "send_dtmf": self._do_send_dtmf,
            "playback_start": self._do_playback_start,
            "streaming_start": self._do_streaming_start,
            "streaming_stop": self._do_streaming_stop,
            "record_start": self._do_record_start,
            "transfer": self._do_transfer,
        }

    # ------------------------------------------------------------------ public helpers

    @property
    def api_url(self) -> str:
        """What the gateway uses as Telnyx's API base: http://127.0.0.1:PORT/v2."""
        return self.base_url + "/v2"

    @property
    def public_key_b64(self) -> str:
        """The key the gateway is configured with: base64 of the 32 raw Ed25519 public key bytes."""
        return base64.b64encode(bytes(self.signing_key.verify_key)).decode()

    @property
    def public_key_pem(self) -> str:
        raw = bytes(self.signing_key.verify_key)
        key = Ed25519PublicKey.from_public_bytes(raw)
        return key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()

    @staticmethod
    def error_body(code: str, title: str, detail: str | None = None, pointer: str | None = None) -> dict[str, Any]:
        """Telnyx's JSON:API error shape."""
        error: dict[str, Any] = {"code": code, "title": title, "detail": detail or title}
        if pointer:
            error["source"] = {"pointer": pointer}
        return {"errors": [error]}

    def call(self, call_control_id: str) -> FakeTelnyxCall:
        with self.lock:
            return self.calls[call_control_id]

    @property
    def last_call(self) -> FakeTelnyxCall:
        with self.lock:
            return list(self.calls.values())[-1]

    def sign(self, body: bytes) -> tuple[dict[str, str], bytes]:
        """Signature headers for a body, and the body to send (changed afterwards when tamper is on)."""
        timestamp = str(int(time.time()) + self.timestamp_offset)
        signature = self.signing_key.sign(timestamp.encode() + b"|" + body).signature
        headers = {"telnyx-signature-ed25519": base64.b64encode(signature).decode(), "telnyx-timestamp": timestamp}
        return headers, _tampered(body) if self.tamper else body

    # ------------------------------------------------------------------ REST

    def authorized(self, record: Recorded) -> bool:
        if record.method == "GET" and record.path.startswith("/recordings/"):
            return True  # pre-signed: the URL's own signature is checked instead
        return record.headers.get("authorization", "") == f"Bearer {self.api_key}"

    def unauthorized(self) -> Reply:
        return Reply(401, self.error_body("10009", "Authentication failed", "The API key is missing or invalid."))

    def not_found(self) -> Reply:
        return Reply(404, self.error_body("10005", "Resource not found", "The requested resource does not exist."))

    def method_not_allowed(self) -> Reply:
        return Reply(405, self.error_body("10006", "Method not allowed"))

    def _invalid(self, field_name: str, detail: str) -> Reply:
        return Reply(422, self.error_body("10015", "Invalid value for parameter", detail, f"/{field_name}"))

    def _dial(self, record: Recorded) -> Reply:
        body = record.json if isinstance(record.json, dict) else {}
        for name in ("connection_id", "to", "from"):
            if not body.get(name):
                return self._invalid(name, f"The '{name}' parameter is required.")
        error = self._check_client_state(body)
        if error:
            return error
        call = FakeTelnyxCall(
            call_control_id="v3:" + secrets.token_urlsafe(30),
            call_leg_id=str(uuid.uuid4()),
            call_session_id=str(uuid.uuid4()),
            connection_id=str(body["connection_id"]),
            from_=body["from"],
            to=body["to"],
            direction="outgoing",
            state="bridging",
            client_state=body.get("client_state"),
            webhook_url=body.get("webhook_url") or self.webhook_url,
            dial=body,
        )
        if body.get("command_id"):
            call.command_ids.add(body["command_id"])
        if body.get("record") == "record-from-answer":
            call.record_on_answer = {"channels": body.get("record_channels", "single"), "format": body.get("record_format", "mp3")}
        self.calls[call.call_control_id] = call
        self._emit(call, "call.initiated")
        data = {
            "call_control_id": call.call_control_id,
            "call_leg_id": call.call_leg_id,
            "call_session_id": call.call_session_id,
            "is_alive": False,  # dialling is asynchronous: the dial answer always says false
            "record_type": "call",
            "client_state": call.client_state,
            "call_duration": None,
            "start_time": None,
            "end_time": None,
            "recording_id": None,
        }
        return Reply(200, {"data": data})

    def _retrieve(self, record: Recorded, call_id: str) -> Reply:
        call = self.calls.get(call_id)
        if call is None:
            return self.not_found()
        data = {
            "call_control_id": call.call_control_id,
            "call_leg_id": call.call_leg_id,
            "call_session_id": call.call_session_id,
            "client_state": call.client_state,
            "is_alive": call.is_alive,
            "call_duration": call.call_duration,
            "record_type": "call",
            "start_time": _iso(call.start_time),
            "end_time": _iso(call.end_time),
        }
        return Reply(200, {"data": data})

    def _command(self, record: Recorded, call_id: str, action: str) -> Reply:
        if action not in ACTIONS:
            return self.not_found()
        body = record.json if isinstance(record.json, dict) else {}
        call = self.calls.get(call_id)
        if call is None or not call.is_alive:
            return Reply(422, self.error_body("90018", "Call has already ended",
                                              "This call is no longer active and can't receive commands."))
        for name in ACTIONS[action]:
            if body.get(name) in (None, ""):
                return self._invalid(name, f"The '{name}' parameter is required.")
        error = self._check_client_state(body)
        if error:
            return error
        command_id = body.get("command_id")
        duplicate = bool(command_id) and command_id in call.command_ids
        call.commands.append({"action": action, "body": body, "duplicate": duplicate})
        if duplicate:
            return Reply(200, {"data": {"result": "ok"}})  # same command_id on the same call: ignored
        if command_id:
            call.command_ids.add(command_id)
        if body.get("client_state"):
            call.client_state = body["client_state"]  # later webhooks echo the newest client_state
        effect = self._effects.get(action)
        reply = effect(call, body) if effect else None
        return reply or Reply(200, {"data": {"result": "ok"}})

    def _check_client_state(self, body: dict[str, Any]) -> Reply | None:
        value = body.get("client_state")
        if value is None:
            return None
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError, TypeError):
            return self._invalid("client_state", "client_state must be a valid Base64 string.")
        return None

    # ---- command effects (REST thread, lock held); events go out after the answer

    def _do_answer(self, call: FakeTelnyxCall, body: dict[str, Any]) -> Reply | None:
        if call.direction != "incoming" or call.state != "parked":
            return None  # already answered: nothing happens twice
        if body.get("webhook_url"):
            call.webhook_url = body["webhook_url"]
        self._answered(call)
        if body.get("transcription"):
            call.transcription = True
        if body.get("stream_url"):
            self._start_stream(call, body)
        return None

    def _do_hangup(self, call: FakeTelnyxCall, body: dict[str, Any]) -> Reply | None:
        # hanging up a call nobody answered cancels it
        cause = "normal_clearing" if call.state == "answered" else "originator_cancel"
        self._hang_up(call, cause, "callee")
        return None

    def _do_reject(self, call: FakeTelnyxCall, body: dict[str, Any]) -> Reply | None:
        if call.state != "parked":
            detail = "Only a parked incoming call can be rejected."
            return Reply(422, self.error_body("90015", "Invalid call state", detail))
        self._hang_up(call, REJECT_CAUSES.get(str(body["cause"]).upper(), "call_rejected"), "callee")
        return None

    def _do_speak(self, call: FakeTelnyxCall, body: dict[str, Any]) -> Reply | None:
        call.spoken.append(body)
        self._emit(call, "call.speak.started")
        self._emit(call, "call.speak.ended", status="completed")
        return None

    def _do_gather(self, call: FakeTelnyxCall, body: dict[str, Any]) -> Reply | None:
        if "payload" in body:
            call.spoken.append(body)
        call.gather = body
        return None

    def _do_gather_stop(self, call: FakeTelnyxCall, body: dict[str, Any]) -> Reply | None:
        if call.gather is not None:
            call.gather = None
            self._emit(call, "call.gather.ended", digits="", status="cancelled")
        return None

    def _do_transcription_start(self, call: FakeTelnyxCall, body: dict[str, Any]) -> Reply | None:
        config = body.get("transcription_engine_config") or {}
        call.transcription = True
        call.transcription_language = body.get("language") or config.get("language")
        return None

    def _do_transcription_stop(self, call: FakeTelnyxCall, body: dict[str, Any]) -> Reply | None:
        call.transcription = False
        return None

    def _do_send_dtmf(self, call: FakeTelnyxCall, body: dict[str, Any]) -> Reply | None:
        call.dtmf_sent.append(str(body["digits"]))
        return None

    def _do_playback_start(self, call: FakeTelnyxCall, body: dict[str, Any]) -> Reply | None:
        if not any(body.get(k) for k in ("audio_url", "media_name", "playback_content")):
            return self._invalid("audio_url", "One of audio_url, media_name or playback_content is required.")
        call.playbacks.append(body)
        media = {
            "media_url": body.get("audio_url"),
            "media_name": body.get("media_name"),
            "overlay": bool(body.get("overlay")),
        }
        self._emit(call, "call.playback.started", **media)
        self._emit(call, "call.playback.ended", status="completed", **media)
        return None

    def _do_streaming_start(self, call: FakeTelnyxCall, body: dict[str, Any]) -> Reply | None:
        self._start_stream(call, body)
        return None

    def _do_streaming_stop(self, call: FakeTelnyxCall, body: dict[str, Any]) -> Reply | None:
        for stream in call.streams:
            if not stream.get("stopped") and body.get("stream_id") in (None, stream["stream_id"]):
                stream["stopped"] = True
                self._emit(
                    call, "streaming.stopped", stream_id=stream["stream_id"], stream_url=stream.get("stream_url")
                )
        return None

    def _do_record_start(self, call: FakeTelnyxCall, body: dict[str, Any]) -> Reply | None:
        if call.state != "answered":
            return Reply(422, self.error_body("90034", "Call not answered", "The call must be answered to record."))
        self._begin_recording(call, {"channels": body["channels"], "format": body["format"]})
        return None

    def _begin_recording(self, call: FakeTelnyxCall, settings: dict[str, Any]) -> None:
        recording = {"id": str(uuid.uuid4()), "call": call.call_control_id, "started": now_utc(), "ended": None,
                     "token": secrets.token_hex(16), **settings}
        self.recordings[recording["id"]] = recording
        call.recordings.append(recording["id"])

    def recording_url(self, recording_id: str, ext: str = "wav") -> str:
        recording = self.recordings[recording_id]
        return f"{self.base_url}/recordings/{recording_id}.{ext}?X-Amz-Signature={recording['token']}"

    def _recording_media(self, record: Recorded, recording_id: str, ext: str) -> Reply:
        recording = self.recordings.get(recording_id)
        if recording is None or recording["ended"] is None:
            return self.not_found()
        if record.query.get("X-Amz-Signature", [""])[0] != recording["token"] or "authorization" in record.headers:
            return Reply(403, b"<Error><Code>AccessDenied</Code></Error>", "application/xml")
        if ext == "mp3":
            return Reply(200, b"ID3" + bytes(64), "audio/mpeg")
        return Reply(200, self.recording_audio, "audio/wav")

    def _finish_recordings(self, call: FakeTelnyxCall) -> None:
        for recording_id in call.recordings:
            recording = self.recordings[recording_id]
            if recording["ended"] is not None:
                continue
            recording["ended"] = now_utc()
            self._emit(
                call, "call.recording.saved", recording_id=recording_id, channels=recording["channels"],
                recording_started_at=_iso(recording["started"]), recording_ended_at=_iso(recording["ended"]),
                recording_urls={"wav": self.recording_url(recording_id), "mp3": self.recording_url(recording_id, "mp3")},
                public_recording_urls={}, start_time=_iso(call.start_time), end_time=_iso(call.end_time),
            )

    def _do_transfer(self, call: FakeTelnyxCall, body: dict[str, Any]) -> Reply | None:
        """A new outgoing leg to `to`, bridged to this one once answered; this leg stays up if it fails.

        The new leg's webhooks carry target_leg_client_state and go to the command's webhook_url.
        """
        to = str(body["to"])
        if not (E164.match(to) or to.startswith(("sip:", "sips:"))):
            return self._invalid("to", "The 'to' parameter must be an E.164 number or a SIP URI.")
        state = body.get("target_leg_client_state")
        if state is not None:
            try:
                base64.b64decode(state, validate=True)
            except (binascii.Error, ValueError, TypeError):
                return self._invalid("target_leg_client_state", "target_leg_client_state must be a valid Base64 string.")
        leg = FakeTelnyxCall(
            call_control_id="v3:" + secrets.token_urlsafe(30), call_leg_id=str(uuid.uuid4()),
            call_session_id=call.call_session_id, connection_id=call.connection_id,
            from_=body.get("from") or call.to, to=to, direction="outgoing", state="bridging",
            client_state=state, webhook_url=body.get("webhook_url") or call.webhook_url, dial=body,
            transfer_of=call.call_control_id,
        )
        self.calls[leg.call_control_id] = leg
        call.transfers.append(leg.call_control_id)
        self._emit(leg, "call.initiated")
        return None

    def _start_stream(self, call: FakeTelnyxCall, body: dict[str, Any]) -> None:
        stream = {**body, "stream_id": str(uuid.uuid4())}
        call.streams.append(stream)
        self._emit(call, "streaming.started", stream_id=stream["stream_id"], stream_url=body.get("stream_url"))

    def _answered(self, call: FakeTelnyxCall) -> None:
        call.state = "answered"
        call.answered_at = now_utc()
        self._emit(call, "call.answered", start_time=_iso(call.start_time))
        if call.record_on_answer is not None:
            self._begin_recording(call, call.record_on_answer)
        caller = self.calls.get(call.transfer_of) if call.transfer_of else None
        if caller is not None and caller.is_alive:
            # the transfer's leg answered: the two legs are bridged, and each says so
            self._emit(call, "call.bridged")
            self._emit(caller, "call.bridged")

    def _hang_up(self, call: FakeTelnyxCall, cause: str, source: str) -> None:
        call.state, call.is_alive, call.end_time = "hangup", False, now_utc()
        call.hangup_cause, call.hangup_source = cause, source
        call.gather, call.transcription = None, False
        self._emit(
            call, "call.hangup", hangup_cause=cause, hangup_source=source,
            sip_hangup_cause=SIP_CAUSES.get(cause, "unspecified"), start_time=_iso(call.start_time),
        )
        self._finish_recordings(call)

    # ------------------------------------------------------------------ webhooks

    def _emit(self, call: FakeTelnyxCall, event_type: str, **extra: Any) -> None:
        """Build the event now (payload is a snapshot of the call) and deliver it on the worker."""
        envelope = self._envelope(call, event_type, extra)
        url = call.webhook_url
        self.schedule(lambda: self._deliver_event(url, envelope))

    def _envelope(self, call: FakeTelnyxCall, event_type: str, extra: dict[str, Any]) -> dict[str, Any]:
        payload = {
            "call_control_id": call.call_control_id,
            "call_leg_id": call.call_leg_id,
            "call_session_id": call.call_session_id,
            "connection_id": call.connection_id,
            "client_state": call.client_state,
            "from": call.from_,
            "to": call.to,
            "direction": call.direction,
            "state": call.state,
            **extra,
        }
        return {
            "data": {
                "record_type": "event",
                "event_type": event_type,
                "id": str(uuid.uuid4()),
                "occurred_at": _iso(now_utc()),
                "payload": payload,
            },
            "meta": {"attempt": 1, "delivered_to": call.webhook_url},
        }

    def _deliver_event(self, url: str | None, envelope: dict[str, Any]) -> Delivery:
        body = json.dumps(envelope, separators=(",", ":")).encode()
        headers, sent = self.sign(body)
        headers = {"Content-Type": "application/json", "User-Agent": "telnyx-webhooks", **headers}
        if not url:
            # no webhook URL on the call nor on the fake's "connection": record the lost event
            delivery = Delivery("", "POST", headers, sent, 0, "no webhook_url for this call", "")
            with self.lock:
                self.deliveries.append(delivery)
            return delivery
        return self.deliver(url, "POST", headers, sent)

    # ------------------------------------------------------------------ caller actions (test-facing)

    def ring_inbound(
        self, from_: str, to: str, webhook_url: str | None = None, *,
        connection_id: str = "fake-connection", client_state: str | None = None, wait: bool = True,
    ) -> FakeTelnyxCall:
        """A new incoming call: call.initiated (state parked); it waits for answer or reject."""
        with self.lock:
            call = FakeTelnyxCall(
                call_control_id="v3:" + secrets.token_urlsafe(30), call_leg_id=str(uuid.uuid4()),
                call_session_id=str(uuid.uuid4()), connection_id=connection_id, from_=from_, to=to,
                direction="incoming", state="parked", client_state=client_state,
                webhook_url=webhook_url or self.webhook_url,
            )
            self.calls[call.call_control_id] = call
        self._act(lambda: self._emit(call, "call.initiated"), wait)
        return call

    def answer(self, call_id: str, wait: bool = True, answered_by: str | None = None,
               greeting: str | None = None) -> FakeTelnyxCall:
        """The callee picks up an outgoing call: call.answered.

        `answered_by` (human, machine, not_sure): a call dialed with answering_machine_detection then gets
        call.machine.detection.ended with that result; `greeting` (beep_detected, ended, not_sure): a call
        dialed with detect_beep then gets call.machine.greeting.ended, as Telnyx sends them.
        """
        call = self._live(call_id)
        if call.direction != "outgoing" or call.state != "bridging":
            raise RuntimeError(f"call {call_id} is not an outgoing call waiting to be answered")

        def run() -> None:
            self._answered(call)
            detection = call.dial.get("answering_machine_detection")
            if answered_by is not None and detection in ("detect", "detect_beep", "premium"):
                self._emit(call, "call.machine.detection.ended", result=answered_by)
                if greeting is not None and detection == "detect_beep" and answered_by == "machine":
                    self._emit(call, "call.machine.greeting.ended", result=greeting)

        self._act(run, wait)
        return call

    def say(
        self, call_id: str, text: str, is_final: bool = True, confidence: float = 0.93, wait: bool = True
    ) -> FakeTelnyxCall:
        """The caller speaks: call.transcription (only while transcription is on)."""
        call = self._live(call_id)
        if not call.transcription:
            raise RuntimeError(f"call {call_id} has no transcription running (send transcription_start first)")
        data = {"transcript": text, "confidence": confidence, "is_final": is_final, "transcription_track": "inbound"}
        self._act(lambda: self._emit(call, "call.transcription", transcription_data=data), wait)
        return call

    def press(self, call_id: str, digits: str, wait: bool = True) -> FakeTelnyxCall:
        """The caller presses keys: one call.dtmf.received per key, then call.gather.ended if gathering."""
        call = self._live(call_id)

        def run() -> None:
            for digit in digits:
                self._emit(call, "call.dtmf.received", digit=digit)
            if call.gather is not None:
                terminator = call.gather.get("terminating_digit", "#")
                collected = digits[: -len(terminator)] if terminator and digits.endswith(terminator) else digits
                call.gather = None
                self._emit(call, "call.gather.ended", digits=collected, status="valid")

        self._act(run, wait)
        return call

    def gather_timeout(self, call_id: str, wait: bool = True) -> FakeTelnyxCall:
        """The active gather got no input: call.gather.ended status timeout."""
        call = self._live(call_id)
        if call.gather is None:
            raise RuntimeError(f"call {call_id} has no gather running")

        def run() -> None:
            call.gather = None
            self._emit(call, "call.gather.ended", digits="", status="timeout")

        self._act(run, wait)
        return call

    def hang_up(self, call_id: str, wait: bool = True) -> FakeTelnyxCall:
        """The caller hangs up: call.hangup normal_clearing (originator_cancel before answer), source caller."""
        call = self._live(call_id)
        cause = "normal_clearing" if call.state == "answered" else "originator_cancel"
        self._act(lambda: self._hang_up(call, cause, "caller"), wait)
        return call

    def no_answer(self, call_id: str, cause: str = "no_answer", wait: bool = True) -> FakeTelnyxCall:
        """An outgoing call rings out (pass cause="timeout" for what timeout_secs produces)."""
        return self._unanswered(call_id, cause, wait)

    def busy(self, call_id: str, wait: bool = True) -> FakeTelnyxCall:
        return self._unanswered(call_id, "user_busy", wait)

    def send_event(self, call_id: str, event_type: str, wait: bool = True, **payload: Any) -> FakeTelnyxCall:
        """Deliver any event (including ones the gateway does not know) for this call."""
        call = self.call(call_id)
        self._act(lambda: self._emit(call, event_type, **payload), wait)
        return call

    def redeliver(self, delivery_index: int, wait: bool = True) -> Delivery:
        """Send a delivered event again, as Telnyx's retry does: same event, fresh signature, attempt+1."""
        with self.lock:
            original = self.deliveries[delivery_index]
        envelope = json.loads(original.body)
        envelope["meta"]["attempt"] = envelope["meta"].get("attempt", 1) + 1
        return self.submit(lambda: self._deliver_event(original.url, envelope), wait)

    def _live(self, call_id: str) -> FakeTelnyxCall:
        call = self.call(call_id)
        if not call.is_alive:
            raise RuntimeError(f"call {call_id} has ended")
        return call

    def _unanswered(self, call_id: str, cause: str, wait: bool) -> FakeTelnyxCall:
        call = self._live(call_id)
        if call.state == "answered":
            raise RuntimeError(f"call {call_id} was already answered")
        self._act(lambda: self._hang_up(call, cause, "callee"), wait)
        return call

    def _act(self, fn: Callable[[], None], wait: bool) -> None:
        # state changes happen under the lock on the worker; the events they emit follow in order
        def run() -> None:
            with self.lock:
                fn()

        self.submit(run, wait)


def _tampered(body: bytes) -> bytes:
    """Change one hex digit of the event id: still valid JSON, but no longer what was signed."""
    marker = b'"id":"'
    index = body.find(marker)
    index = index + len(marker) if index >= 0 else len(body) // 2
    changed = b"e" if body[index:index + 1] == b"f" else b"f"
    return body[:index] + changed + body[index + 1:]
