"""Twilio webhooks: X-Twilio-Signature verification and form parameters → normalized events."""
from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
from typing import TYPE_CHECKING

from core.events import (
    CallAmd, CallAnswered, CallDtmf, CallEnded, CallInitiated, CallRecording, CallRinging, CallSpeech, CallTransfer,
)
from core.urls import public_webhook_url

from ..base import EventList, ParsedWebhook, WebhookParseError, WebhookRequest, WebhookVerification, end_detail
from ..public_url import UntrustedHost, signed_url_candidates
from ..recordings import recording_id, recording_url, seconds

if TYPE_CHECKING:
    from core.config import VoiceCallConfig

log = logging.getLogger("providers")

SIGNATURE_HEADER = "x-twilio-signature"
DEFAULT_CONFIDENCE = 0.9
PLAIN_DECIMAL = re.compile(r"^(?:0|1|0?\.\d+|[01]\.\d+)$")
STATUS_EVENTS = {"initiated": CallInitiated, "ringing": CallRinging, "in-progress": CallAnswered, "answered": CallAnswered}
END_REASONS = {"completed": "completed", "busy": "busy", "no-answer": "no-answer", "failed": "failed", "canceled": "hangup-bot"}
DIRECTIONS = {"inbound": "inbound", "outbound-api": "outbound", "outbound-dial": "outbound"}
# Requests the gateway itself scheduled (redirects) that only fetch TwiML: no status events.
# "resume" follows digits sent on a streamed call: the update that played them ended its stream.
# "start" follows an answering-machine verdict that let a held call go on: it answers as the answer would have.
FETCH_FLOWS = ("keepalive", "relisten", "resume", "start")
# RecordingStatus → the recording's status; "absent" is a recording with no audio in it.
RECORDING_STATUSES = {"in-progress": "in-progress", "completed": "completed", "absent": "failed", "failed": "failed"}
# How a transfer's dial (DialCallStatus) or the target's own leg (CallStatus) did not reach anyone.
TRANSFER_FAILURES = {
    "busy": "the target's line was busy",
    "no-answer": "the target did not answer",
    "failed": "the call to the target could not be placed",
    "canceled": "the call to the target was canceled",
}


def _canonical(params: list[tuple[str, str]]) -> str:
    """Twilio's parameter string: names sorted, each distinct value sorted, as name+value."""
    by_name: dict[str, set[str]] = {}
    for name, value in params:
        by_name.setdefault(name, set()).add(value)
    return "".join(name + value for name in sorted(by_name) for value in sorted(by_name[name]))


def signature(auth_token: str, url: str, params: list[tuple[str, str]]) -> str:
    digest = hmac.new(auth_token.encode("utf-8"), (url + _canonical(params)).encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def verify(config: VoiceCallConfig, request: WebhookRequest, auth_token: str) -> WebhookVerification:
    provided = request.header(SIGNATURE_HEADER)
    if not provided:
        return WebhookVerification(ok=False, reason="missing X-Twilio-Signature")
    query = request.query
    if "bodySHA256" in query:
        # JSON-body webhooks: the body is bound by its hash in the (signed) URL.
        actual = hashlib.sha256(request.body).hexdigest().encode()
        if not hmac.compare_digest(actual, query["bodySHA256"].lower().encode("utf-8")):
            return WebhookVerification(ok=False, reason="bodySHA256 does not match the body")
        params: list[tuple[str, str]] = []
    else:
        try:
            params = request.form_pairs()
        except ValueError:
            return WebhookVerification(ok=False, reason="body is not UTF-8 form data")
    try:
        candidates = signed_url_candidates(config, request, public_base=public_webhook_url(config))
    except UntrustedHost as exc:
        return WebhookVerification(ok=False, reason=str(exc))
    for url in candidates:
        if hmac.compare_digest(signature(auth_token, url, params).encode(), provided.strip().encode()):
            material = "\n".join([url, "&".join(f"{k}={v}" for k, v in sorted(params)), provided.strip()])
            return WebhookVerification(ok=True, request_key="twilio:req:" + hashlib.sha256(material.encode()).hexdigest())
    return WebhookVerification(ok=False, reason="X-Twilio-Signature does not match")


def _confidence(raw: str | None) -> float:
    # Only plain decimals in [0, 1]; anything else (1e-3, NaN, "high") gets the default.
    if raw and PLAIN_DECIMAL.match(raw.strip()):
        value = float(raw)
        if 0 <= value <= 1:
            return value
    return DEFAULT_CONFIDENCE


def request_kind(query: dict[str, str], params: dict[str, str]) -> str:
    """status | amd | recording | transfer | keepalive | relisten | resume | gather (an input result) | voice (a TwiML fetch)."""
    if query.get("type") in ("status", "amd", "recording", "transfer"):
        return query["type"]
    if query.get("flow") in FETCH_FLOWS:
        return query["flow"]
    if "SpeechResult" in params or "Digits" in params:
        return "gather"
    return "voice"


def _recording(params: dict[str, str]) -> dict:
    """A RecordingStatusCallback's fields (WebhookParseError naming a missing or malformed one)."""
    raw = params.get("RecordingStatus", "").strip().lower()
    if raw not in RECORDING_STATUSES:
        raise WebhookParseError(f"RecordingStatus: expected one of {', '.join(RECORDING_STATUSES)}, got {raw!r}")
    status = RECORDING_STATUSES[raw]
    channels = params.get("RecordingChannels", "").strip()
    if channels and channels not in ("1", "2"):
        raise WebhookParseError("RecordingChannels: expected 1 or 2")
    error = None
    if status == "failed":
        code = params.get("ErrorCode", "").strip()
        error = "the carrier recorded no audio (absent)" if raw == "absent" else "the carrier's recording failed"
        error += f" (error {code})" if code and code != "0" else ""
    return {
        "recording_id": recording_id(params.get("RecordingSid"), "RecordingSid"),
        "status": status,
        "url": recording_url(params.get("RecordingUrl"), "RecordingUrl", required=status == "completed"),
        "duration_seconds": seconds(params.get("RecordingDuration"), "RecordingDuration"),
        "channels": int(channels) if channels else None,
        "error": error,
    }


def parse(request: WebhookRequest, *, request_key: str) -> ParsedWebhook:
    if "bodySHA256" in request.query:
        raise WebhookParseError("body: JSON webhooks are not voice call webhooks (expected form data)")
    try:
        params = request.form()
    except ValueError:
        raise WebhookParseError("body: not UTF-8 form data") from None
    query = request.query
    call_sid = params.get("CallSid", "").strip() or None
    call_id = (query.get("callId") or "").strip() or call_sid
    if not call_id:
        raise WebhookParseError("CallSid: required")
    kind = request_kind(query, params)
    if kind == "transfer":
        return _transfer(request_key, query, params, call_id)
    raw_direction = params.get("Direction", "").strip().lower()
    direction = DIRECTIONS.get(raw_direction)
    status = params.get("CallStatus", "").strip().lower()
    events = EventList(
        request_key,
        call_id=call_id,
        provider_call_id=call_sid,
        direction=direction,
        from_number=params.get("From") or None,
        to_number=params.get("To") or None,
        turn_token=query.get("turnToken") or None,
    )
    add = events.add

    speech = params.get("SpeechResult", "").strip()
    if kind == "amd":
        answered_by = params.get("AnsweredBy", "").strip()
        if answered_by:  # blank after trimming (e.g. a lone CR) says nothing
            add(CallAmd, answered_by=answered_by)
    elif kind == "recording":
        add(CallRecording, **_recording(params))
    elif speech:
        add(CallSpeech, transcript=speech, is_final=True, confidence=_confidence(params.get("Confidence")))
    elif params.get("Digits"):
        add(CallDtmf, digits=params["Digits"])
    elif kind in FETCH_FLOWS:
        pass
    elif status in END_REASONS:
        sip = params.get("SipResponseCode")
        add(CallEnded, reason=END_REASONS[status], detail=end_detail(None, ("SIP response", sip)))
    elif status in STATUS_EVENTS:
        add(STATUS_EVENTS[status])
        if direction == "inbound" and kind == "voice" and status == "ringing":
            # Twilio answers an inbound call by running the TwiML we return for this request.
            add(CallAnswered)
    elif not status and direction == "inbound" and kind == "voice":
        add(CallInitiated)
        add(CallAnswered)  # answered by the TwiML we return, as with CallStatus=ringing
    elif status and status != "queued":
        log.info("twilio CallStatus %r for %s ignored", status, call_id)
    facts = {
        "kind": kind,
        "status": status,
        "direction": direction,
        "turn_token": query.get("turnToken") or None,
        "answering": kind == "start" or (
            kind == "voice" and (status == "in-progress" or (direction == "inbound" and status in ("ringing", "")))),
    }
    return ParsedWebhook(events=events, call_ref=call_id, facts=facts)


def _transfer(request_key: str, query: dict[str, str], params: dict[str, str], call_id: str) -> ParsedWebhook:
    """A transfer's news: the dial's end (its action, DialCallStatus), the target's answer (the <Number>'s
    status callback), or, for a warm transfer, the target leg's own status (leg=target).

    The request's CallSid may be the target's leg: it never re-keys our call (no carrier id on the event).
    """
    transfer_id = (query.get("transferId") or "").strip()
    if not transfer_id:
        raise WebhookParseError("transferId: required")
    events = EventList(request_key, call_id=call_id)
    dial_status = params.get("DialCallStatus", "").strip().lower()
    status = params.get("CallStatus", "").strip().lower()
    failed = False
    if dial_status:
        if dial_status in ("completed", "answered"):
            events.add(CallTransfer, transfer_id=transfer_id, outcome="connected")
        elif dial_status in TRANSFER_FAILURES:
            failed = True
            events.add(CallTransfer, transfer_id=transfer_id, outcome="failed", error=TRANSFER_FAILURES[dial_status])
    elif status in ("in-progress", "answered"):
        events.add(CallTransfer, transfer_id=transfer_id, outcome="connected")
    elif status in TRANSFER_FAILURES:
        # The target's leg of a warm transfer: the caller waits on hold, and nothing else ends that.
        events.add(CallTransfer, transfer_id=transfer_id, outcome="failed", error=TRANSFER_FAILURES[status],
                   hangup_caller=query.get("leg") == "target")
    return ParsedWebhook(events=events, call_ref=call_id, facts={"kind": "transfer", "transfer_failed": failed})
