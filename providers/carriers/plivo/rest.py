"""Plivo's Voice REST API: make, transfer, hang up and inspect calls, send DTMF."""
from __future__ import annotations

import re
from typing import Any

import httpx

from core.errors import CarrierError

from ..base import ProviderCallStatus, normalize_provider_status
from ..http import CarrierHttp, response_text, segment

BASE_URL = "https://api.plivo.com/v1"
TERMINAL_STATUSES = {"completed", "busy", "failed", "timeout", "no-answer", "cancel", "machine", "hangup"}
_NOT_DIALABLE = re.compile(r"[^\d+]")


def read_error(response: httpx.Response) -> tuple[str, str | None]:
    try:
        data = response.json()
    except ValueError:
        return response_text(response), None
    if isinstance(data, dict) and data.get("error"):
        error = data["error"]
        return (error if isinstance(error, str) else str(error)), None
    return response_text(response), None


def dialable(number: str) -> str:
    """Plivo wants bare digits (a leading + allowed); SIP URIs pass unchanged."""
    return number if number.startswith("sip:") else _NOT_DIALABLE.sub("", number)


class PlivoRest:
    def __init__(self, *, auth_id: str, auth_token: str, base_url: str | None,
                 transport: httpx.BaseTransport | None = None) -> None:
        root = (base_url or BASE_URL).rstrip("/")
        self.http = CarrierHttp(
            carrier="plivo",
            base_url=f"{root}/Account/{segment(auth_id)}",
            error_reader=read_error,
            auth=(auth_id, auth_token),
            transport=transport,
        )

    def make_call(self, body: dict[str, Any]) -> str:
        data = self.http.json(self.http.request("POST", "/Call/", json=body))
        request_uuid = data.get("request_uuid")
        if isinstance(request_uuid, list):
            request_uuid = request_uuid[0] if request_uuid else None
        if not isinstance(request_uuid, str) or not request_uuid:
            raise CarrierError("plivo: the make-call answer has no request_uuid")
        return request_uuid

    def transfer(self, call_uuid: str, aleg_url: str) -> None:
        """Point the live call at new XML (Plivo fetches aleg_url right away)."""
        self.http.request("POST", f"/Call/{segment(call_uuid)}/", json={"legs": "aleg", "aleg_url": aleg_url, "aleg_method": "POST"})

    def hangup(self, call_or_request_uuid: str) -> None:
        """Hang up a live call; an id Plivo does not know as a call may be a request still ringing."""
        if self.http.request("DELETE", f"/Call/{segment(call_or_request_uuid)}/", tolerate=(404,)) is None:
            self.http.request("DELETE", f"/Request/{segment(call_or_request_uuid)}/", tolerate=(404,))

    def record(self, call_uuid: str, body: dict[str, Any]) -> str:
        """Start recording the live call; returns the recording's id."""
        data = self.http.json(self.http.request("POST", f"/Call/{segment(call_uuid)}/Record/", json=body))
        rid = data.get("recording_id")
        return rid if isinstance(rid, str) else ""

    def send_dtmf(self, call_uuid: str, digits: str) -> None:
        self.http.request("POST", f"/Call/{segment(call_uuid)}/DTMF/", json={"digits": digits, "leg": "aleg"})

    def status(self, call_uuid: str) -> ProviderCallStatus:
        return self.http.status_lookup(f"/Call/{segment(call_uuid)}/", _call_status)

    def close(self) -> None:
        self.http.close()


def _call_status(data: dict[str, Any]) -> ProviderCallStatus:
    raw = data.get("call_status")
    status = raw.strip().lower() if isinstance(raw, str) else ""
    if status in TERMINAL_STATUSES:
        normalized = normalize_provider_status(status)
        return normalized if normalized.is_terminal else ProviderCallStatus(status=status, is_terminal=True)
    return normalize_provider_status(status)
