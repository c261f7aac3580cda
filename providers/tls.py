"""TLS client contexts built once per process: loading a CA bundle takes about 20 ms, too slow for the event loop.

httpx and websockets each build a fresh context for every client or wss:// connection they are
not given one for; on a media stream that cost lands on the event loop and stalls every call in
the process. These are the same contexts they would build, made once and shared (an SSLContext
may be used from any thread).
"""
from __future__ import annotations

import ssl
from functools import cache

import httpx


@cache
def http_tls() -> ssl.SSLContext:
    """The context httpx builds for a client by default (certifi's CA bundle)."""
    return httpx.create_ssl_context()


@cache
def websocket_tls() -> ssl.SSLContext:
    """The context `websockets.connect` builds for a wss:// URL by default (the system's CAs)."""
    return ssl.create_default_context()


def websocket_ssl(url: str) -> ssl.SSLContext | None:
    """The `ssl` argument for `websockets.connect(url)`: the shared context for wss://, None for ws://."""
    return websocket_tls() if url.lower().startswith("wss://") else None


def warm() -> None:
    """Build both contexts now (at start-up, off the event loop) so no request pays for them."""
    http_tls()
    websocket_tls()
