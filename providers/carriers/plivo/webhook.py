"""Plivo webhooks: V3 (and V2) signature checks and form parameters → normalized events."""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import re
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from core.events import CallAmd, CallAnswered, CallDtmf, CallEnded, CallRecording, CallRinging, CallSpeech, CallTransfer
from core.urls import public_webhook_url

from ..base import EventList, ParsedWebhook, WebhookParseError, WebhookRequest, WebhookVerification, end_detail
from ..public_url import UntrustedHost, signed_url_candidates
from ..recordings import recording_id, recording_url, seconds

if TYPE_CHECKING:
    from core.config import VoiceCallConfig

log = logging.getLogger("providers")

V3_HEADERS = ("x-plivo-signature-v3", "x-plivo-signature-v3-nonce")
V2_HEADERS = ("x-plivo-signature-v2", "x-plivo-signature-v2-nonce")
TRANSCRIPT_FIELDS = ("Speech", "Transcription", "TranscriptionText", "SpeechResult", "RecognizedSpeech", "Text")
END_REASONS = {
    "completed": "completed",
    "busy": "busy",
    "no-answer": "no-answer",
    "timeout": "no-answer",
    "failed": "failed",
    "cancel": "hangup-bot",
}
DIRECTIONS = {"inbound": "inbound", "outbound": "outbound"}
# "start" follows a machine-detection verdict that let a held call go on: it answers as the answer would have.
FETCH_FLOWS = ("xml-speak", "xml-listen", "xml-transfer", "relisten", "keepalive", "start")
# How a transfer's <Dial> ended without reaching the target (DialStatus).
TRANSFER_FAILURES = {
    "busy": "the target's line was busy",
    "no-answer": "the target did not answer",
    "timeout": "the target did not answer",
    "failed": "the call to the target could not be placed",
    "cancel": "the call to the target was canceled",
}
PLAIN_DECIMAL = re.compile(r"^(?:0|1|0?\.\d+|[01]\.\d+)$")


def _grouped(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for name, value in pairs:
        grouped.setdefault(name, []).append(value)
    return grouped


def _sorted_query(params: dict[str, list[str]]) -> str:
    return "&".join(f"{name}={value}" for name in sorted(params) for value in sorted(params[name]))


def v3_base(method: str, url: str, params: dict[str, list[str]]) -> str:
    """The string Plivo signs (V3), built exactly as its SDK does (query decoded and sorted)."""
    parts = urlsplit(url)
    base = f"{parts.scheme}://{parts.netloc}{parts.path}"
    query = parse_qs(parts.query, keep_blank_values=True)
    if method == "GET":
        merged = {name: list(values) for name, values in query.items()}
        for name, values in params.items():
            merged.setdefault(name, []).extend(values)
        text = _sorted_query(merged)
        return base + ("?" + text if text else "")
    text = _sorted_query(query)
    if params:
        base += "?" + text + ("." if text else "")
    elif text:
        base += "?" + text
    return base + "".join(name + value for name in sorted(params) for value in sorted(params[name]))


def _sign(auth_token: str, message: str) -> bytes:
    return hmac.new(auth_token.encode("utf-8"), message.encode("utf-8"), hashlib.sha256).digest()


def _matches(expected: bytes, header: str) -> bool:
    """Any of the comma-separated signatures equals `expected` (compared as decoded bytes)."""
    found = False
    for candidate in header.split(","):
        try:
            provided = base64.b64decode(candidate.strip(), validate=True)
        except (binascii.Error, ValueError):
            continue
        found |= hmac.compare_digest(provided, expected)  # no early exit: constant time per header
    return found


def verify(config: VoiceCallConfig, request: WebhookRequest, auth_token: str) -> WebhookVerification:
    if request.method not in ("GET", "POST"):
        return WebhookVerification(ok=False, reason="Plivo signs only GET and POST requests")
    v3, v3_nonce = (request.header(h) for h in V3_HEADERS)
    v2, v2_nonce = (request.header(h) for h in V2_HEADERS)
    if not (v3 and v3_nonce) and not (v2 and v2_nonce):
        return WebhookVerification(ok=False, reason="missing X-Plivo-Signature-V3 (or V2) and its nonce")
    try:
        params = _grouped(request.form_pairs()) if request.method == "POST" else {}
    except ValueError:
        return WebhookVerification(ok=False, reason="body is not UTF-8 form data")
    try:
        candidates = signed_url_candidates(config, request, public_base=public_webhook_url(config))
    except UntrustedHost as exc:
        return WebhookVerification(ok=False, reason=str(exc))
    for url in candidates:
        if v3 and v3_nonce:
            base = v3_base(request.method, url, params)
            if _matches(_sign(auth_token, f"{base}.{v3_nonce}"), v3):
                digest = hashlib.sha256(f"{base}\n{v3_nonce}".encode()).hexdigest()
                return WebhookVerification(ok=True, request_key=f"plivo:v3:{digest}")
        else:
            without_query = url.split("?", 1)[0]
            if _matches(_sign(auth_token, without_query + v2_nonce), v2):
                digest = hashlib.sha256(f"{without_query}\n{v2_nonce}".encode()).hexdigest()
                return WebhookVerification(ok=True, request_key=f"plivo:v2:{digest}")
    return WebhookVerification(ok=False, reason="X-Plivo-Signature does not match")


def _confidence(raw: str | None) -> float | None:
    if raw and PLAIN_DECIMAL.match(raw.strip()):
        value = float(raw)
        return value if 0 <= value <= 1 else None
    return None


def _recording(params: dict[str, str]) -> dict:
    """A recording callback's fields (Record API or <Record> names); WebhookParseError naming a bad one."""
    def field(*names: str) -> tuple[str, str | None]:
        return next(((name, params[name]) for name in names if params.get(name, "").strip()), (names[0], None))

    id_name, rid = field("RecordingID", "recording_id")
    url_name, url = field("RecordUrl", "record_url")
    ms_name, milliseconds = field("RecordingDurationMs", "recording_duration_ms")
    s_name, whole = field("RecordingDuration", "recording_duration")
    duration = seconds(milliseconds, ms_name, scale=0.001) if milliseconds else seconds(whole, s_name)
    return {
        "recording_id": recording_id(rid, id_name),
        "status": "completed",
        "url": recording_url(url, url_name),
        "duration_seconds": duration,
    }


def parse(request: WebhookRequest, *, request_key: str) -> ParsedWebhook:
    query = request.query
    try:
        pairs = request.form_pairs() if request.method == "POST" else []
    except ValueError:
        raise WebhookParseError("body: not UTF-8 form data") from None
    params = {**query, **dict(pairs)}
    recording = query.get("flow") == "recording"
    # The Record API's callback names its fields in snake case, the <Record> element's in camel case.
    call_uuid = (params.get("CallUUID", "") or (params.get("call_uuid", "") if recording else "")).strip() or None
    request_uuid = params.get("RequestUUID", "").strip() or None
    provider_call_id = call_uuid or request_uuid
    call_id = (query.get("callId") or "").strip() or provider_call_id
    if not call_id:
        raise WebhookParseError("CallUUID: required")
    flow = query.get("flow") or None
    direction = DIRECTIONS.get(params.get("Direction", "").strip().lower())
    status = params.get("CallStatus", "").strip().lower()
    # Redeliveries carry a new nonce but the same content; events dedupe on the content.
    content = "\n".join([request.method, request.path, request.query_string, "&".join(f"{k}={v}" for k, v in sorted(pairs))])
    content_key = "plivo:req:" + hashlib.sha256(content.encode()).hexdigest()
    events = EventList(
        content_key,
        call_id=call_id,
        provider_call_id=provider_call_id,
        direction=direction,
        from_number=params.get("From") or None,
        to_number=params.get("To") or None,
        turn_token=query.get("turnToken") or None,
    )
    add = events.add
    if flow in ("transfer", "transfer-brief"):
        return _transfer(events, query, params, call_id, flow)

    transcript = next((params[name].strip() for name in TRANSCRIPT_FIELDS if params.get(name, "").strip()), "")
    answering = flow in ("answer", "start") or (flow is None and params.get("Event") == "StartApp")
    if recording:
        add(CallRecording, **_recording(params))
    elif params.get("Digits"):
        add(CallDtmf, digits=params["Digits"])
    elif transcript:
        add(CallSpeech, transcript=transcript, is_final=True, confidence=_confidence(params.get("SpeechConfidenceScore")))
    elif (params.get("Event") == "MachineDetection" or flow == "amd") and params.get("Machine", "").strip():
        # In the verdict vocabulary calls keep: Plivo does not say when the greeting ends.
        add(CallAmd, answered_by="machine_start" if params["Machine"].strip().lower() == "true" else "human")
    elif flow == "amd":
        pass  # a detection callback without a verdict says nothing
    elif flow in FETCH_FLOWS:
        pass
    elif status in END_REASONS:
        add(CallEnded, reason=END_REASONS[status], detail=end_detail(
            params.get("HangupCauseName") or params.get("HangupCause"), ("code", params.get("HangupCauseCode")),
            ("hung up by", params.get("HangupSource"))))
    elif answering and status in ("ringing", "in-progress", ""):
        if status == "ringing" or direction == "inbound":
            add(CallRinging)
        add(CallAnswered)  # the answer XML we return is what answers (and runs) the call
    elif status == "ringing":
        add(CallRinging)
    elif status == "in-progress":
        add(CallAnswered)
    elif status:
        log.info("plivo CallStatus %r for %s ignored", status, call_id)
    facts = {"flow": flow, "answering": answering, "turn_token": query.get("turnToken") or None}
    return ParsedWebhook(events=events, call_ref=call_id, document_token=query.get("doc") or None, facts=facts)


def _transfer(events: EventList, query: dict[str, str], params: dict[str, str], call_id: str, flow: str) -> ParsedWebhook:
    """The transfer's <Dial> news: its callbackUrl (DialAction=answer: connected) or its action (DialStatus);
    for a warm transfer, the target leg's answer (flow=transfer-brief: it fetches its document) or its
    hang-up before answering (leg=target).

    Only the transfer's event: the request also describes a leg that is not ours (the caller's, or the target's).
    """
    transfer_id = (query.get("transferId") or "").strip()
    if not transfer_id:
        raise WebhookParseError("transferId: required")
    events = EventList(events.key_prefix, call_id=call_id)
    dial_status = params.get("DialStatus", "").strip().lower()
    status = params.get("CallStatus", "").strip().lower()
    failed = False
    if flow == "transfer-brief":
        events.add(CallTransfer, transfer_id=transfer_id, outcome="connected")
        facts = {"flow": flow, "answering": False, "transfer_failed": False}
        return ParsedWebhook(events=events, call_ref=call_id, document_token=query.get("doc") or None, facts=facts)
    if query.get("leg") == "target":
        if status in TRANSFER_FAILURES:
            # The caller waits in the conference room, and nothing else ends that.
            events.add(CallTransfer, transfer_id=transfer_id, outcome="failed", error=TRANSFER_FAILURES[status],
                       hangup_caller=True)
    elif params.get("DialAction", "").strip().lower() == "answer":
        events.add(CallTransfer, transfer_id=transfer_id, outcome="connected")
    elif dial_status == "completed":
        events.add(CallTransfer, transfer_id=transfer_id, outcome="connected")
    elif dial_status in TRANSFER_FAILURES:
        failed = True
        events.add(CallTransfer, transfer_id=transfer_id, outcome="failed", error=TRANSFER_FAILURES[dial_status])
    facts = {"flow": "transfer", "answering": False, "transfer_failed": failed, "dial_action": bool(params.get("DialAction"))}
    return ParsedWebhook(events=events, call_ref=call_id, facts=facts)
