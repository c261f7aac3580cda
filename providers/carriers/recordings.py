"""Carrier recordings: the fields of their callbacks checked, and their files downloaded, credentials only to the carrier's hosts."""
from __future__ import annotations

import math
from collections.abc import Iterable
from urllib.parse import urlsplit

import httpx

from core.errors import CarrierError

from ..tls import http_tls
from .base import WebhookParseError

# A recording is held in memory while it is stored or proxied: an hour of dual-channel 8 kHz WAV is ~115 MB.
MAX_RECORDING_BYTES = 256 * 1024 * 1024
MAX_URL_LENGTH = 1024  # Recording.url
MAX_ID_LENGTH = 128  # Recording.provider_recording_id
DOWNLOAD_TIMEOUT = httpx.Timeout(60.0, connect=5.0)
MAX_REDIRECTS = 3  # Twilio answers a media request with a redirect to its storage
CONTENT_TYPES = {"wav": "audio/wav", "mp3": "audio/mpeg"}


def origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def recording_url(value: str | None, field: str, *, required: bool = True) -> str | None:
    """An http(s) URL a callback names (WebhookParseError naming `field` otherwise)."""
    text = (value or "").strip()
    if not text:
        if required:
            raise WebhookParseError(f"{field}: required")
        return None
    parts = urlsplit(text)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise WebhookParseError(f"{field}: not an http(s) URL")
    if len(text) > MAX_URL_LENGTH:
        raise WebhookParseError(f"{field}: longer than {MAX_URL_LENGTH} characters")
    return text


def recording_id(value: str | None, field: str) -> str:
    text = (value or "").strip()
    if not text:
        raise WebhookParseError(f"{field}: required")
    if len(text) > MAX_ID_LENGTH:
        raise WebhookParseError(f"{field}: longer than {MAX_ID_LENGTH} characters")
    return text


def seconds(value: str | None, field: str, *, scale: float = 1.0) -> float | None:
    """A duration from a callback (a plain non-negative number; `scale` 0.001 for milliseconds)."""
    text = (value or "").strip()
    if not text or text == "-1":  # Twilio sends -1 while the length is not known
        return None
    try:
        number = float(text)
    except ValueError:
        raise WebhookParseError(f"{field}: not a number") from None
    if not math.isfinite(number) or number < 0 or number * scale >= 10**7:
        raise WebhookParseError(f"{field}: not a duration")
    return number * scale


def download(url: str, *, carrier: str, auth: tuple[str, str] | None = None,
             trusted_origins: Iterable[tuple[str, str]] = (), credentials_required: bool = True,
             transport: httpx.BaseTransport | None = None) -> tuple[bytes, str]:
    """GET a recording: its bytes and content type; CarrierError on any failure.

    The carrier's credentials go only to `trusted_origins`; with `credentials_required` a URL
    elsewhere is refused rather than fetched, so a callback cannot point our credentials at another host.
    A redirect to another host (the carrier's storage) drops them (httpx strips Authorization).
    """
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise CarrierError(f"{carrier}: recording URL is not an http(s) URL")
    trusted = origin(url) in set(trusted_origins)
    if credentials_required and not trusted:
        raise CarrierError(f"{carrier}: refusing to download a recording from {parts.netloc}: not one of the carrier's hosts")
    try:
        with httpx.Client(auth=auth if trusted else None, timeout=DOWNLOAD_TIMEOUT, follow_redirects=True,
                          max_redirects=MAX_REDIRECTS, transport=transport, verify=http_tls(),
                          headers={"User-Agent": "voicecall-gateway"}) as client:
            with client.stream("GET", url) as response:
                if not response.is_success:
                    raise CarrierError(f"{carrier}: recording download failed ({response.status_code} {response.reason_phrase})")
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > MAX_RECORDING_BYTES:
                    raise CarrierError(f"{carrier}: recording is larger than {MAX_RECORDING_BYTES} bytes")
                chunks, size = [], 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > MAX_RECORDING_BYTES:
                        raise CarrierError(f"{carrier}: recording is larger than {MAX_RECORDING_BYTES} bytes")
                    chunks.append(chunk)
                content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    except httpx.HTTPError as exc:
        raise CarrierError(f"{carrier}: recording download failed: {type(exc).__name__}: {exc}") from exc
    body = b"".join(chunks)
    if not body:
        raise CarrierError(f"{carrier}: the recording is empty")
    return body, content_type or sniff_content_type(body, url)


def sniff_content_type(body: bytes, url: str) -> str:
    if body[:4] == b"RIFF" and body[8:12] == b"WAVE":
        return "audio/wav"
    if body[:3] == b"ID3" or body[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"):
        return "audio/mpeg"
    extension = urlsplit(url).path.rsplit(".", 1)[-1].lower()
    return CONTENT_TYPES.get(extension, "application/octet-stream")
