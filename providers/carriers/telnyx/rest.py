"""Telnyx Call Control v2 REST: dial, and commands on a call (answer, speak, transcription, DTMF, hangup)."""
from __future__ import annotations

import uuid
from typing import Any

import httpx

from core.errors import CarrierError

from ..base import ProviderCallStatus
from ..http import UNKNOWN_STATUS, CarrierHttp, CarrierHttpError, response_text, segment

BASE_URL = "https://api.telnyx.com/v2"
DIAL_TIMEOUT_SECONDS = 30
CALL_ENDED = "90018"  # a command reached a call that is already over


def read_error(response: httpx.Response) -> tuple[str, str | None]:
    try:
        data = response.json()
    except ValueError:
        return response_text(response), None
    errors = data.get("errors") if isinstance(data, dict) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        first = errors[0]
        message = first.get("detail") or first.get("title") or response_text(response)
        code = first.get("code")
        return str(message), None if code is None else str(code)
    return response_text(response), None


class TelnyxRest:
    def __init__(self, *, api_key: str, base_url: str | None, transport: httpx.BaseTransport | None = None) -> None:
        self.http = CarrierHttp(
            carrier="telnyx",
            base_url=base_url or BASE_URL,
            error_reader=read_error,
            headers={"Authorization": f"Bearer {api_key}"},
            transport=transport,
        )

    def dial(self, body: dict[str, Any]) -> str:
        data = self.http.json(self.http.request("POST", "/calls", json=body)).get("data")
        control_id = data.get("call_control_id") if isinstance(data, dict) else None
        if not isinstance(control_id, str) or not control_id:
            raise CarrierError("telnyx: the dial answer has no call_control_id")
        return control_id

    def command(self, call_control_id: str, action: str, body: dict[str, Any] | None = None, *,
                ended_ok: bool = False) -> None:
        """POST /calls/{id}/actions/{action}. With ended_ok, a call that is gone counts as done."""
        body = {"command_id": str(uuid.uuid4()), **(body or {})}
        try:
            self.http.request("POST", f"/calls/{segment(call_control_id)}/actions/{action}", json=body,
                              tolerate=(404,) if ended_ok else ())
        except CarrierHttpError as exc:
            if not (ended_ok and exc.code == CALL_ENDED):
                raise

    def status(self, call_control_id: str) -> ProviderCallStatus:
        return self.http.status_lookup(f"/calls/{segment(call_control_id)}", _alive_status)

    def close(self) -> None:
        self.http.close()


def _alive_status(body: dict[str, Any]) -> ProviderCallStatus:
    data = body.get("data")
    alive = data.get("is_alive") if isinstance(data, dict) else None
    if not isinstance(alive, bool):
        return UNKNOWN_STATUS
    return ProviderCallStatus(status="in-progress" if alive else "completed", is_terminal=not alive)
