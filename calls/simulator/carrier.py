"""What each simulated carrier provides the call driver: its webhooks, its stream frames and its REST answers."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from .call import Gateway, SimulatedCall


class Refused(Exception):
    """The gateway did not hand the call to a media stream; the message says what it answered instead."""


@dataclass
class StreamPlan:
    """Where the call's media stream connects and what proves it is the call's."""

    url: str  # the public stream URL the gateway gave the carrier
    token: str | None = None
    headers: dict[str, str] = field(default_factory=dict)  # sent with the WebSocket upgrade
    extra: dict[str, str] = field(default_factory=dict)  # what the carrier echoes in its start frame


@dataclass
class Dial:
    """An outbound call the gateway asked the simulated carrier for (its REST dial request)."""

    sid: str  # the carrier's id for the call, as the dial answer gave it
    to: str
    from_: str
    body: dict[str, Any]  # the dial request's JSON or form fields
    request_id: str = ""  # Plivo: the request UUID the dial answered with (the call UUID comes at answer)


@dataclass
class RestAnswer:
    status: int
    body: Any = None  # JSON-able, or None for an empty body


def local_target(gateway: Gateway, public_url: str) -> str:
    """The gateway's public URL as reached from here: same path and query, on the gateway's base URL."""
    parts = urlsplit(public_url)
    return gateway.base_url.rstrip("/") + parts.path + (f"?{parts.query}" if parts.query else "")


class CarrierSide:
    """One carrier's protocol, shared by every call it simulates (no state of its own per call).

    The call driver (SimulatedCall) asks it to start a call (inbound: the carrier's first webhook;
    outbound: the callee answers a dial), for the frames it sends on the stream, how to read the
    gateway's frames, and to end the call. The REST stub hands it the gateway's REST requests.
    """

    name = ""
    # The gateway's outbound frame events → what the driver does with them.
    outbound_events: dict[str, str] = {"media": "media", "mark": "mark", "clear": "clear"}

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def new_sid(self) -> str:
        raise NotImplementedError

    def new_stream_id(self) -> str:
        raise NotImplementedError

    async def begin_inbound(self, call: SimulatedCall) -> StreamPlan:
        raise NotImplementedError

    async def begin_outbound(self, call: SimulatedCall) -> StreamPlan:
        raise NotImplementedError

    async def end(self, call: SimulatedCall, seconds: int) -> None:
        raise NotImplementedError

    def opening(self, call: SimulatedCall, plan: StreamPlan) -> list[str]:
        raise NotImplementedError

    def media(self, call: SimulatedCall, sequence: int, timestamp_ms: int, payload_b64: str) -> str:
        raise NotImplementedError

    def mark_echo(self, call: SimulatedCall, name: str) -> str:
        raise NotImplementedError

    def cleared(self, call: SimulatedCall) -> str | None:
        """What the carrier says after carrying out a clear (None: nothing)."""
        return None

    def stop(self, call: SimulatedCall) -> str | None:
        """The frame that ends the stream before the socket closes (None: the socket just closes)."""
        return None

    def payload(self, message: dict[str, Any]) -> str:
        return message["media"]["payload"]

    def mark_name(self, message: dict[str, Any]) -> str:
        return message["mark"]["name"]

    def rest(self, stub, method: str, path: str, body: dict[str, Any]) -> RestAnswer:
        """The gateway's REST request (on the stub's thread): its answer; calls are reached through the stub."""
        raise NotImplementedError
