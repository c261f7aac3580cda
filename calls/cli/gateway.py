"""The CLI's side of delegation: call the running gateway's RPC, or say it is not there.

Only a gateway that cannot be reached (nothing listening, connection refused or timed out while
connecting) lets the CLI fall back to a standalone runtime; a gateway that answers, even with an
error, is the one in charge and its answer is final.
"""
from __future__ import annotations

import time
from typing import Any

import httpx
from django.conf import settings

from calls.config import get_config
from calls.rpc_tokens import client_token
from core.errors import VoiceCallError

DEFAULT_TIMEOUT_S = 5.0
POLL_INTERVAL_S = 1.0
# The reference's fallback poll window when the gateway does not say: transcript timeout + 30 s + 10 s.
POLL_BUFFER_MS = 40_000
DIAL_GRACE_MS = 5_000
OFF = "off"
RPC_PATH = "/voice/rpc"


class GatewayUnreachable(Exception):
    """Nothing answers at the gateway URL: the caller may run the command standalone."""

    def __init__(self, message: str, *, quiet: bool = False) -> None:
        super().__init__(message)
        self.quiet = quiet  # delegation switched off on purpose: nothing worth a note


class GatewayError(VoiceCallError):
    """The gateway answered with an error (or not in JSON-RPC): report it, do not fall back."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


def gateway_url() -> str | None:
    """The RPC endpoint: VOICECALL_GATEWAY_URL, else serve.bind:serve.port; None when set to "off"."""
    configured = settings.VOICECALL_GATEWAY_URL.strip()
    if configured.lower() == OFF:
        return None
    if configured:
        base = configured.rstrip("/")
        return base if base.endswith(RPC_PATH) else base + RPC_PATH
    serve = get_config().config.serve
    host = serve.bind if serve.bind not in ("", "0.0.0.0", "::") else "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{serve.port}{RPC_PATH}"


def placement_timeout_s() -> float:
    """Placing a call may wait for the carrier: max(30 s, ringTimeoutMs + 5 s)."""
    return max(30.0, (get_config().config.ring_timeout_ms + DIAL_GRACE_MS) / 1000)


def rpc_call(method: str, params: dict[str, Any], *, timeout: float = DEFAULT_TIMEOUT_S) -> Any:
    """One JSON-RPC request; returns its result, raises GatewayError or GatewayUnreachable."""
    url = gateway_url()
    if url is None:
        raise GatewayUnreachable("gateway delegation is off (VOICECALL_GATEWAY_URL=off)", quiet=True)
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {k: v for k, v in params.items() if v is not None}}
    try:
        response = httpx.post(
            url, json=body, timeout=httpx.Timeout(timeout, connect=min(timeout, 2.0)),
            headers={"Authorization": f"Bearer {client_token()}"},
        )
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        raise GatewayUnreachable(f"no gateway at {url} ({exc})") from exc
    except httpx.TimeoutException as exc:
        raise GatewayError(f"gateway timeout after {int(timeout * 1000)}ms") from exc
    except httpx.HTTPError as exc:
        raise GatewayError(f"gateway request to {url} failed: {exc}") from exc
    try:
        reply = response.json()
    except ValueError:
        raise GatewayError(f"{url} answered HTTP {response.status_code} without JSON-RPC: is it the voice-call gateway?") from None
    if not isinstance(reply, dict) or ("result" not in reply and "error" not in reply):
        raise GatewayError(f"{url} answered HTTP {response.status_code} without JSON-RPC: is it the voice-call gateway?")
    if "error" in reply:
        error = reply["error"] if isinstance(reply["error"], dict) else {}
        message = str(error.get("message") or "gateway error")
        if response.status_code == 401:
            message += " (set VOICECALL_RPC_TOKEN to one of the gateway's write tokens)"
        raise GatewayError(message, code=error.get("code"))
    return reply["result"]


def continue_via_gateway(call_id: str, message: str, *, sleep=time.sleep, clock=time.monotonic) -> Any:
    """continue.start, then poll continue.result every second until it finishes or the window closes."""
    from calls.rpc import METHOD_NOT_FOUND

    fallback_ms = get_config().config.transcript_timeout_ms + POLL_BUFFER_MS
    try:
        started = rpc_call("voicecall.continue.start", {"callId": call_id, "message": message})
    except GatewayError as exc:
        if exc.code != METHOD_NOT_FOUND:
            raise
        # An older gateway without operations: the blocking call, with the whole window as timeout.
        return rpc_call("voicecall.continue", {"callId": call_id, "message": message}, timeout=fallback_ms / 1000)
    if not isinstance(started, dict) or not isinstance(started.get("operationId"), str):
        return started
    window_ms = started.get("pollTimeoutMs")
    window_ms = window_ms if isinstance(window_ms, int) and window_ms > 0 else fallback_ms
    deadline = clock() + window_ms / 1000
    while True:
        remaining = deadline - clock()
        if remaining <= 0:
            break
        result = rpc_call(
            "voicecall.continue.result", {"operationId": started["operationId"]},
            timeout=min(DEFAULT_TIMEOUT_S, max(remaining, 0.1)),
        )
        status = result.get("status") if isinstance(result, dict) else None
        if status == "completed":
            return result.get("result")
        if status == "failed":
            raise GatewayError(str(result.get("error") or "continue failed"))
        if status != "pending":
            raise GatewayError("voicecall gateway response has unknown operation status")
        pause = min(POLL_INTERVAL_S, deadline - clock())
        if pause <= 0:
            break
        sleep(pause)
    raise GatewayError("voicecall continue timed out waiting for gateway operation")
