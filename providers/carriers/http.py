"""REST requests to a carrier over httpx: one pinned host, quoted ids, and the carrier's errors as CarrierError."""
from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import httpx

from core.errors import CarrierError, CarrierUnreachable
from core.redact import redact, remember_secret

from ..tls import http_tls
from .base import ProviderCallStatus

log = logging.getLogger("providers")

TIMEOUT = httpx.Timeout(10.0, connect=5.0)
UNKNOWN_STATUS = ProviderCallStatus(status="unknown", is_terminal=False, is_unknown=True)


# httpx errors raised before any byte of the request was sent: the carrier cannot have acted on it.
UNSENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


class CarrierHttpError(CarrierError):
    """The carrier answered with an error status; `code` is the carrier's own error code, if any.

    `retry_after`: the seconds the carrier asked to wait (its Retry-After header), when it said.
    """

    def __init__(self, message: str, *, status: int, code: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.retry_after = retry_after


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header in seconds (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if seconds == seconds and seconds != float("inf") else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def segment(value: str) -> str:
    """One path segment: '/', '?', '#' and '%' quoted, so an id can never change the path or host.

    RFC 3986 path characters stay as they are (as the carriers' SDKs send them): Telnyx ids
    look like "v3:…" and the colon must reach the API literally.
    """
    text = str(value)
    if text and text.strip(".") == "":
        return text.replace(".", "%2E")  # "." and ".." would be read as dot segments and leave the path
    return quote(text, safe="!$&'()*+,;=:@")


class CarrierHttp:
    """A small REST client bound to one base URL. Requests may only go to that host (SSRF guard)."""

    def __init__(
        self,
        *,
        carrier: str,
        base_url: str,
        error_reader: Callable[[httpx.Response], tuple[str, str | None]],
        auth: httpx.Auth | tuple[str, str] | None = None,
        headers: dict[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.carrier = carrier
        self.base_url = base_url.rstrip("/")
        parts = urlsplit(self.base_url)
        self._origin = (parts.scheme, parts.netloc)
        self._read_error = error_reader
        if isinstance(auth, tuple):
            # The Authorization header's own credential: masked even where an echo drops the "Basic ".
            remember_secret(base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
        self._client = httpx.Client(
            auth=auth,
            headers={"Accept": "application/json", "User-Agent": "voicecall-gateway", **(headers or {})},
            timeout=TIMEOUT,
            follow_redirects=False,
            transport=transport,
            verify=http_tls(),
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        form: Iterable[tuple[str, str]] | None = None,
        json: Any = None,
        tolerate: Iterable[int] = (),
        retry_codes: Iterable[str] = (),
        retry_delays: tuple[float, ...] = (),
    ) -> httpx.Response | None:
        """Send one request; returns the response, or None for a tolerated error status.

        `retry_codes` with `retry_delays`: carrier error codes worth retrying after each delay.
        """
        url = self.base_url + path
        parts = urlsplit(url)
        if (parts.scheme, parts.netloc) != self._origin:
            raise CarrierError(f"{self.carrier}: refusing a request outside {self.base_url}")
        attempts = (0.0, *retry_delays)
        # Form bodies are encoded here so a repeated field (StatusCallbackEvent) keeps every value.
        content = urlencode(list(form)).encode() if form is not None else None
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if form is not None else None
        for attempt, delay in enumerate(attempts):
            if delay:
                time.sleep(delay)
            try:
                response = self._client.request(method, url, content=content, json=json, headers=headers)
            except UNSENT_ERRORS as exc:
                raise CarrierUnreachable(f"{self.carrier} {method} {path}: {type(exc).__name__}: {exc}") from exc
            except httpx.HTTPError as exc:
                raise CarrierError(f"{self.carrier} {method} {path}: {type(exc).__name__}: {exc}") from exc
            if response.is_success:
                return response
            if response.status_code in tuple(tolerate):
                return None
            message, code = self._read_error(response)
            error = CarrierHttpError(
                f"{self.carrier} {method} {path} failed ({response.status_code}"
                + (f", code {code}" if code else "") + f"): {message}",
                status=response.status_code,
                code=code,
                retry_after=retry_after_seconds(response.headers.get("Retry-After")),
            )
            if code is not None and code in tuple(retry_codes) and attempt < len(attempts) - 1:
                log.info("%s; retrying", error.message)
                continue
            raise error
        raise AssertionError("unreachable")

    def json(self, response: httpx.Response) -> dict[str, Any]:
        """The response body as a JSON object, or CarrierError naming what came back."""
        try:
            data = response.json()
        except ValueError:
            raise CarrierError(f"{self.carrier}: expected JSON, got {response_text(response)!r}") from None
        if not isinstance(data, dict):
            raise CarrierError(f"{self.carrier}: expected a JSON object, got {type(data).__name__}")
        return data

    def status_lookup(self, path: str, read: Callable[[dict[str, Any]], ProviderCallStatus]) -> ProviderCallStatus:
        """GET a call's status for restore: 404 means over; any failure means "unknown", never an error."""
        try:
            response = self.request("GET", path, tolerate=(404,))
            if response is None:
                return ProviderCallStatus(status="not-found", is_terminal=True)
            return read(self.json(response))
        except CarrierError:
            return UNKNOWN_STATUS

    def close(self) -> None:
        self._client.close()


def response_text(response: httpx.Response, limit: int = 200) -> str:
    """The start of an error body: redacted before it is cut, so no credential is left half masked."""
    return redact(response.text)[:limit] if response.text else response.reason_phrase
