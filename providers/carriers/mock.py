"""The mock carrier: no network, JSON webhook events, and an outbox of every request for tests.

Webhook body: {"events": [...]} or {"event": {...}}; each event needs "type" and "callId"
(docs/compatibility.md, Carrier requests). Every control request is appended to `outbox` instead of being sent.

Answering-machine detection: a call dialed with amd on gets its verdict right after its call.answered
event, as a call.amd event the mock adds to the same request: a machine when the number dialed ends in
MACHINE_SUFFIX (machine_end_beep in voicemail mode, machine_start in detect mode), else human. A test may
also post call.amd events itself.
"""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from typing import Any

from core import jsonsafe
from core.events import CallAmd, CallAnswered, EventFormatError, event_from_dict
from core.jsonsafe import JsonInputError

from .base import (
    CarrierBackend,
    ParsedWebhook,
    Prompt,
    DialRequest,
    DialResult,
    ProviderCallStatus,
    WebhookParseError,
    WebhookRequest,
    WebhookVerification,
)


@dataclass(frozen=True)
class CarrierRequest:
    """One thing the gateway asked the mock carrier to do."""

    action: str
    provider_call_id: str | None
    params: dict[str, Any] = field(default_factory=dict)


# Like django.core.mail.outbox: tests read and clear it.
outbox: list[CarrierRequest] = []
_outbox_lock = threading.Lock()
# A number dialed with amd on that ends in this is answered by a machine.
MACHINE_SUFFIX = "0666"
# call id and carrier id → (the verdict its answer brings, both ids): calls dialed with amd on, until answered.
_verdicts: dict[str, tuple[str, str, str]] = {}


def reset_outbox() -> None:
    with _outbox_lock:
        outbox.clear()


def outbox_actions(provider_call_id: str | None = None) -> list[str]:
    """The actions recorded so far (optionally for one call), in order."""
    return [r.action for r in outbox if provider_call_id is None or r.provider_call_id == provider_call_id]


class MockCarrier(CarrierBackend):
    name = "mock"
    supports_dtmf_send = True
    dials_with_dtmf = True
    # The outcome is whatever a test posts next: a call.transfer event naming the transfer.
    supports_transfer = True
    supports_warm_transfer = True

    def _record(self, action: str, provider_call_id: str | None, **params: Any) -> None:
        with _outbox_lock:
            outbox.append(CarrierRequest(action, provider_call_id, params))

    def verify_webhook(self, request: WebhookRequest) -> WebhookVerification:
        # Nothing to verify; the body hash still gives replays a stable key.
        return WebhookVerification(ok=True, request_key="mock:" + hashlib.sha256(request.body).hexdigest())

    def parse_webhook(self, request: WebhookRequest, *, request_key: str) -> ParsedWebhook:
        try:
            data = jsonsafe.loads(request.body)
        except JsonInputError as exc:
            raise WebhookParseError(f"body: {exc}") from None
        if isinstance(data, dict) and isinstance(data.get("events"), list):
            raw_events, where = data["events"], "events"
        elif isinstance(data, dict) and "event" in data:
            raw_events, where = [data["event"]], None
        else:
            raise WebhookParseError('body: expected {"events": [...]} or {"event": {...}}')
        events = []
        for index, raw in enumerate(raw_events):
            label = f"{where}[{index}]" if where else "event"
            try:
                events.append(event_from_dict(raw, where=label, default_dedupe_key=f"{request_key}:{index}"))
            except EventFormatError as exc:
                raise WebhookParseError(str(exc)) from None
        return ParsedWebhook(events=_with_verdicts(events))

    def initiate_call(self, dial: DialRequest) -> DialResult:
        provider_call_id = f"mock-{dial.call_id}"
        self._record(
            "initiate_call",
            provider_call_id,
            to=dial.to_number,
            from_=dial.from_number,
            webhook_url=dial.webhook_url,
            mode=dial.mode,
            initial_message=dial.initial_message,
            dtmf_sequence=dial.dtmf_sequence,
            amd=dial.amd,
            amd_timeout_ms=dial.amd_timeout_ms,
        )
        if dial.amd in ("detect", "voicemail"):
            machine = "machine_end_beep" if dial.amd == "voicemail" else "machine_start"
            verdict = machine if dial.to_number.endswith(MACHINE_SUFFIX) else "human"
            with _outbox_lock:
                _verdicts[dial.call_id] = _verdicts[provider_call_id] = (verdict, dial.call_id, provider_call_id)
        return DialResult(provider_call_id=provider_call_id)

    def leave_message(self, *, call_id: str, provider_call_id: str, text: str, voice: str | None,
                      wait_for_beep: bool) -> None:
        self._record("leave_message", provider_call_id, text=text, voice=voice, wait_for_beep=wait_for_beep)

    def hangup_call(self, *, call_id: str, provider_call_id: str, reason: str) -> None:
        self._record("hangup_call", provider_call_id, reason=reason)

    def play_tts(self, *, call_id: str, provider_call_id: str, text: str, voice: str | None, locale: str | None) -> None:
        self._record("play_tts", provider_call_id, text=text, voice=voice, locale=locale)

    def start_listening(
        self,
        *,
        call_id: str,
        provider_call_id: str,
        turn_token: str | None,
        language: str | None,
        prompt: Prompt | None = None,
    ) -> None:
        self._record("start_listening", provider_call_id, turn_token=turn_token, language=language)

    def stop_listening(self, *, call_id: str, provider_call_id: str) -> None:
        self._record("stop_listening", provider_call_id)

    def send_dtmf(self, *, call_id: str, provider_call_id: str, digits: str) -> None:
        self._record("send_dtmf", provider_call_id, digits=digits)

    def transfer_call(self, *, call_id: str, provider_call_id: str, target: str, transfer_id: str = "") -> str:
        self._record("transfer_call", provider_call_id, target=target, transfer_id=transfer_id)
        return f"mock-transfer-{transfer_id}"

    def warm_transfer(self, *, call_id: str, provider_call_id: str, target: str, summary: str,
                      transfer_id: str = "") -> str:
        self._record("warm_transfer", provider_call_id, target=target, summary=summary, transfer_id=transfer_id)
        return f"mock-transfer-{transfer_id}"

    def get_call_status(self, provider_call_id: str) -> ProviderCallStatus:
        self._record("get_call_status", provider_call_id)
        if any(marker in provider_call_id for marker in ("stale", "ended", "completed")):
            return ProviderCallStatus(status="completed", is_terminal=True)
        return ProviderCallStatus(status="in-progress", is_terminal=False)


def _with_verdicts(events: list) -> list:
    """After the answer of a call dialed with amd on, its detection verdict (once)."""
    out = []
    for event in events:
        out.append(event)
        if not isinstance(event, CallAnswered):
            continue
        with _outbox_lock:
            found = next((_verdicts[ref] for ref in (event.call_id, event.provider_call_id) if ref in _verdicts), None)
            if found is not None:
                for ref in found[1:]:
                    _verdicts.pop(ref, None)
        if found is not None:
            out.append(CallAmd(call_id=event.call_id, provider_call_id=event.provider_call_id,
                               answered_by=found[0], dedupe_key=f"{event.key}:amd"))
    return out
