"""Twilio's REST API (Programmable Voice, 2010-04-01): create, update, hang up and fetch calls."""
from __future__ import annotations

from typing import Any

import httpx

from core.errors import CarrierError

from ..base import ProviderCallStatus, normalize_provider_status
from ..http import CarrierHttp, CarrierHttpError, response_text, segment

REGION_HOSTS = {
    "us1": "https://api.twilio.com",
    "ie1": "https://api.dublin.ie1.twilio.com",
    "au1": "https://api.sydney.au1.twilio.com",
}
STATUS_CALLBACK_EVENTS = ("initiated", "ringing", "answered", "completed")
DIAL_TIMEOUT_SECONDS = 30
NOT_IN_PROGRESS = "21220"  # the call cannot be modified (not in progress yet, or over)
LIVE_UPDATE_RETRY_DELAYS = (0.25, 0.75)
# An inbound call is in progress only once Twilio runs the answer's TwiML: a start right after it may be early.
RECORDING_START_RETRY_DELAYS = (0.5, 1.0, 2.0)
RECORDING_CALLBACK_EVENTS = "completed absent"  # one field, space separated


def recording_form(callback: str) -> list[tuple[str, str]]:
    """The fields that ask for a dual-channel recording and its status callbacks (dial and live call alike)."""
    return [
        ("RecordingChannels", "dual"),
        ("RecordingStatusCallback", callback),
        ("RecordingStatusCallbackMethod", "POST"),
        ("RecordingStatusCallbackEvent", RECORDING_CALLBACK_EVENTS),
    ]


def read_error(response: httpx.Response) -> tuple[str, str | None]:
    try:
        data = response.json()
    except ValueError:
        return response_text(response), None
    if not isinstance(data, dict):
        return response_text(response), None
    code = data.get("code")
    message = data.get("message") or data.get("detail") or data.get("title") or response_text(response)
    return str(message), None if code is None else str(code)


class TwilioRest:
    def __init__(self, *, account_sid: str, auth_token: str, region: str, base_url: str | None,
                 transport: httpx.BaseTransport | None = None) -> None:
        root = (base_url or REGION_HOSTS[region]).rstrip("/")
        self.http = CarrierHttp(
            carrier="twilio",
            base_url=f"{root}/2010-04-01/Accounts/{segment(account_sid)}",
            error_reader=read_error,
            auth=(account_sid, auth_token),
            transport=transport,
        )

    def create_call(self, *, to: str, from_: str, status_callback: str, url: str | None = None,
                    twiml: str | None = None, recording_callback: str | None = None,
                    extra: list[tuple[str, str]] = ()) -> dict[str, Any]:
        form = [("To", to), ("From", from_), ("StatusCallback", status_callback)]
        form += [("StatusCallbackEvent", event) for event in STATUS_CALLBACK_EVENTS]
        form.append(("Timeout", str(DIAL_TIMEOUT_SECONDS)))
        if recording_callback:
            form += [("Record", "true"), *recording_form(recording_callback)]
        form += extra
        form.append(("Twiml", twiml) if twiml is not None else ("Url", url or ""))
        response = self.http.request("POST", "/Calls.json", form=form)
        data = self.http.json(response)
        if not isinstance(data.get("sid"), str) or not data["sid"]:
            raise CarrierError("twilio: the create-call answer has no call sid")
        return data

    def update_twiml(self, call_sid: str, twiml: str) -> None:
        """Replace what the live call is doing (retried while Twilio says it is not in progress yet)."""
        self.http.request(
            "POST", f"/Calls/{segment(call_sid)}.json", form=[("Twiml", twiml)],
            retry_codes=(NOT_IN_PROGRESS,), retry_delays=LIVE_UPDATE_RETRY_DELAYS,
        )

    def start_recording(self, call_sid: str, recording_callback: str) -> str:
        """Record the live call from now (both parties, one channel each); returns the recording's sid."""
        response = self.http.request(
            "POST", f"/Calls/{segment(call_sid)}/Recordings.json", form=recording_form(recording_callback),
            retry_codes=(NOT_IN_PROGRESS,), retry_delays=RECORDING_START_RETRY_DELAYS,
        )
        sid = self.http.json(response).get("sid")
        return sid if isinstance(sid, str) else ""

    def hangup(self, call_sid: str) -> None:
        try:
            self.http.request("POST", f"/Calls/{segment(call_sid)}.json", form=[("Status", "completed")], tolerate=(404,))
        except CarrierHttpError as exc:
            if exc.code != NOT_IN_PROGRESS:  # already over: nothing left to hang up
                raise

    def status(self, call_sid: str) -> ProviderCallStatus:
        return self.http.status_lookup(f"/Calls/{segment(call_sid)}.json", lambda data: normalize_provider_status(data.get("status")))

    def close(self) -> None:
        self.http.close()
