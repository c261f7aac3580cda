"""Fake Twilio Programmable Voice: REST Calls API, signed webhooks and a small TwiML interpreter."""
from __future__ import annotations

import re
import secrets
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable
from urllib.parse import urlencode, urlsplit, urlunsplit

from twilio.request_validator import RequestValidator

from .base import (
    FakeServer, Recorded, Reply, add_query, basic_credentials, first, now_utc, parse_document, resolve_url, rfc2822,
    small_wav,
)

__all__ = ["FakeTwilio", "FakeTwilioCall"]

API = "/2010-04-01"
E164 = re.compile(r"^\+[1-9]\d{1,14}$")
LIVE = ("queued", "ringing", "in-progress")
FINAL = ("completed", "busy", "failed", "no-answer", "canceled")
MAX_REDIRECTS = 25  # Twilio stops redirect loops too; the exact limit is not documented


@dataclass
class _Resume:
    """Where a paused document continues: the verbs after the blocking one, and the document's URL."""

    verbs: list[ET.Element]
    document_url: str | None


@dataclass
class FakeTwilioCall:
    """Everything the fake knows about one call; tests read it, the fake mutates it under its lock."""

    sid: str
    to: str
    from_: str
    direction: str  # inbound | outbound-api
    status: str  # queued, ringing, in-progress, completed, busy, failed, no-answer, canceled
    url: str | None = None
    method: str = "POST"
    twiml: str | None = None
    status_callback: str | None = None
    status_callback_method: str = "POST"
    status_callback_events: list[str] = field(default_factory=list)
    said: list[dict[str, str | None]] = field(default_factory=list)  # {text, voice, language}
    played: list[str] = field(default_factory=list)
    played_digits: list[str] = field(default_factory=list)
    paused: list[float] = field(default_factory=list)
    gather: dict[str, str] | None = None  # the <Gather> waiting for caller input
    stream: dict[str, Any] | None = None  # last <Connect><Stream>: {url, name, track, parameters, ...}
    # Every <Connect><Stream> run, in order; "stopped" says why each one ended (replaced, ended, closed).
    streams: list[dict[str, Any]] = field(default_factory=list)
    forks: list[dict[str, Any]] = field(default_factory=list)  # <Start><Stream> forks
    enqueued: str | None = None
    rejected: str | None = None  # <Reject reason>
    error: str | None = None  # why the call ended with "application error"
    blocked_on: str | None = None  # gather | stream | enqueue | pause: what the document waits for
    documents: list[str] = field(default_factory=list)  # every TwiML document executed, in order
    skipped: list[str] = field(default_factory=list)  # verbs the interpreter does not know
    params: dict[str, list[str]] = field(default_factory=dict)  # the create request's form
    date_created: datetime = field(default_factory=now_utc)
    date_updated: datetime = field(default_factory=now_utc)
    start_time: datetime | None = None
    end_time: datetime | None = None
    generation: int = field(default=0, repr=False)  # bumped when the running document is abandoned
    sequence: int = field(default=0, repr=False)  # SequenceNumber of the next status callback
    resume: _Resume | None = field(default=None, repr=False)
    connect_action: tuple[str, str] | None = field(default=None, repr=False)  # <Connect action method>
    record_on_answer: dict[str, str] | None = None  # Record=true on create: the recording's callback settings
    recordings: list[str] = field(default_factory=list)  # sids of this call's recordings, in order
    answered_by: str | None = None  # the AsyncAmd verdict sent (answer(answered_by=...), amd_result)
    # The running <Dial>: its attributes, noun (Number | Sip | Conference), target, the noun's attributes,
    # and the child leg's sid; every <Dial> run is kept in `dials`.
    dial: dict[str, Any] | None = None
    dials: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ended(self) -> bool:
        return self.status in FINAL

    @property
    def duration(self) -> int:
        if self.start_time is None:
            return 0
        return int(((self.end_time or now_utc()) - self.start_time).total_seconds())


class FakeTwilio(FakeServer):
    """Twilio's Calls API on a loopback port; drives calls against the gateway with signed webhooks.

    Knobs: sign_with_port (sign the URL with :443/:80 added when it has no port), signing_token
    (sign with another token, for negative tests), wait_blocks_at (a <Pause> at least this long parks
    the document, as a keep-alive, until elapse() or a REST redirect; shorter ones take no time),
    on_stream_stop (called on the worker with the call and its stream record when Twilio ends a
    running <Connect><Stream> itself: a REST update of the call's TwiML or the call's end; a test
    holding the stream's socket sends Twilio's stop frame and closes it there), recording_status
    (the RecordingStatus a finished recording reports: completed, or absent for one with no audio).
    A recording (Record=true on create, or POST .../Recordings.json on a live call) ends with its
    call; its status callback follows the call's completed callback, and its URL serves a small
    real WAV behind the account's basic auth.
    """

    def __init__(
        self,
        account_sid: str = "AC" + "0123456789abcdef" * 2,
        auth_token: str = "fake-twilio-auth-token",
        *,
        sign_with_port: bool = False,
        signing_token: str | None = None,
        wait_blocks_at: float = 10.0,
        on_stream_stop: Callable[[FakeTwilioCall, dict[str, Any]], None] | None = None,
    ) -> None:
        super().__init__()
        self.on_stream_stop = on_stream_stop
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.sign_with_port = sign_with_port
        self.signing_token = signing_token
        self.wait_blocks_at = wait_blocks_at
        self.calls: dict[str, FakeTwilioCall] = {}
        self.recording_status = "completed"
        self.recordings: dict[str, dict[str, Any]] = {}  # sid -> {sid, call_sid, source, callback, events, started, ended}
        self.recording_audio = small_wav()
        calls = rf"^{API}/Accounts/(?P<account>[^/]+)/Calls"
        recordings = rf"^{API}/Accounts/(?P<account>[^/]+)/Recordings/(?P<rsid>RE[0-9a-f]+)"
        self.routes = [
            ("POST", re.compile(calls + r"/(?P<sid>[^/]+)/Recordings\.json$"), self._start_recording),
            ("GET", re.compile(recordings + r"\.(?P<ext>wav|mp3)$"), self._recording_media),
            ("POST", re.compile(calls + r"\.json$"), self._create_call),
            ("GET", re.compile(calls + r"/(?P<sid>[^/]+)\.json$"), self._fetch_call),
            ("POST", re.compile(calls + r"/(?P<sid>[^/]+)\.json$"), self._update_call),
        ]
        self._verbs: dict[str, Callable[..., bool]] = {
            "Say": self._verb_say,
            "Play": self._verb_play,
            "Pause": self._verb_pause,
            "Gather": self._verb_gather,
            "Redirect": self._verb_redirect,
            "Hangup": self._verb_hangup,
            "Reject": self._verb_reject,
            "Connect": self._verb_connect,
            "Start": self._verb_start,
            "Stop": self._verb_stop,
            "Enqueue": self._verb_enqueue,
            "Dial": self._verb_dial,
        }
        self.conferences: dict[str, list[str]] = {}  # room name → sids of the calls in it, in order

    # ------------------------------------------------------------------ public helpers

    @property
    def api_url(self) -> str:
        """What the gateway uses as Twilio's API base, e.g. http://127.0.0.1:PORT/2010-04-01."""
        return self.base_url + API

    @staticmethod
    def error_body(code: int, message: str, status: int) -> dict[str, Any]:
        """Twilio's (legacy) REST error shape."""
        more_info = f"https://www.twilio.com/docs/errors/{code}"
        return {"code": code, "message": message, "more_info": more_info, "status": status}

    def call(self, sid: str) -> FakeTwilioCall:
        with self.lock:
            return self.calls[sid]

    @property
    def last_call(self) -> FakeTwilioCall:
        with self.lock:
            return list(self.calls.values())[-1]

    def sign(self, url: str, params: dict[str, str]) -> str:
        """X-Twilio-Signature for a webhook, computed by the official SDK over the URL as posted."""
        token = self.signing_token or self.auth_token
        signed_url = _with_default_port(url) if self.sign_with_port else url
        return RequestValidator(token).compute_signature(signed_url, params)

    # ------------------------------------------------------------------ REST

    def authorized(self, record: Recorded) -> bool:
        return basic_credentials(record) == (self.account_sid, self.auth_token)

    def unauthorized(self) -> Reply:
        return Reply(401, self.error_body(20003, "Authenticate", 401))

    def not_found(self) -> Reply:
        return Reply(404, self.error_body(20404, "The requested resource was not found", 404))

    def method_not_allowed(self) -> Reply:
        return Reply(405, self.error_body(20004, "Method not allowed", 405))

    def _create_call(self, record: Recorded, account: str) -> Reply:
        if account != self.account_sid:
            return self.not_found()
        form = record.form or {}
        to, from_ = first(form, "To"), first(form, "From")
        url, twiml = first(form, "Url"), first(form, "Twiml")
        if not to:
            return Reply(400, self.error_body(21201, "No 'To' number is specified", 400))
        if not from_:
            return Reply(400, self.error_body(21213, "No 'From' number is specified", 400))
        if not _dialable(to):
            return Reply(400, self.error_body(21211, f"The 'To' number {to} is not a valid phone number.", 400))
        if not url and not twiml:
            return Reply(400, self.error_body(21205, "A 'Url' or 'Twiml' parameter is required.", 400))
        call = FakeTwilioCall(
            sid="CA" + secrets.token_hex(16),
            to=to,
            from_=from_,
            direction="outbound-api",
            status="queued",
            url=url,
            method=(first(form, "Method") or "POST").upper(),
            # Twilio ignores Twiml when Url is also given on create (SDK docstring)
            twiml=None if url else twiml,
            status_callback=first(form, "StatusCallback"),
            status_callback_method=(first(form, "StatusCallbackMethod") or "POST").upper(),
            status_callback_events=_events(form.get("StatusCallbackEvent", [])),
            params=form,
        )
        if (first(form, "Record") or "").lower() == "true":
            call.record_on_answer = _recording_settings(form)
        self.calls[call.sid] = call
        return Reply(201, self._call_json(call))

    def _start_recording(self, record: Recorded, account: str, sid: str) -> Reply:
        call = self.calls.get(sid)
        if account != self.account_sid or call is None:
            return self.not_found()
        if call.status != "in-progress":
            return Reply(400, self.error_body(21220, "Call is not in-progress. Cannot start recording.", 400))
        recording = self._begin_recording(call, _recording_settings(record.form or {}), "StartCallRecordingAPI")
        return Reply(201, self._recording_json(recording))

    def _begin_recording(self, call: FakeTwilioCall, settings: dict[str, str], source: str) -> dict[str, Any]:
        """A recording of the live call starts now (caller holds the lock)."""
        recording = {"sid": "RE" + secrets.token_hex(16), "call_sid": call.sid, "source": source,
                     "started": now_utc(), "ended": None, "status": "in-progress", **settings}
        self.recordings[recording["sid"]] = recording
        call.recordings.append(recording["sid"])
        return recording

    def _recording_json(self, recording: dict[str, Any]) -> dict[str, Any]:
        uri = f"{API}/Accounts/{self.account_sid}/Recordings/{recording['sid']}.json"
        return {"sid": recording["sid"], "account_sid": self.account_sid, "call_sid": recording["call_sid"],
                "status": recording["status"], "channels": 2 if recording.get("channels") == "dual" else 1,
                "source": recording["source"], "start_time": rfc2822(recording["started"]), "uri": uri}

    def recording_url(self, sid: str) -> str:
        return f"{self.base_url}{API}/Accounts/{self.account_sid}/Recordings/{sid}"

    def _recording_media(self, record: Recorded, account: str, rsid: str, ext: str) -> Reply:
        recording = self.recordings.get(rsid)
        if account != self.account_sid or recording is None or recording["status"] != "completed":
            return self.not_found()
        if ext == "mp3":
            return Reply(200, b"ID3" + bytes(64), "audio/mpeg")
        return Reply(200, self.recording_audio, "audio/x-wav")

    def _finish_recordings(self, call: FakeTwilioCall) -> None:
        """The call ended: its recordings end too, each reported after the call's completed callback. Caller holds the lock."""
        for sid in call.recordings:
            recording = self.recordings[sid]
            if recording["ended"] is not None:
                continue
            recording["ended"] = now_utc()
            recording["status"] = self.recording_status
            self.schedule(lambda recording=recording: self._recording_callback(call, recording))

    def _recording_callback(self, call: FakeTwilioCall, recording: dict[str, Any]) -> None:
        wanted = recording.get("events") or ["completed"]
        if not recording.get("callback") or recording["status"] not in wanted:
            return
        duration = 0 if recording["status"] == "absent" else max(1, int((recording["ended"] - recording["started"]).total_seconds()))
        params = {
            "AccountSid": self.account_sid,
            "CallSid": call.sid,
            "RecordingSid": recording["sid"],
            "RecordingUrl": self.recording_url(recording["sid"]),
            "RecordingStatus": recording["status"],
            "RecordingDuration": str(duration),
            "RecordingChannels": "2" if recording.get("channels") == "dual" else "1",
            "RecordingStartTime": rfc2822(recording["started"]) or "",
            "RecordingSource": recording["source"],
            "ErrorCode": "0",
        }
        self._send_webhook(recording["callback"], recording.get("method") or "POST", params)

    def _fetch_call(self, record: Recorded, account: str, sid: str) -> Reply:
        call = self.calls.get(sid)
        if account != self.account_sid or call is None:
            return self.not_found()
        return Reply(200, self._call_json(call))

    def _update_call(self, record: Recorded, account: str, sid: str) -> Reply:
        call = self.calls.get(sid)
        if account != self.account_sid or call is None:
            return self.not_found()
        form = record.form or {}
        if first(form, "StatusCallback"):
            call.status_callback = first(form, "StatusCallback")
            call.status_callback_method = (first(form, "StatusCallbackMethod") or "POST").upper()
        url, twiml, status = first(form, "Url"), first(form, "Twiml"), first(form, "Status")
        if url or twiml:
            if call.status != "in-progress":
                return Reply(400, self.error_body(21220, "Call is not in-progress. Cannot redirect.", 400))
            self._replace_document(call, url, (first(form, "Method") or "POST").upper(), twiml)
        elif status:
            error = self._apply_status(call, status)
            if error:
                return error
        call.date_updated = now_utc()
        return Reply(200, self._call_json(call))

    def _replace_document(self, call: FakeTwilioCall, url: str | None, method: str, twiml: str | None) -> None:
        # the running document (and any Gather, Pause or stream it waits on) is abandoned right away:
        # a running <Connect><Stream> ends (its socket gets a stop) and its Connect action is not requested
        self._stop_stream(call, "replaced")
        self._unblock(call)
        call.generation += 1
        generation = call.generation
        if url:
            call.url, call.method = url, method
            self.schedule(lambda: self._fetch_and_run(call, generation, url, method))
        else:
            self.schedule(lambda: self._run_document(call, generation, twiml or "", None))

    def _apply_status(self, call: FakeTwilioCall, status: str) -> Reply | None:
        if status not in ("completed", "canceled"):
            return Reply(400, self.error_body(20001, f"Invalid Status '{status}'", 400))
        if status == "completed" and call.status == "in-progress":
            self._end_call(call, "completed")
        elif call.status in ("queued", "ringing"):
            # Status=completed on a call nobody answered yet ends it the same way as canceled
            self._end_call(call, "canceled")
        # canceled on an answered call, or anything on an ended call: Twilio leaves the call alone
        return None

    def _call_json(self, call: FakeTwilioCall) -> dict[str, Any]:
        uri = f"{API}/Accounts/{self.account_sid}/Calls/{call.sid}.json"
        return {
            "sid": call.sid,
            "account_sid": self.account_sid,
            "to": call.to,
            "to_formatted": call.to,
            "from": call.from_,
            "from_formatted": call.from_,
            "status": call.status,
            "direction": call.direction,
            "answered_by": call.answered_by,
            "api_version": "2010-04-01",
            "caller_name": None,
            "date_created": rfc2822(call.date_created),
            "date_updated": rfc2822(call.date_updated),
            "start_time": rfc2822(call.start_time),
            "end_time": rfc2822(call.end_time),
            "duration": str(call.duration) if call.ended else None,
            "price": None,
            "price_unit": "USD",
            "forwarded_from": None,
            "group_sid": None,
            "parent_call_sid": None,
            "phone_number_sid": None,
            "queue_time": "0",
            "trunk_sid": None,
            "uri": uri,
            "subresource_uris": {
                "notifications": uri.replace(".json", "/Notifications.json"),
                "recordings": uri.replace(".json", "/Recordings.json"),
                "streams": uri.replace(".json", "/Streams.json"),
            },
        }

    # ------------------------------------------------------------------ caller actions (test-facing)

    def ring_inbound(
        self,
        from_: str,
        to: str,
        url: str,
        *,
        method: str = "POST",
        status_callback: str | None = None,
        status_callback_events: list[str] | tuple[str, ...] = (),
        wait: bool = True,
    ) -> FakeTwilioCall:
        """A new inbound call: POST the voice URL (CallStatus=ringing) and run the TwiML it answers."""
        with self.lock:
            call = FakeTwilioCall(
                sid="CA" + secrets.token_hex(16), to=to, from_=from_, direction="inbound", status="ringing",
                url=url, method=method.upper(), status_callback=status_callback,
                status_callback_events=list(status_callback_events),
            )
            self.calls[call.sid] = call
            generation = call.generation
        self.submit(lambda: self._fetch_and_run(call, generation, url, call.method), wait)
        return call

    def ring(self, sid: str, wait: bool = True) -> FakeTwilioCall:
        """An outbound call starts ringing (status callbacks initiated and ringing, as requested)."""
        call = self._expect(sid, ("queued",), "ring")
        self.submit(lambda: self._ring(call), wait)
        return call

    def answer(self, sid: str, wait: bool = True, answered_by: str | None = None) -> FakeTwilioCall:
        """The callee picks up an outbound call: ring if needed, 'answered', then run its Url or Twiml.

        `answered_by`: who picked up (human, machine_start, machine_end_beep, fax, ...). A call dialed with
        AsyncAmd gets that verdict on its AsyncAmdStatusCallback once its document runs, as Twilio does.
        """
        call = self._expect(sid, ("queued", "ringing"), "answer", outbound=True)

        def run() -> None:
            self._answer(call)
            if answered_by is not None and _async_amd(call) and not call.ended:
                self._amd_callback(call, answered_by)

        self.submit(run, wait)
        return call

    def amd_result(self, sid: str, answered_by: str, wait: bool = True) -> FakeTwilioCall:
        """Deliver an (other) AsyncAmd verdict for a call that asked for detection, e.g. after it ended."""
        call = self.call(sid)
        if not _async_amd(call):
            raise RuntimeError(f"call {sid} was not dialed with AsyncAmd")
        self.submit(lambda: self._amd_callback(call, answered_by), wait)
        return call

    def no_answer(self, sid: str, wait: bool = True) -> FakeTwilioCall:
        return self._unanswered(sid, "no-answer", wait)

    def busy(self, sid: str, wait: bool = True) -> FakeTwilioCall:
        return self._unanswered(sid, "busy", wait)

    def fail(self, sid: str, wait: bool = True) -> FakeTwilioCall:
        return self._unanswered(sid, "failed", wait)

    def say(self, sid: str, text: str, confidence: float = 0.92, wait: bool = True) -> FakeTwilioCall:
        """The caller speaks into the waiting <Gather input="speech">: POST SpeechResult to its action."""
        call, gather = self._take_gather(sid, "speech")
        extra = {"SpeechResult": text, "Confidence": f"{confidence}"}
        self.submit(lambda: self._gather_result(call, gather, extra), wait)
        return call

    def press(self, sid: str, digits: str, wait: bool = True) -> FakeTwilioCall:
        """The caller presses keys into the waiting <Gather> (input must include dtmf)."""
        call, gather = self._take_gather(sid, "dtmf")
        finish = gather.get("finishOnKey", "#")
        extra = {"Digits": digits}
        if finish and digits.endswith(finish):
            # Twilio strips the finishing key from Digits and reports it separately
            extra = {"Digits": digits[: -len(finish)], "FinishedOnKey": finish}
        self.submit(lambda: self._gather_result(call, gather, extra), wait)
        return call

    def silence(self, sid: str, wait: bool = True) -> FakeTwilioCall:
        """The <Gather> times out: POST the action only with actionOnEmptyResult="true", else fall through."""
        call, gather = self._take_gather(sid, None)
        if gather.get("actionOnEmptyResult", "").lower() == "true":
            self.submit(lambda: self._gather_result(call, gather, {}), wait)
        else:
            self.submit(lambda: self._continue(call), wait)
        return call

    def elapse(self, sid: str, wait: bool = True) -> FakeTwilioCall:
        """A long <Pause> that parked the document is over: continue with the next verb."""
        call = self._expect(sid, ("in-progress",), "elapse")
        if call.blocked_on != "pause":
            raise RuntimeError(f"call {sid} is not in a long <Pause> (blocked on {call.blocked_on})")
        self.submit(lambda: self._continue(call), wait)
        return call

    def end_stream(self, sid: str, wait: bool = True) -> FakeTwilioCall:
        """The <Connect><Stream> socket closed: request the Connect action, or continue the document."""
        call = self._expect(sid, ("in-progress",), "end_stream")
        if call.blocked_on != "stream":
            raise RuntimeError(f"call {sid} has no open <Connect><Stream> (blocked on {call.blocked_on})")
        with self.lock:
            if call.streams and "stopped" not in call.streams[-1]:
                call.streams[-1]["stopped"] = "closed"
        self.submit(lambda: self._after_stream(call), wait)
        return call

    def hang_up(self, sid: str, wait: bool = True) -> FakeTwilioCall:
        """The remote party hangs up (completed; canceled if nobody had answered yet)."""
        call = self._expect(sid, LIVE, "hang_up")
        final = "completed" if call.status == "in-progress" else "canceled"
        self.submit(lambda: self._end_call_locked(call, final), wait)
        return call

    # ------------------------------------------------------------------ call progress (worker)

    def dial_answer(self, sid: str, wait: bool = True) -> FakeTwilioCall:
        """The <Dial>'s <Number>/<Sip> picks up: its statusCallback hears answered (the child leg's CallSid)."""
        call = self._dialing(sid)

        def run() -> None:
            with self.lock:
                dial = call.dial
                dial["answered"] = True
            noun = dial["noun_attributes"]
            if noun.get("statusCallback") and "answered" in _events([noun.get("statusCallbackEvent", "")]):
                params = {**self._call_params(call), "CallSid": dial["child_sid"], "ParentCallSid": call.sid,
                          "To": dial["target"], "Called": dial["target"], "Direction": "outbound-dial",
                          "CallStatus": "in-progress", "CallbackSource": "call-progress-events"}
                self._send_webhook(noun["statusCallback"], noun.get("statusCallbackMethod", "POST"), params)

        self.submit(run, wait)
        return call

    def dial_end(self, sid: str, status: str = "completed", wait: bool = True) -> FakeTwilioCall:
        """The <Dial> ends with DialCallStatus `status` (completed, busy, no-answer, failed, canceled):
        its action's TwiML runs next, or without an action the document goes on after the <Dial>."""
        call = self._dialing(sid)

        def run() -> None:
            with self.lock:
                dial, generation = call.dial, call.generation
                resume = call.resume
                self._unblock(call)
            if not dial.get("action"):
                with self.lock:
                    call.resume = resume
                self._continue(call)
                return
            extra = {"DialCallStatus": status, "DialCallSid": dial["child_sid"],
                     "DialCallDuration": "5" if status == "completed" else "0"}
            self._fetch_and_run(call, generation, dial["action"], dial.get("method", "POST").upper(), extra)

        self.submit(run, wait)
        return call

    def conference(self, room: str) -> list[str]:
        """The sids of the calls in the conference room, in the order they joined."""
        with self.lock:
            return list(self.conferences.get(room, []))

    def _dialing(self, sid: str) -> FakeTwilioCall:
        call = self.call(sid)
        with self.lock:
            if call.dial is None or call.blocked_on != "dial" or call.ended:
                raise RuntimeError(f"call {sid} has no <Dial> ringing a number")
        return call

    def _expect(self, sid: str, statuses: tuple[str, ...], action: str, outbound: bool = False) -> FakeTwilioCall:
        with self.lock:
            call = self.calls.get(sid)
            if call is None:
                raise KeyError(f"unknown call {sid}")
            if call.status not in statuses:
                raise RuntimeError(f"cannot {action} call {sid} in status {call.status}")
            if outbound and call.direction == "inbound":
                raise RuntimeError(f"cannot {action} inbound call {sid}")
            return call

    def _ring(self, call: FakeTwilioCall) -> None:
        self._status_callback(call, "initiated", "initiated")
        with self.lock:
            if call.status != "queued":
                return
            call.status = "ringing"
        self._status_callback(call, "ringing", "ringing")

    def _answer(self, call: FakeTwilioCall) -> None:
        if call.status == "queued":
            self._ring(call)
        with self.lock:
            if call.status != "ringing":
                return  # canceled through REST while ringing
            self._mark_answered(call)
            if call.record_on_answer is not None:
                self._begin_recording(call, call.record_on_answer, "OutboundAPI")
            generation = call.generation
        self._status_callback(call, "answered", "in-progress")
        if call.url:
            self._fetch_and_run(call, generation, call.url, call.method)
        else:
            self._run_document(call, generation, call.twiml or "", None)

    def _unanswered(self, sid: str, status: str, wait: bool) -> FakeTwilioCall:
        call = self._expect(sid, ("queued", "ringing"), status, outbound=True)

        def run() -> None:
            if status == "failed" and call.status == "queued":
                self._status_callback(call, "initiated", "initiated")
            elif call.status == "queued":
                self._ring(call)
            self._end_call_locked(call, status)

        self.submit(run, wait)
        return call

    def _mark_answered(self, call: FakeTwilioCall) -> None:
        call.status = "in-progress"
        call.start_time = call.date_updated = now_utc()

    def _end_call_locked(self, call: FakeTwilioCall, status: str) -> None:
        with self.lock:
            self._end_call(call, status)

    def _end_call(self, call: FakeTwilioCall, status: str) -> None:
        """Final status; the completed status callback follows on the worker. Caller holds the lock."""
        if call.ended:
            return
        self._stop_stream(call, "ended")
        self._unblock(call)
        call.generation += 1
        call.status = status
        call.end_time = call.date_updated = now_utc()
        self.schedule(lambda: self._status_callback(call, "completed", status))
        self._finish_recordings(call)

    def _stop_stream(self, call: FakeTwilioCall, why: str) -> None:
        """Twilio ends the running stream itself; the hook runs before anything the change schedules. Caller holds the lock."""
        if call.blocked_on != "stream" or not call.streams or "stopped" in call.streams[-1]:
            return
        record = call.streams[-1]
        record["stopped"] = why
        if self.on_stream_stop is not None:
            hook = self.on_stream_stop
            self.schedule(lambda: hook(call, record))

    def _unblock(self, call: FakeTwilioCall) -> None:
        if call.dial is not None and call.dial.get("noun") == "Conference":
            room = self.conferences.get(call.dial["target"], [])
            if call.sid in room:
                room.remove(call.sid)  # leaving the room (a hang-up or new TwiML)
        call.dial = None
        call.gather = None
        call.resume = None
        call.blocked_on = None
        call.connect_action = None

    def _status_callback(self, call: FakeTwilioCall, event: str, call_status: str) -> None:
        # Without StatusCallbackEvent Twilio only reports completion
        wanted = call.status_callback_events or ["completed"]
        if not call.status_callback or event not in wanted:
            return
        with self.lock:
            sequence = call.sequence
            call.sequence += 1
        params = self._call_params(call)
        params.update(
            CallStatus=call_status,
            CallbackSource="call-progress-events",
            SequenceNumber=str(sequence),
            Timestamp=rfc2822(now_utc()) or "",
        )
        if event == "completed":
            params["CallDuration"] = str(call.duration)
        self._send_webhook(call.status_callback, call.status_callback_method, params)

    def _amd_callback(self, call: FakeTwilioCall, answered_by: str) -> None:
        with self.lock:
            call.answered_by = answered_by
            url = first(call.params, "AsyncAmdStatusCallback")
            method = (first(call.params, "AsyncAmdStatusCallbackMethod") or "POST").upper()
        params = {**self._call_params(call), "AnsweredBy": answered_by, "MachineDetectionDuration": "2150"}
        self._send_webhook(url, method, params)

    # ------------------------------------------------------------------ webhooks (worker)

    def _call_params(self, call: FakeTwilioCall) -> dict[str, str]:
        return {
            "CallSid": call.sid,
            "AccountSid": self.account_sid,
            "From": call.from_,
            "To": call.to,
            "Caller": call.from_,
            "Called": call.to,
            "CallStatus": call.status,
            "Direction": call.direction,
            "ApiVersion": "2010-04-01",
        }

    def _send_webhook(self, url: str, method: str, params: dict[str, str]):
        headers = {"User-Agent": "TwilioProxy/1.1", "I-Twilio-Idempotency-Token": str(uuid.uuid4())}
        if method.upper() == "GET":
            # GET webhooks carry the parameters in the URL, and the signature covers just the URL
            full_url = add_query(url, params)
            headers["X-Twilio-Signature"] = self.sign(full_url, {})
            return self.deliver(full_url, "GET", headers)
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        headers["X-Twilio-Signature"] = self.sign(url, params)
        return self.deliver(url, "POST", headers, urlencode(params).encode())

    # ------------------------------------------------------------------ TwiML interpreter (worker)

    def _superseded(self, call: FakeTwilioCall, generation: int) -> bool:
        # a REST redirect, a hang-up or a newer document took over since this work started
        return call.generation != generation or call.ended

    def _fetch_and_run(
        self, call: FakeTwilioCall, generation: int, url: str, method: str,
        extra: dict[str, str] | None = None, depth: int = 0,
    ) -> None:
        if depth > MAX_REDIRECTS:
            self._application_error(call, f"more than {MAX_REDIRECTS} redirects")
            return
        params = {**self._call_params(call), **(extra or {})}
        delivery = self._send_webhook(url, method, params)
        if self._superseded(call, generation):
            return
        if not delivery.ok:
            self._application_error(call, f"{method} {url} answered {delivery.status}")
            return
        self._run_document(call, generation, delivery.response_text, url, depth)

    def _run_document(
        self, call: FakeTwilioCall, generation: int, text: str, document_url: str | None, depth: int = 0
    ) -> None:
        with self.lock:
            if self._superseded(call, generation):
                return
            call.documents.append(text)
        try:
            root = parse_document(text)
        except ValueError as exc:
            self._application_error(call, str(exc))
            return
        self._run_verbs(call, generation, list(root), document_url, depth)

    def _run_verbs(
        self, call: FakeTwilioCall, generation: int, verbs: list[ET.Element], document_url: str | None, depth: int
    ) -> None:
        for index, verb in enumerate(verbs):
            with self.lock:
                if self._superseded(call, generation):
                    return
                # an inbound call is answered by the first verb that is not <Reject>
                answering = call.status == "ringing" and verb.tag != "Reject"
                if answering:
                    self._mark_answered(call)
            if answering:
                self._status_callback(call, "answered", "in-progress")
            handler = self._verbs.get(verb.tag)
            if handler is None:
                with self.lock:
                    call.skipped.append(verb.tag)
                continue
            if handler(call, generation, verb, _Resume(verbs[index + 1:], document_url), depth):
                return  # the verb blocks, ends the call or hands over to another document
        # running out of verbs hangs up
        self._end_call_locked(call, "completed")

    def _continue(self, call: FakeTwilioCall) -> None:
        with self.lock:
            resume, generation = call.resume, call.generation
            self._unblock(call)
        if resume is not None:
            self._run_verbs(call, generation, resume.verbs, resume.document_url, 0)

    def _gather_result(self, call: FakeTwilioCall, gather: dict[str, str], extra: dict[str, str]) -> None:
        # with an action, the action's answer replaces the rest of the document
        with self.lock:
            generation = call.generation
            call.resume = None
        self._fetch_and_run(call, generation, gather["action"], gather["method"], extra)

    def _after_stream(self, call: FakeTwilioCall) -> None:
        with self.lock:
            action, generation = call.connect_action, call.generation
        if action is None:
            self._continue(call)
            return
        with self.lock:
            self._unblock(call)
        self._fetch_and_run(call, generation, action[0], action[1])

    def _take_gather(self, sid: str, kind: str | None) -> tuple[FakeTwilioCall, dict[str, str]]:
        """The waiting <Gather> (which stops waiting), checking it accepts this kind of input."""
        with self.lock:
            call = self.calls.get(sid)
            if call is None:
                raise KeyError(f"unknown call {sid}")
            if call.gather is None or call.ended:
                raise RuntimeError(f"call {sid} has no <Gather> waiting for input")
            gather = call.gather
            if kind and kind not in gather["input"].split():
                raise RuntimeError(f"<Gather input={gather['input']!r}> does not accept {kind}")
            call.gather = None
            call.blocked_on = None
            return call, gather

    def _application_error(self, call: FakeTwilioCall, reason: str) -> None:
        # Twilio says "an application error has occurred" and hangs up
        with self.lock:
            call.error = reason
            self._end_call(call, "completed")

    # ---- verbs: each returns True when execution of the current document stops

    def _verb_say(self, call: FakeTwilioCall, generation: int, el: ET.Element, rest: _Resume, depth: int) -> bool:
        with self.lock:
            text = "".join(el.itertext()).strip()
            call.said.append({"text": text, "voice": el.get("voice"), "language": el.get("language")})
        return False

    def _verb_play(self, call: FakeTwilioCall, generation: int, el: ET.Element, rest: _Resume, depth: int) -> bool:
        with self.lock:
            if el.get("digits"):
                call.played_digits.append(el.get("digits", ""))
            else:
                call.played.append((el.text or "").strip())
        return False

    def _verb_pause(self, call: FakeTwilioCall, generation: int, el: ET.Element, rest: _Resume, depth: int) -> bool:
        length = float(el.get("length", "1"))
        with self.lock:
            call.paused.append(length)
            if length < self.wait_blocks_at:
                return False  # short pauses take no (real) time
            call.blocked_on, call.resume = "pause", rest
        return True

    def _verb_gather(self, call: FakeTwilioCall, generation: int, el: ET.Element, rest: _Resume, depth: int) -> bool:
        for child in el:  # the nested prompt plays before Twilio listens (a nested Pause takes no time)
            if child.tag == "Say":
                self._verb_say(call, generation, child, rest, depth)
            elif child.tag == "Play":
                self._verb_play(call, generation, child, rest, depth)
        gather = dict(el.attrib)
        # no action: Twilio posts the result to the URL of the current document
        gather["action"] = resolve_url(rest.document_url, el.get("action") or rest.document_url or "")
        gather["method"] = el.get("method", "POST").upper()
        gather.setdefault("input", "dtmf")
        with self.lock:
            call.gather, call.resume, call.blocked_on = gather, rest, "gather"
        return True

    def _verb_redirect(self, call: FakeTwilioCall, generation: int, el: ET.Element, rest: _Resume, depth: int) -> bool:
        url = resolve_url(rest.document_url, (el.text or "").strip())
        self._fetch_and_run(call, generation, url, el.get("method", "POST").upper(), depth=depth + 1)
        return True

    def _verb_hangup(self, call: FakeTwilioCall, generation: int, el: ET.Element, rest: _Resume, depth: int) -> bool:
        self._end_call_locked(call, "completed")
        return True

    def _verb_reject(self, call: FakeTwilioCall, generation: int, el: ET.Element, rest: _Resume, depth: int) -> bool:
        # Choice: reason="busy" ends as busy, anything else (default "rejected") as no-answer
        reason = el.get("reason", "rejected")
        with self.lock:
            call.rejected = reason
            self._end_call(call, "busy" if reason == "busy" else "no-answer")
        return True

    def _verb_connect(self, call: FakeTwilioCall, generation: int, el: ET.Element, rest: _Resume, depth: int) -> bool:
        stream = el.find("Stream")
        with self.lock:
            if stream is None:
                call.skipped.extend(f"Connect/{child.tag}" for child in el)
            else:
                call.stream = _stream_record(stream)
                call.streams.append(call.stream)
            if el.get("action"):
                action = resolve_url(rest.document_url, el.get("action", ""))
                call.connect_action = (action, el.get("method", "POST").upper())
            call.blocked_on, call.resume = "stream", rest
        return True

    def _verb_start(self, call: FakeTwilioCall, generation: int, el: ET.Element, rest: _Resume, depth: int) -> bool:
        with self.lock:
            for child in el:
                if child.tag == "Stream":
                    call.forks.append(_stream_record(child))
                else:
                    call.skipped.append(f"Start/{child.tag}")
        return False

    def _verb_stop(self, call: FakeTwilioCall, generation: int, el: ET.Element, rest: _Resume, depth: int) -> bool:
        with self.lock:
            names = {child.get("name") for child in el if child.tag == "Stream"}
            for fork in call.forks:
                if fork.get("name") in names:
                    fork["stopped"] = True
        return False

    def _verb_dial(self, call: FakeTwilioCall, generation: int, el: ET.Element, rest: _Resume, depth: int) -> bool:
        """<Dial> a <Number>, <Sip> or <Conference>: the document waits (dial_answer / dial_end, or in the room)."""
        noun = next((child for child in el if child.tag in ("Number", "Sip", "Conference", "Client")), None)
        target = (noun.text if noun is not None else el.text or "").strip()
        dial: dict[str, Any] = {
            **el.attrib, "noun": noun.tag if noun is not None else "Number", "target": target,
            "noun_attributes": dict(noun.attrib) if noun is not None else {}, "child_sid": "CA" + secrets.token_hex(16),
            "answered": False,
        }
        if dial.get("action"):
            dial["action"] = resolve_url(rest.document_url, dial["action"])
        if dial["noun_attributes"].get("statusCallback"):  # relative to the document, as Twilio resolves it
            dial["noun_attributes"]["statusCallback"] = resolve_url(rest.document_url, dial["noun_attributes"]["statusCallback"])
        with self.lock:
            if not target:
                call.skipped.append("Dial (nothing to dial)")
                return False
            call.dial = dial
            call.dials.append(dial)
            if dial["noun"] == "Conference":
                self.conferences.setdefault(target, []).append(call.sid)
                call.blocked_on = "conference"
            else:
                call.blocked_on = "dial"
            call.resume = rest
        return True

    def _verb_enqueue(self, call: FakeTwilioCall, generation: int, el: ET.Element, rest: _Resume, depth: int) -> bool:
        with self.lock:
            call.enqueued = (el.text or "").strip()
            call.blocked_on, call.resume = "enqueue", rest
        return True


# ---------------------------------------------------------------------- module helpers


def _recording_settings(form: dict[str, list[str]]) -> dict[str, Any]:
    """RecordingChannels and the recording status callback of a create or Recordings request."""
    return {
        "channels": first(form, "RecordingChannels") or "mono",
        "callback": first(form, "RecordingStatusCallback"),
        "method": (first(form, "RecordingStatusCallbackMethod") or "POST").upper(),
        "events": " ".join(form.get("RecordingStatusCallbackEvent", [])).split() or ["completed"],
    }


def _async_amd(call: FakeTwilioCall) -> bool:
    """The call was dialed with asynchronous answering-machine detection and a callback for its verdict."""
    params = call.params
    return (first(params, "AsyncAmd") or "").lower() == "true" and bool(first(params, "AsyncAmdStatusCallback")) \
        and first(params, "MachineDetection") in ("Enable", "DetectMessageEnd")


def _dialable(to: str) -> bool:
    # besides E.164 numbers Twilio dials client: identities and SIP URIs
    return bool(E164.match(to)) or to.startswith(("client:", "sip:"))


def _events(values: list[str]) -> list[str]:
    # the SDK repeats the key, but a space-separated single value is also seen in the wild
    return [event for value in values for event in value.split()]


def _stream_record(el: ET.Element) -> dict[str, Any]:
    record: dict[str, Any] = dict(el.attrib)
    record["parameters"] = {p.get("name", ""): p.get("value", "") for p in el.findall("Parameter")}
    return record


def _with_default_port(url: str) -> str:
    """https://host/x -> https://host:443/x (Twilio sometimes signs with the default port)."""
    parts = urlsplit(url)
    if parts.port is not None:
        return url
    port = 443 if parts.scheme == "https" else 80
    return urlunsplit((parts.scheme, f"{parts.netloc}:{port}", parts.path, parts.query, parts.fragment))
