"""HTTP plumbing shared by the cloud TTS providers: POST a request, stream the audio body, map errors to TtsError."""
from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import AsyncIterator
from typing import Any

import httpx

from providers.tls import http_tls
from providers.tts.base import TtsError, TtsProvider

ERROR_BODY_LIMIT = 16 * 1024  # an error body is a small JSON document; never buffer an unbounded one
ERROR_TEXT_LIMIT = 300
# Idle connections to the speech APIs kept open between replies: the next reply starts without a
# new TCP and TLS handshake (a round trip or three to a cloud API).
KEEPALIVE_CONNECTIONS = 32
KEEPALIVE_SECONDS = 30.0

# One client per event loop (the gateway runs one; tests run many): built once, reused by every
# request on that loop, dropped with the loop.
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = weakref.WeakKeyDictionary()


def shared_client() -> httpx.AsyncClient:
    """This event loop's HTTP client for the TTS providers (the shared TLS context, a keep-alive pool)."""
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None or client.is_closed:
        client = httpx.AsyncClient(verify=http_tls(), limits=httpx.Limits(
            max_keepalive_connections=KEEPALIVE_CONNECTIONS, keepalive_expiry=KEEPALIVE_SECONDS))
        _clients[loop] = client
    return client


def require_api_key(provider: TtsProvider) -> str:
    """The provider's key, or TtsError before any request is made."""
    key = provider.api_key()
    if not key:
        raise TtsError(f"{provider.name}: no API key (set apiKey or {provider.api_key_env})")
    return key


def error_detail(raw: bytes) -> str:
    """The human message in an API error body: OpenAI's {"error":{"message"}}, ElevenLabs' {"detail":…}, or text."""
    text = raw.decode("utf-8", "replace").strip()
    try:
        payload = json.loads(text)
    except ValueError:
        return text[:ERROR_TEXT_LIMIT]
    return (_message_of(payload) or text)[:ERROR_TEXT_LIMIT]


def _message_of(payload: Any) -> str:
    if isinstance(payload, str):
        return payload
    if isinstance(payload, list):  # ElevenLabs validation errors: [{"loc": [...], "msg": "..."}]
        return "; ".join(filter(None, (_message_of(item) for item in payload)))
    if isinstance(payload, dict):
        for key in ("error", "detail"):
            message = _message_of(payload.get(key))
            if message:
                return message
        if isinstance(payload.get("message"), str):
            return payload["message"]
        if isinstance(payload.get("msg"), str):
            where = ".".join(str(part) for part in payload.get("loc") or ())
            return f"{where}: {payload['msg']}" if where else payload["msg"]
    return ""


async def post_stream(provider: TtsProvider, url: str, *, headers: dict[str, str], body: dict[str, Any],
                      params: dict[str, str] | None = None) -> AsyncIterator[bytes]:
    """POST `body` as JSON and yield the response body as it arrives.

    provider.timeout bounds connecting and every read, so a server that stalls before or during
    the audio fails within it while a long utterance that keeps flowing is not cut off.
    Raises TtsError naming the provider for HTTP errors, network failures, timeouts and empty audio.
    """
    received = 0
    try:
        async with shared_client().stream("POST", url, headers=headers, json=body, params=params,
                                          timeout=provider.timeout) as response:
            if not response.is_success:
                raise TtsError(f"{provider.name}: HTTP {response.status_code}: "
                               f"{error_detail(await _read_limited(response)) or response.reason_phrase}")
            async for chunk in response.aiter_bytes():
                if chunk:
                    received += len(chunk)
                    yield chunk
    except httpx.TimeoutException:
        raise TtsError(f"{provider.name}: timed out after {round(provider.timeout * 1000)} ms"
                       + (f" ({received} bytes received)" if received else "")) from None
    except httpx.HTTPError as exc:
        where = f"after {received} bytes of audio" if received else "before any audio"
        raise TtsError(f"{provider.name}: request failed {where}: {type(exc).__name__}: {exc}") from exc
    if not received:
        raise TtsError(f"{provider.name}: empty audio")


async def _read_limited(response: httpx.Response) -> bytes:
    data = bytearray()
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) >= ERROR_BODY_LIMIT:
            break
    return bytes(data[:ERROR_BODY_LIMIT])
