"""Telnyx Call Control webhooks: Ed25519 signature checks and JSON events → normalized events."""
from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import math
import time
from datetime import datetime, timezone
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from core import jsonsafe
from core.config.keys import b64decode
from core.events import (
    LAST_MILLISECOND,
    CallActive,
    CallAmd,
    CallAnswered,
    CallDtmf,
    CallEnded,
    CallInitiated,
    CallRecording,
    CallRinging,
    CallSpeaking,
    CallSpeech,
    CallSpoken,
    CallStreamFailed,
    CallTransfer,
    NormalizedEvent,
)
from core.jsonsafe import JsonInputError

from ..base import ParsedWebhook, WebhookParseError, WebhookRequest, WebhookVerification, end_detail
from ..recordings import recording_id, recording_url

log = logging.getLogger("providers")

SIGNATURE_HEADER = "telnyx-signature-ed25519"
TIMESTAMP_HEADER = "telnyx-timestamp"
TOLERANCE_SECONDS = 300

HANGUP_CAUSES = {
    "normal_clearing": "completed",
    "normal_unspecified": "completed",
    "originator_cancel": "hangup-bot",
    "call_rejected": "busy",
    "user_busy": "busy",
    "no_answer": "no-answer",
    "no_user_response": "no-answer",
    "timeout": "no-answer",
    "destination_out_of_order": "failed",
    "network_out_of_order": "failed",
    "service_unavailable": "failed",
    "recovery_on_timer_expire": "failed",
    "not_found": "failed",
    "machine_detected": "voicemail",
    "fax_detected": "voicemail",
    "user_hangup": "hangup-user",
    "subscriber_absent": "hangup-user",
    "time_limit": "timeout",
}
DIRECTIONS = {"incoming": "inbound", "inbound": "inbound", "outgoing": "outbound", "outbound": "outbound"}
SIMPLE_EVENTS = {
    "call.initiated": CallInitiated,
    "call.ringing": CallRinging,
    "call.answered": CallAnswered,
    "call.bridged": CallActive,
}
AMD_EVENTS = ("call.machine.detection.ended", "call.machine.premium.detection.ended")
RECORDING_EVENTS = ("call.recording.saved", "call.recording.error")
GREETING_EVENTS = ("call.machine.greeting.ended", "call.machine.premium.greeting.ended")
# Telnyx's results in the verdict vocabulary calls keep (Twilio's AnsweredBy): a machine is machine_start
# until its greeting ends (greeting.ended: machine_end_*).
AMD_RESULTS = {
    "human": "human", "human_residence": "human", "human_business": "human",
    "machine": "machine_start", "fax_detected": "fax", "silence": "unknown", "not_sure": "unknown",
}
GREETING_RESULTS = {"beep_detected": "machine_end_beep", "ended": "machine_end_other",
                    "no_beep_detected": "machine_end_other", "not_sure": "machine_end_other"}
ACKNOWLEDGED_ONLY = ("streaming.started", "streaming.stopped")
# client_state of a transfer's new leg: "transfer:<our call id>:<transfer id>" (target_leg_client_state).
TRANSFER_STATE = "transfer:"
TRANSFER_FAILURES = {
    "busy": "the target's line was busy",
    "no-answer": "the target did not answer",
    "failed": "the call to the target could not be placed",
}


def verify(request: WebhookRequest, public_key: Ed25519PublicKey | None, *, now: float | None = None) -> WebhookVerification:
    if public_key is None:
        return WebhookVerification(ok=False, reason="Missing telnyx.publicKey")
    signature_text = (request.header(SIGNATURE_HEADER) or "").strip()
    timestamp = (request.header(TIMESTAMP_HEADER) or "").strip()
    if not signature_text or not timestamp:
        return WebhookVerification(ok=False, reason="missing telnyx-signature-ed25519 or telnyx-timestamp")
    if not (timestamp.isascii() and timestamp.isdigit()):  # "²" is a digit to str.isdigit
        return WebhookVerification(ok=False, reason="telnyx-timestamp is not whole seconds")
    skew = abs((time.time() if now is None else now) - int(timestamp))
    if skew > TOLERANCE_SECONDS:
        return WebhookVerification(ok=False, reason=f"Timestamp too old or too new ({math.ceil(skew)}s off)")
    try:
        signature = b64decode(signature_text)
    except (binascii.Error, ValueError):
        return WebhookVerification(ok=False, reason="telnyx-signature-ed25519 is not base64")
    if len(signature) != 64:
        return WebhookVerification(ok=False, reason="telnyx-signature-ed25519 has the wrong length")
    try:
        public_key.verify(signature, timestamp.encode("ascii") + b"|" + request.body)
    except InvalidSignature:
        return WebhookVerification(ok=False, reason="telnyx-signature-ed25519 does not match")
    # The decoded signature, so re-encoding it (padding, base64url) cannot make a new replay key.
    material = b"\n".join([timestamp.encode(), signature, request.body])
    return WebhookVerification(ok=True, request_key="telnyx:" + hashlib.sha256(material).hexdigest())


def decode_client_state(value: Any) -> str | None:
    """Our call id from client_state (strict base64 of UTF-8 text), or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        decoded = base64.b64decode(value, validate=True).decode("utf-8").strip()
    except (binascii.Error, ValueError):
        log.warning("telnyx client_state %r is not base64 text; ignored", value[:40])
        return None
    return decoded or None


def encode_client_state(call_id: str) -> str:
    return base64.b64encode(call_id.encode("utf-8")).decode("ascii")


def transfer_client_state(call_id: str, transfer_id: str) -> str:
    """The state a transfer's new leg carries, so its webhooks name our call and the transfer."""
    return encode_client_state(f"{TRANSFER_STATE}{call_id}:{transfer_id}")


def _timestamp_ms(value: Any) -> int | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        # Round-trip through UTC so a time at the edge of the calendar is refused here, not later.
        milliseconds = int(moment.astimezone(timezone.utc).timestamp() * 1000)
    except (ValueError, OverflowError, OSError):
        return None
    return milliseconds if 0 <= milliseconds < LAST_MILLISECOND else None


def _text(payload: dict[str, Any], name: str) -> str | None:
    value = payload.get(name)
    return value.strip() or None if isinstance(value, str) else None


def parse(request: WebhookRequest, *, request_key: str) -> ParsedWebhook:
    try:
        envelope = jsonsafe.loads(request.body)
    except JsonInputError as exc:
        raise WebhookParseError(f"body: {exc}") from None
    data = envelope.get("data") if isinstance(envelope, dict) else None
    if not isinstance(data, dict) or not isinstance(data.get("event_type"), str):
        return ParsedWebhook()  # nothing we act on; acknowledged so Telnyx does not retry
    event_type = data["event_type"]
    payload = data.get("payload") if isinstance(data.get("payload"), dict) else {}
    control_id = _text(payload, "call_control_id")
    call_id = decode_client_state(payload.get("client_state")) or control_id
    if call_id and call_id.startswith(TRANSFER_STATE):
        return _transfer(request_key, data, event_type, payload, call_id)
    if not call_id:
        log.warning("telnyx %s without call_control_id acknowledged and ignored", event_type)
        return ParsedWebhook(facts={"event_type": event_type})
    common: dict[str, Any] = {
        "call_id": call_id,
        "provider_call_id": control_id,
        "direction": DIRECTIONS.get(str(payload.get("direction", "")).lower()),
        "from_number": _text(payload, "from"),
        "to_number": _text(payload, "to"),
        # Telnyx redelivers with a new signature but the same event id: dedupe on the id.
        "dedupe_key": f"telnyx:event:{data['id']}" if isinstance(data.get("id"), str) and data["id"] else f"{request_key}:0",
    }
    occurred = _timestamp_ms(data.get("occurred_at"))
    if occurred is not None:
        common["timestamp"] = occurred
    event = _event(event_type, payload, common)
    return ParsedWebhook(events=[event] if event else [], call_ref=call_id, facts={"event_type": event_type})


def _event(event_type: str, payload: dict[str, Any], common: dict[str, Any]) -> NormalizedEvent | None:
    if event_type in SIMPLE_EVENTS:
        return SIMPLE_EVENTS[event_type](**common)
    if event_type == "call.speak.started":
        return CallSpeaking(**common, text=_text(payload, "text") or "")
    if event_type == "call.speak.ended":
        return CallSpoken(**common)
    if event_type == "call.transcription":
        return _speech(payload, common)
    if event_type == "call.hangup":
        cause = str(payload.get("hangup_cause") or "").lower()
        if cause not in HANGUP_CAUSES:
            log.warning("telnyx hangup_cause %r not known; call ended as completed", cause)
        return CallEnded(**common, reason=HANGUP_CAUSES.get(cause, "completed"), detail=end_detail(
            payload.get("hangup_cause"), ("SIP", payload.get("sip_hangup_cause")), ("hung up by", payload.get("hangup_source"))))
    if event_type == "call.dtmf.received":
        digit = _text(payload, "digit")
        return CallDtmf(**common, digits=digit) if digit else None
    if event_type in RECORDING_EVENTS:
        return _recording(event_type, payload, common)
    if event_type in AMD_EVENTS or event_type in GREETING_EVENTS:
        result = _text(payload, "result")
        if not result:
            return None
        results = AMD_RESULTS if event_type in AMD_EVENTS else GREETING_RESULTS
        return CallAmd(**common, answered_by=results.get(result.lower(), result))
    if event_type == "streaming.failed":
        # The stream the call was answered with will never connect: the gateway must not wait for it.
        # Never a call of its own: only a call the gateway knows has a stream to fail.
        return CallStreamFailed(**{**common, "direction": None}, error=(_text(payload, "failure_reason") or "unknown")[:200])
    if event_type not in ACKNOWLEDGED_ONLY:
        log.info("telnyx event %s acknowledged and ignored", event_type)
    return None


def _recording(event_type: str, payload: dict[str, Any], common: dict[str, Any]) -> CallRecording:
    """call.recording.saved (the file is ready) or call.recording.error; WebhookParseError naming a bad field."""
    fallback = common["dedupe_key"]
    rid = recording_id(_text(payload, "recording_id") or fallback, "recording_id")
    # A recording callback never creates a call: without a direction an unknown call stays unknown.
    fields = {**common, "direction": None}
    if event_type == "call.recording.error":
        reason = _text(payload, "reason") or _text(payload, "error") or "unknown"
        return CallRecording(**fields, recording_id=rid, status="failed", error=f"the carrier's recording failed: {reason}"[:500])
    url = None
    for name in ("recording_urls", "public_recording_urls"):
        urls = payload.get(name)
        if urls is not None and not isinstance(urls, dict):
            raise WebhookParseError(f"{name}: expected an object")
        for kind in ("wav", "mp3"):
            if url is None and isinstance(urls, dict) and isinstance(urls.get(kind), str) and urls[kind].strip():
                url = recording_url(urls[kind], f"{name}.{kind}")
    if url is None:
        raise WebhookParseError("recording_urls: required (a wav or mp3 URL)")
    started = _timestamp_ms(payload.get("recording_started_at"))
    ended = _timestamp_ms(payload.get("recording_ended_at"))
    duration = (ended - started) / 1000 if started is not None and ended is not None and ended >= started else None
    channels = {"single": 1, "dual": 2}.get(str(payload.get("channels") or "").lower())
    return CallRecording(**fields, recording_id=rid, status="completed", url=url, duration_seconds=duration, channels=channels)


def _speech(payload: dict[str, Any], common: dict[str, Any]) -> CallSpeech | None:
    data = payload.get("transcription_data") if isinstance(payload.get("transcription_data"), dict) else {}
    transcript = _text(data, "transcript") or _text(payload, "transcription")
    if not transcript:
        return None
    is_final = data.get("is_final", True)
    confidence = data.get("confidence")
    if not isinstance(confidence, (int, float)) or isinstance(confidence, bool) or not 0 <= confidence <= 1:
        confidence = None
    return CallSpeech(**common, transcript=transcript, is_final=is_final if isinstance(is_final, bool) else True,
                      confidence=None if confidence is None else float(confidence))


def _transfer(request_key: str, data: dict[str, Any], event_type: str, payload: dict[str, Any], state: str) -> ParsedWebhook:
    """A webhook of a transfer's new leg: answered (or bridged to the caller) is connected; hung up first is failed.

    Telnyx leaves the caller's leg up when the transfer fails, so the failure asks for it to be hung
    up. The new leg's call_control_id is not ours: it never re-keys our call.
    """
    call_id, _, transfer_id = state[len(TRANSFER_STATE):].partition(":")
    if not call_id or not transfer_id:
        log.warning("telnyx transfer client_state %r without a call and transfer id ignored", state[:80])
        return ParsedWebhook(facts={"event_type": event_type})
    key = f"telnyx:event:{data['id']}" if isinstance(data.get("id"), str) and data["id"] else f"{request_key}:0"
    common: dict[str, Any] = {"call_id": call_id, "dedupe_key": key, "transfer_id": transfer_id}
    occurred = _timestamp_ms(data.get("occurred_at"))
    if occurred is not None:
        common["timestamp"] = occurred
    event = None
    if event_type in ("call.answered", "call.bridged"):
        event = CallTransfer(**common, outcome="connected")
    elif event_type == "call.hangup":
        cause = str(payload.get("hangup_cause") or "").lower()
        reason = HANGUP_CAUSES.get(cause, "failed")
        error = TRANSFER_FAILURES.get(reason, f"the target's leg ended ({cause or 'no cause given'})")
        event = CallTransfer(**common, outcome="failed", error=error, hangup_caller=True)
    return ParsedWebhook(events=[event] if event else [], call_ref=call_id, facts={"event_type": event_type})
