"""Fake Plivo Voice: REST Call API (trailing slashes), V3-signed webhooks and a Plivo XML interpreter."""
from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable
from urllib.parse import urlencode, urlsplit, urlunsplit

from plivo.utils.signature_v3 import construct_get_url, construct_post_url, get_signature_v3

from .base import (
    Delivery, FakeServer, Recorded, Reply, add_query, basic_credentials, now_utc, parse_document, resolve_url,
    small_wav,
)

__all__ = ["FakePlivo", "FakePlivoCall"]

LIVE = ("ringing", "in-progress")
FINAL = ("completed", "busy", "no-answer", "cancel", "failed", "timeout")
MAX_REDIRECTS = 25
# outcome -> (HangupCause, HangupCauseCode, HangupCauseName). Codes 1000/4000/4010 are from Plivo's
# hangup-causes page; the busy/no-answer/error codes are best guesses (the page was not fully read).
OUTCOMES = {
    "normal": ("NORMAL_CLEARING", "4000", "Normal Hangup"),
    "end_of_xml": ("NORMAL_CLEARING", "4010", "End Of XML Instructions"),
    "canceled": ("ORIGINATOR_CANCEL", "1000", "Canceled"),
    "busy": ("USER_BUSY", "3000", "Busy Line"),
    "no_answer": ("NO_ANSWER", "3010", "No Answer"),
    "answer_url_failed": ("NORMAL_CLEARING", "7011", "Answer URL Failure"),
    "invalid_xml": ("NORMAL_CLEARING", "8011", "Invalid Answer XML"),
}


@dataclass
class _Resume:
    """Where a paused document continues: the elements after the blocking one, and the document's URL."""

    elements: list[ET.Element]
    document_url: str | None


@dataclass
class FakePlivoCall:
    """One call as the fake sees it; tests read it, the fake mutates it under its lock."""

    request_uuid: str | None  # outbound calls only (what make-call returns)
    call_uuid: str | None  # known once the call rings or is answered
    from_: str
    to: str
    direction: str  # inbound | outbound
    status: str  # queued, ringing, in-progress, completed, busy, no-answer, cancel, failed
    answer_url: str
    answer_method: str = "POST"
    hangup_url: str | None = None
    hangup_method: str = "POST"
    ring_url: str | None = None
    ring_method: str = "POST"
    fallback_url: str | None = None
    fallback_method: str = "POST"
    said: list[dict[str, str | None]] = field(default_factory=list)  # <Speak>: {text, voice, language}
    played: list[str] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)
    beep_waits: list[float] = field(default_factory=list)  # <Wait beep="true"> lengths (a machine beeps at once)
    machine: bool | None = None  # who answered, as machine detection reported it (answer(machine=...))
    get_input: dict[str, str] | None = None  # the <GetInput> waiting for caller input
    dtmf_sent: list[str] = field(default_factory=list)  # DTMF API and <DTMF> digits sent to the caller
    speak_requests: list[dict[str, Any]] = field(default_factory=list)  # Speak API bodies
    play_requests: list[dict[str, Any]] = field(default_factory=list)  # Play API bodies
    streams: list[dict[str, Any]] = field(default_factory=list)  # <Stream> elements and Stream API bodies
    transfers: list[dict[str, Any]] = field(default_factory=list)  # transfer API bodies
    dial: dict[str, Any] | None = None  # the running <Dial>: its attributes, targets [(User|Number, text)], b_leg
    dials: list[dict[str, Any]] = field(default_factory=list)  # every <Dial> run, in order
    conference: dict[str, Any] | None = None  # the <Conference> room the call is in: its attributes and "room"
    documents: list[str] = field(default_factory=list)  # every XML document executed, in order
    skipped: list[str] = field(default_factory=list)  # elements the interpreter does not know
    hangup_reason: str | None = None  # <Hangup reason>
    hangup_cause: str | None = None
    hangup_source: str | None = None
    error: str | None = None
    blocked_on: str | None = None  # get_input | wait | stream
    params: dict[str, Any] = field(default_factory=dict)  # the make-call body
    created_at: datetime = field(default_factory=now_utc)
    answer_time: datetime | None = None
    end_time: datetime | None = None
    generation: int = field(default=0, repr=False)
    resume: _Resume | None = field(default=None, repr=False)
    recordings: list[str] = field(default_factory=list)  # ids of this call's Record API recordings

    @property
    def ended(self) -> bool:
        return self.status in FINAL

    @property
    def duration(self) -> int:
        if self.answer_time is None:
            return 0
        return int(((self.end_time or now_utc()) - self.answer_time).total_seconds())


class FakePlivo(FakeServer):
    """Plivo's /v1/Account/{auth_id}/ Call API on a loopback port, driving calls with signed webhooks.

    Knobs: extra_signatures (bogus signatures put before the real one, comma-separated),
    signing_token (sign with another token), use_v2 (send the deprecated V2 headers instead of V3),
    wait_blocks_at (a <Wait> at least this long parks the document until elapse() or a transfer).
    A Record API recording ends with its call (or its time_limit): its signed callback follows the
    hangup webhook, and its URL serves a small real WAV behind the account's basic auth.
    """

    def __init__(
        self,
        auth_id: str = "MAFAKE0123456789ABCD",
        auth_token: str = "fake-plivo-auth-token",
        *,
        extra_signatures: list[str] | None = None,
        signing_token: str | None = None,
        use_v2: bool = False,
        wait_blocks_at: float = 10.0,
    ) -> None:
        super().__init__()
        self.auth_id = auth_id
        self.auth_token = auth_token
        self.extra_signatures = list(extra_signatures or [])
        self.signing_token = signing_token
        self.use_v2 = use_v2
        self.wait_blocks_at = wait_blocks_at
        self.calls: list[FakePlivoCall] = []
        self.recordings: dict[str, dict[str, Any]] = {}  # recording_id -> {id, call_uuid, body, started, ended}
        self.recording_audio = small_wav()
        account = r"^/v1/Account/(?P<account>[^/]+)"
        live = account + r"/Call/(?P<call_uuid>[^/]+)"
        self.routes = [
            ("POST", re.compile(live + r"/Record/$"), self._start_recording),
            ("GET", re.compile(account + r"/Recording/(?P<recording_id>[^/.]+)\.(?P<ext>wav|mp3)$"), self._recording_media),
            ("POST", re.compile(account + r"/Call/$"), self._make_call),
            ("GET", re.compile(live + r"/$"), self._get_call),
            ("POST", re.compile(live + r"/$"), self._transfer),
            ("DELETE", re.compile(live + r"/$"), self._hangup),
            ("DELETE", re.compile(account + r"/Request/(?P<request_uuid>[^/]+)/$"), self._cancel),
            ("POST", re.compile(live + r"/DTMF/$"), self._send_digits),
            ("POST", re.compile(live + r"/Speak/$"), self._speak),
            ("DELETE", re.compile(live + r"/Speak/$"), self._stop_live_media),
            ("POST", re.compile(live + r"/Play/$"), self._play),
            ("DELETE", re.compile(live + r"/Play/$"), self._stop_live_media),
            ("POST", re.compile(live + r"/Stream/$"), self._stream),
        ]
        self._elements: dict[str, Callable[..., bool]] = {
            "Speak": self._el_speak,
            "Play": self._el_play,
            "Wait": self._el_wait,
            "GetInput": self._el_get_input,
            "GetDigits": self._el_get_input,
            "Redirect": self._el_redirect,
            "Hangup": self._el_hangup,
            "Stream": self._el_stream,
            "DTMF": self._el_dtmf,
            "Dial": self._el_dial,
            "Conference": self._el_conference,
        }
        self.conferences: dict[str, list[str]] = {}  # room name → call UUIDs in it, in the order they joined

    # ------------------------------------------------------------------ public helpers

    @property
    def api_url(self) -> str:
        """What the gateway uses as Plivo's API base: http://127.0.0.1:PORT/v1/Account/{auth_id}."""
        return f"{self.base_url}/v1/Account/{self.auth_id}"

    @staticmethod
    def error_body(error: str) -> dict[str, str]:
        """Plivo's REST error shape."""
        return {"api_id": str(uuid.uuid4()), "error": error}

    def call(self, call_or_request_uuid: str) -> FakePlivoCall:
        with self.lock:
            for call in self.calls:
                if call_or_request_uuid in (call.call_uuid, call.request_uuid):
                    return call
        raise KeyError(f"unknown call {call_or_request_uuid}")

    @property
    def last_call(self) -> FakePlivoCall:
        with self.lock:
            return self.calls[-1]

    def signature_headers(self, method: str, url: str, params: dict[str, str], nonce: str) -> dict[str, str]:
        """Plivo's signature headers for a webhook, computed with the official SDK's helpers."""
        token = self.signing_token or self.auth_token
        if self.use_v2:
            # V2: HMAC-SHA256 over the URL without its query string, plus the nonce
            parts = urlsplit(url)
            base = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
            digest = hmac.new(token.encode(), (base + nonce).encode(), hashlib.sha256).digest()
            signature = base64.b64encode(digest).decode()
            return {"X-Plivo-Signature-V2": signature, "X-Plivo-Signature-Ma-V2": signature,
                    "X-Plivo-Signature-V2-Nonce": nonce}
        if method == "GET":
            base_url = construct_get_url(url, {})
        else:
            base_url = construct_post_url(url, dict(params))
        # decode first, as validate_v3_signature does, so non-ASCII speech signs the same way
        signature = get_signature_v3(token.encode(), base_url.decode("utf-8"), nonce.encode()).decode()
        value = ",".join([*self.extra_signatures, signature])
        # no sub-accounts here: the main-account signature uses the same token
        return {"X-Plivo-Signature-V3": value, "X-Plivo-Signature-Ma-V3": value, "X-Plivo-Signature-V3-Nonce": nonce}

    # ------------------------------------------------------------------ REST

    def authorized(self, record: Recorded) -> bool:
        return basic_credentials(record) == (self.auth_id, self.auth_token)

    def unauthorized(self) -> Reply:
        return Reply(401, self.error_body("Authentication failed: invalid auth_id or auth_token"))

    def not_found(self) -> Reply:
        # also what a path without its trailing slash gets here
        return Reply(404, self.error_body("not found"))

    def method_not_allowed(self) -> Reply:
        return Reply(405, self.error_body("method not allowed"))

    def _bad_request(self, error: str) -> Reply:
        return Reply(400, self.error_body(error))

    def _accepted(self, message: str, **extra: Any) -> Reply:
        return Reply(202, {"message": message, "api_id": str(uuid.uuid4()), **extra})

    def _find_live(self, account: str, call_uuid: str, statuses: tuple[str, ...] = LIVE) -> FakePlivoCall | None:
        if account != self.auth_id:
            return None
        for call in self.calls:
            if call.call_uuid == call_uuid and call.status in statuses:
                return call
        return None

    def _make_call(self, record: Recorded, account: str) -> Reply:
        if account != self.auth_id:
            return self.not_found()
        body = _body(record)
        for name in ("from", "to", "answer_url"):
            if not body.get(name):
                return self._bad_request(f"Missing mandatory parameter: {name}")
        call = FakePlivoCall(
            request_uuid=str(uuid.uuid4()),
            call_uuid=None,
            from_=str(body["from"]),
            to=str(body["to"]),
            direction="outbound",
            status="queued",
            answer_url=body["answer_url"],
            answer_method=_method(body.get("answer_method")),
            hangup_url=body.get("hangup_url"),
            hangup_method=_method(body.get("hangup_method")),
            ring_url=body.get("ring_url"),
            ring_method=_method(body.get("ring_method")),
            fallback_url=body.get("fallback_url"),
            fallback_method=_method(body.get("fallback_method")),
            params=body,
        )
        self.calls.append(call)
        return Reply(201, {"message": "call fired", "request_uuid": call.request_uuid, "api_id": str(uuid.uuid4())})

    def _get_call(self, record: Recorded, account: str, call_uuid: str) -> Reply:
        # Choice: this is Plivo's *live call* lookup, so an ended (or unknown) call is a 404
        call = self._find_live(account, call_uuid)
        if call is None:
            return self.not_found()
        return Reply(200, {
            "api_id": str(uuid.uuid4()),
            "call_uuid": call.call_uuid,
            "call_status": call.status,
            "direction": call.direction,
            "from": call.from_,
            "to": call.to,
            "request_uuid": call.request_uuid,
            "caller_name": call.from_,
            "session_start": _plivo_time(call.created_at),
        })

    def _transfer(self, record: Recorded, account: str, call_uuid: str) -> Reply:
        call = self._find_live(account, call_uuid, ("in-progress",))
        if call is None:
            return self.not_found()
        body = _body(record)
        legs = body.get("legs")
        if legs not in ("aleg", "bleg", "both"):
            return self._bad_request("legs must be one of aleg, bleg, both")
        if legs != "aleg":
            return self._bad_request("this call has no b-leg")  # the fake models single-leg calls
        if not body.get("aleg_url"):
            return self._bad_request("Missing mandatory parameter: aleg_url")
        call.transfers.append(body)
        self._replace_document(call, body["aleg_url"], _method(body.get("aleg_method")))
        return self._accepted("call transferred")

    def _hangup(self, record: Recorded, account: str, call_uuid: str) -> Reply:
        call = self._find_live(account, call_uuid)
        if call is None:
            return self.not_found()
        if call.status == "in-progress":
            self._end_call(call, "completed", "normal", "API Request")
        else:
            self._end_call(call, "cancel", "canceled", "API Request")
        return Reply(204)

    def _cancel(self, record: Recorded, account: str, request_uuid: str) -> Reply:
        call = next((c for c in self.calls if c.request_uuid == request_uuid and account == self.auth_id), None)
        if call is None or call.status not in ("queued", "ringing"):
            return self.not_found()  # an answered call is no longer a pending request
        self._end_call(call, "cancel", "canceled", "API Request")
        return Reply(204)

    def _send_digits(self, record: Recorded, account: str, call_uuid: str) -> Reply:
        call = self._find_live(account, call_uuid, ("in-progress",))
        if call is None:
            return self.not_found()
        body = _body(record)
        if not body.get("digits"):
            return self._bad_request("Missing mandatory parameter: digits")
        call.dtmf_sent.append(str(body["digits"]))
        return self._accepted("digits sent")

    def _speak(self, record: Recorded, account: str, call_uuid: str) -> Reply:
        call = self._find_live(account, call_uuid, ("in-progress",))
        if call is None:
            return self.not_found()
        body = _body(record)
        if not body.get("text"):
            return self._bad_request("Missing mandatory parameter: text")
        call.speak_requests.append(body)
        return self._accepted("speak started")

    def _play(self, record: Recorded, account: str, call_uuid: str) -> Reply:
        call = self._find_live(account, call_uuid, ("in-progress",))
        if call is None:
            return self.not_found()
        body = _body(record)
        if not body.get("urls"):
            return self._bad_request("Missing mandatory parameter: urls")
        call.play_requests.append(body)
        return self._accepted("play started")

    def _stop_live_media(self, record: Recorded, account: str, call_uuid: str) -> Reply:
        return Reply(204) if self._find_live(account, call_uuid) else self.not_found()

    def _stream(self, record: Recorded, account: str, call_uuid: str) -> Reply:
        call = self._find_live(account, call_uuid, ("in-progress",))
        if call is None:
            return self.not_found()
        body = _body(record)
        if not body.get("service_url"):
            return self._bad_request("Missing mandatory parameter: service_url")
        stream_id = str(uuid.uuid4())
        call.streams.append({**body, "stream_id": stream_id, "source": "api"})
        return self._accepted("audio streaming started", stream_id=stream_id)

    def _start_recording(self, record: Recorded, account: str, call_uuid: str) -> Reply:
        call = self._find_live(account, call_uuid, ("in-progress",))
        if call is None:
            return self.not_found()
        body = _body(record)
        file_format = body.get("file_format", "mp3")
        if file_format not in ("mp3", "wav"):
            return self._bad_request("file_format must be mp3 or wav")
        recording_id = str(uuid.uuid4())
        self.recordings[recording_id] = {"id": recording_id, "call_uuid": call.call_uuid, "body": body,
                                         "format": file_format, "started": now_utc(), "ended": None}
        call.recordings.append(recording_id)
        return self._accepted("call recording started", recording_id=recording_id, url=self.recording_url(recording_id))

    def recording_url(self, recording_id: str) -> str:
        recording = self.recordings[recording_id]
        return f"{self.api_url}/Recording/{recording_id}.{recording['format']}"

    def _recording_media(self, record: Recorded, account: str, recording_id: str, ext: str) -> Reply:
        recording = self.recordings.get(recording_id)
        if account != self.auth_id or recording is None or recording["ended"] is None or ext != recording["format"]:
            return self.not_found()
        if ext == "mp3":
            return Reply(200, b"ID3" + bytes(64), "audio/mpeg")
        return Reply(200, self.recording_audio, "audio/wav")

    def _finish_recordings(self, call: FakePlivoCall) -> None:
        """The call ended: its recordings stop, each callback signed and sent after the hangup webhook. Caller holds the lock."""
        for recording_id in call.recordings:
            recording = self.recordings[recording_id]
            if recording["ended"] is not None:
                continue
            recording["ended"] = now_utc()
            url = recording["body"].get("callback_url")
            if not url:
                continue
            start_ms = int(recording["started"].timestamp() * 1000)
            end_ms = int(recording["ended"].timestamp() * 1000)
            params = {
                "api_id": str(uuid.uuid4()),
                "call_uuid": call.call_uuid or "",
                "recording_id": recording_id,
                "record_url": self.recording_url(recording_id),
                "recording_duration": str((end_ms - start_ms) // 1000),
                "recording_duration_ms": f"{end_ms - start_ms}.00000",
                "recording_start_ms": f"{start_ms}.00000",
                "recording_end_ms": f"{end_ms}.00000",
            }
            method = _method(recording["body"].get("callback_method"))
            self.schedule(lambda url=url, method=method, params=params: self._send_webhook(url, method, params))

    def _replace_document(self, call: FakePlivoCall, url: str, method: str) -> None:
        # whatever the call was doing (GetInput, Wait, Stream) is abandoned for the new document
        self._unblock(call)
        call.generation += 1
        generation = call.generation
        self.schedule(lambda: self._fetch_and_run(call, generation, url, method, {"Event": "Transfer"}))

    # ------------------------------------------------------------------ caller actions (test-facing)

    def ring_inbound(
        self, from_: str, to: str, answer_url: str, hangup_url: str | None = None, *,
        answer_method: str = "POST", hangup_method: str = "POST", wait: bool = True,
    ) -> FakePlivoCall:
        """A new inbound call: answer_url gets Event=StartApp, CallStatus=in-progress; its XML runs."""
        with self.lock:
            call = FakePlivoCall(
                request_uuid=None, call_uuid=str(uuid.uuid4()), from_=from_, to=to, direction="inbound",
                status="in-progress", answer_url=answer_url, answer_method=answer_method.upper(),
                hangup_url=hangup_url, hangup_method=hangup_method.upper(), answer_time=now_utc(),
            )
            self.calls.append(call)
        self.submit(lambda: self._start_app(call), wait)
        return call

    def ring(self, request_uuid: str, wait: bool = True) -> FakePlivoCall:
        """An outbound call starts ringing: it gets its CallUUID, ring_url gets Event=Ring."""
        call = self._expect(request_uuid, ("queued",), "ring")
        self.submit(lambda: self._ring(call), wait)
        return call

    def answer(self, request_uuid: str, wait: bool = True, machine: bool | None = None) -> FakePlivoCall:
        """The callee picks up an outbound call: answer_url gets Event=StartApp and its XML runs.

        `machine`: who picked up. A call dialed with machine_detection=true then gets its verdict on
        machine_detection_url (Event=MachineDetection, Machine=true|false); with machine_detection=hangup
        a machine is hung up on by Plivo.
        """
        call = self._expect(request_uuid, ("queued", "ringing"), "answer")

        def run() -> None:
            if call.status == "queued":
                self._ring(call)
            with self.lock:
                if call.status != "ringing":
                    return  # canceled meanwhile
                call.status, call.answer_time = "in-progress", now_utc()
                call.machine = machine
            self._start_app(call)
            detection = str(call.params.get("machine_detection", "")).lower()
            if machine is None or detection not in ("true", "hangup") or call.ended:
                return
            if detection == "hangup" and machine:
                self._end_call_locked(call, "completed", "normal", "Machine")
                return
            url = call.params.get("machine_detection_url")
            if url:
                extra = {"Event": "MachineDetection", "Machine": "true" if machine else "false", "IfMachine": "continue"}
                self._webhook(call, url, _method(call.params.get("machine_detection_method")), extra)

        self.submit(run, wait)
        return call

    def no_answer(self, request_uuid: str, wait: bool = True) -> FakePlivoCall:
        call = self._expect(request_uuid, ("queued", "ringing"), "no_answer")

        def run() -> None:
            if call.status == "queued":
                self._ring(call)  # it rang out
            self._end_call_locked(call, "no-answer", "no_answer", "Call recipient")

        self.submit(run, wait)
        return call

    def busy(self, request_uuid: str, wait: bool = True) -> FakePlivoCall:
        call = self._expect(request_uuid, ("queued", "ringing"), "busy")

        def run() -> None:
            with self.lock:
                call.call_uuid = call.call_uuid or str(uuid.uuid4())
            self._end_call_locked(call, "busy", "busy", "Call recipient")

        self.submit(run, wait)
        return call

    def say(self, call_uuid: str, text: str, confidence: float = 0.9, wait: bool = True) -> FakePlivoCall:
        """The caller speaks into the waiting <GetInput>: its action gets InputType=speech and Speech."""
        call, get_input = self._take_input(call_uuid, "speech")
        extra = {"InputType": "speech", "Speech": text, "SpeechConfidenceScore": f"{confidence}", "Digits": ""}
        self.submit(lambda: self._input_result(call, get_input, extra), wait)
        return call

    def press(self, call_uuid: str, digits: str, wait: bool = True) -> FakePlivoCall:
        """The caller presses keys into the waiting <GetInput> (inputType must include dtmf)."""
        call, get_input = self._take_input(call_uuid, "dtmf")
        finish = get_input.get("finishOnKey", "#")
        if finish and finish != "none" and digits.endswith(finish):
            digits = digits[: -len(finish)]  # the finishing key is not reported
        extra = {"InputType": "dtmf", "Digits": digits, "Speech": ""}
        self.submit(lambda: self._input_result(call, get_input, extra), wait)
        return call

    def silence(self, call_uuid: str, wait: bool = True) -> FakePlivoCall:
        """The <GetInput> times out: Plivo moves on to the next element without calling the action."""
        call, _ = self._take_input(call_uuid, None)
        self.submit(lambda: self._continue(call), wait)
        return call

    def elapse(self, call_uuid: str, wait: bool = True) -> FakePlivoCall:
        """A long <Wait> that parked the document is over: continue with the next element."""
        return self._resume_blocked(call_uuid, "wait", wait)

    def end_stream(self, call_uuid: str, wait: bool = True) -> FakePlivoCall:
        """A keepCallAlive <Stream> disconnected: continue with the next element."""
        return self._resume_blocked(call_uuid, "stream", wait)

    def hang_up(self, call_uuid: str, wait: bool = True) -> FakePlivoCall:
        """The caller hangs up: hangup_url gets CallStatus=completed, HangupSource=Caller."""
        call = self._expect(call_uuid, LIVE, "hang_up")

        def run() -> None:
            if call.status == "in-progress":
                self._end_call_locked(call, "completed", "normal", "Caller")
            else:
                self._end_call_locked(call, "cancel", "canceled", "Caller")

        self.submit(run, wait)
        return call

    # ------------------------------------------------------------------ call progress (worker)

    def dial_answer(self, call_uuid: str, wait: bool = True) -> FakePlivoCall:
        """The <Dial>'s target picks up: its callbackUrl hears DialAction=answer; the legs are bridged."""
        call = self._dialing(call_uuid)

        def run() -> None:
            with self.lock:
                dial = call.dial
                dial["answered"] = True
            if dial.get("callbackUrl"):
                self._webhook(call, dial["callbackUrl"], dial.get("callbackMethod", "POST"), {
                    "DialAction": "answer", "DialALegUUID": call.call_uuid or "", "DialBLegUUID": dial["b_leg"],
                    "DialBLegStatus": "answer", "DialBLegTo": dial["targets"][0][1], "DialBLegFrom": dial.get("callerId", call.from_),
                })

        self.submit(run, wait)
        return call

    def dial_end(self, call_uuid: str, status: str = "completed", wait: bool = True) -> FakePlivoCall:
        """The <Dial> ends: completed (the target answered and hung up), or busy, no-answer, timeout, failed.

        Its action hears DialStatus; with redirect (the default) its answer runs next, else the
        document goes on after the <Dial>.
        """
        call = self._dialing(call_uuid)

        def run() -> None:
            with self.lock:
                dial, generation = call.dial, call.generation
                call.dial, call.blocked_on = None, None
                resume, call.resume = call.resume, None
            if not dial.get("action"):
                with self.lock:
                    call.resume = resume
                self._continue(call)
                return
            delivery = self._webhook(call, dial["action"], dial.get("method", "POST"), {
                "DialStatus": status, "DialALegUUID": call.call_uuid or "", "DialBLegUUID": dial["b_leg"],
                "DialHangupCause": "NORMAL_CLEARING" if status == "completed" else status.upper().replace("-", "_"),
            })
            if dial.get("redirect", "true").lower() == "true":
                self._run_answer(call, generation, delivery, dial["action"], 0)
            else:
                with self.lock:
                    call.resume = resume
                self._continue(call)

        self.submit(run, wait)
        return call

    def _dialing(self, call_uuid: str) -> FakePlivoCall:
        call = self.call(call_uuid)
        with self.lock:
            if call.dial is None or call.ended:
                raise RuntimeError(f"call {call_uuid} has no <Dial> running")
        return call

    def _expect(self, call_id: str, statuses: tuple[str, ...], action: str) -> FakePlivoCall:
        call = self.call(call_id)
        if call.status not in statuses:
            raise RuntimeError(f"cannot {action} call {call_id} in status {call.status}")
        return call

    def _ring(self, call: FakePlivoCall) -> None:
        with self.lock:
            if call.status != "queued":
                return
            call.call_uuid = call.call_uuid or str(uuid.uuid4())
            call.status = "ringing"
        if call.ring_url:
            self._send_webhook(call.ring_url, call.ring_method, {**self._call_params(call), "Event": "Ring"})

    def _start_app(self, call: FakePlivoCall) -> None:
        with self.lock:
            generation = call.generation
        url = call.answer_url
        delivery = self._webhook(call, url, call.answer_method, {"Event": "StartApp"})
        if not delivery.ok and call.fallback_url and not self._superseded(call, generation):
            # Plivo tries fallback_url when the answer URL fails
            url = call.fallback_url
            delivery = self._webhook(call, url, call.fallback_method, {"Event": "StartApp"})
        self._run_answer(call, generation, delivery, url, 0)

    def _end_call_locked(self, call: FakePlivoCall, status: str, outcome: str, source: str) -> None:
        with self.lock:
            self._end_call(call, status, outcome, source)

    def _end_call(self, call: FakePlivoCall, status: str, outcome: str, source: str) -> None:
        """Final status; hangup_url is told on the worker. Caller holds the lock."""
        if call.ended:
            return
        self._unblock(call)
        call.generation += 1
        cause, code, name = OUTCOMES[outcome]
        call.status, call.end_time = status, now_utc()
        call.hangup_cause, call.hangup_source = cause, source
        if not call.hangup_url:
            self._finish_recordings(call)
            return
        params = {
            **self._call_params(call),
            "Event": "Hangup",
            "HangupCause": cause,
            "HangupCauseCode": code,
            "HangupCauseName": name,
            "HangupSource": source,
            "Duration": str(call.duration),
            "BillDuration": str(call.duration),
            "TotalCost": "0.00000",
            "StartTime": _plivo_time(call.created_at),
            "AnswerTime": _plivo_time(call.answer_time),
            "EndTime": _plivo_time(call.end_time),
        }
        url, method = call.hangup_url, call.hangup_method
        self.schedule(lambda: self._send_webhook(url, method, params))
        self._finish_recordings(call)

    def _unblock(self, call: FakePlivoCall) -> None:
        if call.conference is not None:
            room = self.conferences.get(call.conference["room"], [])
            if call.call_uuid in room:
                room.remove(call.call_uuid)  # leaving the room (a hang-up or a transfer)
        call.conference = None
        call.get_input = None
        call.dial = None
        call.resume = None
        call.blocked_on = None

    # ------------------------------------------------------------------ webhooks (worker)

    def _call_params(self, call: FakePlivoCall) -> dict[str, str]:
        params = {
            "CallUUID": call.call_uuid or "",
            "From": call.from_,
            "To": call.to,
            "CallStatus": call.status,
            "Direction": call.direction,
        }
        if call.request_uuid:
            params.update(
                RequestUUID=call.request_uuid, ALegUUID=call.call_uuid or "", ALegRequestUUID=call.request_uuid
            )
        return params

    def _webhook(self, call: FakePlivoCall, url: str, method: str, extra: dict[str, str]) -> Delivery:
        return self._send_webhook(url, method, {**self._call_params(call), **extra})

    def _send_webhook(self, url: str, method: str, params: dict[str, str]) -> Delivery:
        method = method.upper()
        nonce = "".join(secrets.choice("0123456789") for _ in range(20))  # fresh per request
        headers = {"User-Agent": "PlivoHTTP/1.0"}
        if method == "GET":
            full_url = add_query(url, params)
            headers.update(self.signature_headers("GET", full_url, {}, nonce))
            return self.deliver(full_url, "GET", headers)
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        headers.update(self.signature_headers("POST", url, params, nonce))
        return self.deliver(url, "POST", headers, urlencode(params).encode())

    # ------------------------------------------------------------------ XML interpreter (worker)

    def _superseded(self, call: FakePlivoCall, generation: int) -> bool:
        return call.generation != generation or call.ended

    def _fetch_and_run(
        self, call: FakePlivoCall, generation: int, url: str, method: str, extra: dict[str, str], depth: int = 0
    ) -> None:
        if depth > MAX_REDIRECTS:
            self._error(call, f"more than {MAX_REDIRECTS} redirects", "invalid_xml")
            return
        delivery = self._webhook(call, url, method, extra)
        self._run_answer(call, generation, delivery, url, depth)

    def _run_answer(self, call: FakePlivoCall, generation: int, delivery: Delivery, url: str, depth: int) -> None:
        if self._superseded(call, generation):
            return
        if not delivery.ok:
            self._error(call, f"{delivery.method} {url} answered {delivery.status}", "answer_url_failed")
            return
        with self.lock:
            call.documents.append(delivery.response_text)
        try:
            root = parse_document(delivery.response_text)
        except ValueError as exc:
            self._error(call, str(exc), "invalid_xml")
            return
        self._run_elements(call, generation, list(root), url, depth)

    def _run_elements(
        self, call: FakePlivoCall, generation: int, elements: list[ET.Element], document_url: str | None, depth: int
    ) -> None:
        for index, element in enumerate(elements):
            if self._superseded(call, generation):
                return
            handler = self._elements.get(element.tag)
            if handler is None:
                with self.lock:
                    call.skipped.append(element.tag)
                continue
            if handler(call, generation, element, _Resume(elements[index + 1:], document_url), depth):
                return
        # an exhausted document hangs up
        self._end_call_locked(call, "completed", "end_of_xml", "Plivo")

    def _continue(self, call: FakePlivoCall) -> None:
        with self.lock:
            resume, generation = call.resume, call.generation
            self._unblock(call)
        if resume is not None:
            self._run_elements(call, generation, resume.elements, resume.document_url, 0)

    def _resume_blocked(self, call_uuid: str, kind: str, wait: bool) -> FakePlivoCall:
        call = self._expect(call_uuid, ("in-progress",), f"resume {kind} of")
        if call.blocked_on != kind:
            raise RuntimeError(f"call {call_uuid} is not blocked on {kind} (blocked on {call.blocked_on})")
        self.submit(lambda: self._continue(call), wait)
        return call

    def _take_input(self, call_uuid: str, kind: str | None) -> tuple[FakePlivoCall, dict[str, str]]:
        """The waiting <GetInput> (which stops waiting), checking it accepts this kind of input."""
        call = self.call(call_uuid)
        with self.lock:
            get_input = call.get_input
            if get_input is None or call.ended:
                raise RuntimeError(f"call {call_uuid} has no <GetInput> waiting for input")
            if kind and kind not in get_input["inputType"].split():
                raise RuntimeError(f"<GetInput inputType={get_input['inputType']!r}> does not accept {kind}")
            call.get_input = None
            call.blocked_on = None
            return call, get_input

    def _input_result(self, call: FakePlivoCall, get_input: dict[str, str], extra: dict[str, str]) -> None:
        with self.lock:
            generation = call.generation
        delivery = self._webhook(call, get_input["action"], get_input["method"], extra)
        if get_input["redirect"].lower() == "true":
            with self.lock:
                call.resume = None
            self._run_answer(call, generation, delivery, get_input["action"], 0)
        else:
            # redirect="false": the action is only told; the document goes on with the next element
            self._continue(call)

    def _error(self, call: FakePlivoCall, reason: str, outcome: str) -> None:
        with self.lock:
            call.error = reason
            self._end_call(call, "completed", outcome, "Error")

    # ---- elements: each returns True when execution of the current document stops

    def _el_speak(self, call: FakePlivoCall, generation: int, el: ET.Element, rest: _Resume, depth: int) -> bool:
        text = "".join(el.itertext()).strip()
        with self.lock:
            call.said.append({"text": text, "voice": el.get("voice", "WOMAN"), "language": el.get("language", "en-US")})
        return False

    def _el_play(self, call: FakePlivoCall, generation: int, el: ET.Element, rest: _Resume, depth: int) -> bool:
        with self.lock:
            call.played.append((el.text or "").strip())
        return False

    def _el_wait(self, call: FakePlivoCall, generation: int, el: ET.Element, rest: _Resume, depth: int) -> bool:
        length = float(el.get("length", "1"))
        with self.lock:
            if el.get("beep", "").lower() == "true":
                call.beep_waits.append(length)
                if call.machine:
                    return False  # the machine's beep ends the wait at once
            call.waits.append(length)
            if length < self.wait_blocks_at:
                return False  # short waits take no (real) time
            call.blocked_on, call.resume = "wait", rest
        return True

    def _el_get_input(self, call: FakePlivoCall, generation: int, el: ET.Element, rest: _Resume, depth: int) -> bool:
        for child in el:  # the nested prompt plays before Plivo listens
            if child.tag == "Speak":
                self._el_speak(call, generation, child, rest, depth)
            elif child.tag == "Play":
                self._el_play(call, generation, child, rest, depth)
        get_input = dict(el.attrib)
        get_input["action"] = resolve_url(rest.document_url, el.get("action") or rest.document_url or "")
        get_input["method"] = el.get("method", "POST").upper()
        get_input["redirect"] = el.get("redirect", "true")
        # inputType is mandatory on <GetInput>; be lenient and accept both; <GetDigits> is DTMF only
        get_input.setdefault("inputType", "dtmf" if el.tag == "GetDigits" else "dtmf speech")
        with self.lock:
            call.get_input, call.resume, call.blocked_on = get_input, rest, "get_input"
        return True

    def _el_redirect(self, call: FakePlivoCall, generation: int, el: ET.Element, rest: _Resume, depth: int) -> bool:
        url = resolve_url(rest.document_url, (el.text or "").strip())
        self._fetch_and_run(call, generation, url, el.get("method", "POST"), {"Event": "Redirect"}, depth + 1)
        return True

    def _el_hangup(self, call: FakePlivoCall, generation: int, el: ET.Element, rest: _Resume, depth: int) -> bool:
        with self.lock:
            call.hangup_reason = el.get("reason")
            self._end_call(call, "completed", "normal", "Answer XML")
        return True

    def _el_stream(self, call: FakePlivoCall, generation: int, el: ET.Element, rest: _Resume, depth: int) -> bool:
        stream = {**el.attrib, "url": (el.text or "").strip(), "source": "xml"}
        with self.lock:
            call.streams.append(stream)
            if el.get("keepCallAlive", "false").lower() != "true":
                return False  # the stream runs alongside; the document goes on
            call.blocked_on, call.resume = "stream", rest
        return True

    def _el_dial(self, call: FakePlivoCall, generation: int, el: ET.Element, rest: _Resume, depth: int) -> bool:
        """Ring the <Number>/<User> targets; the document waits for dial_answer / dial_end."""
        targets = [(child.tag, (child.text or "").strip()) for child in el if child.tag in ("Number", "User")]
        dial: dict[str, Any] = {**el.attrib, "targets": targets, "b_leg": str(uuid.uuid4()), "answered": False}
        for name in ("action", "callbackUrl"):
            if dial.get(name):
                dial[name] = resolve_url(rest.document_url, dial[name])
        with self.lock:
            if not targets:
                call.skipped.append("Dial (no Number or User)")
                return False
            call.dial = dial
            call.dials.append(dial)
            call.blocked_on, call.resume = "dial", rest
        return True

    def _el_conference(self, call: FakePlivoCall, generation: int, el: ET.Element, rest: _Resume, depth: int) -> bool:
        """Join the named room; the document waits there (until a transfer or a hang-up)."""
        room = (el.text or "").strip()
        with self.lock:
            call.conference = {**el.attrib, "room": room}
            self.conferences.setdefault(room, []).append(call.call_uuid or "")
            call.blocked_on, call.resume = "conference", rest
        return True

    def conference_members(self, room: str) -> list[str]:
        """The call UUIDs in the conference room, in the order they joined."""
        with self.lock:
            return list(self.conferences.get(room, []))

    def _el_dtmf(self, call: FakePlivoCall, generation: int, el: ET.Element, rest: _Resume, depth: int) -> bool:
        with self.lock:
            call.dtmf_sent.append((el.text or "").strip())
        return False


# ---------------------------------------------------------------------- module helpers

def _body(record: Recorded) -> dict[str, Any]:
    """The request parameters: Plivo's SDK sends JSON; accept a form too."""
    if isinstance(record.json, dict):
        return record.json
    return {key: values[0] for key, values in (record.form or {}).items()}


def _method(value: Any) -> str:
    return str(value or "POST").upper()


def _plivo_time(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else ""
