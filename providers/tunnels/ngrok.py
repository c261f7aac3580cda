"""ngrok through its Python SDK (the `ngrok` package ships its native library: no agent binary, no download).

`NgrokTunnel` is the small interface the gateway uses (start(port, authtoken, domain) -> public URL,
stop()); `SdkNgrok` is the real one, and tests put a stand-in with the same two methods in its place,
since no tunnel service is reachable from a test.
"""
from __future__ import annotations

import logging
from typing import Protocol

from .base import TunnelError

log = logging.getLogger(__name__)


class NgrokTunnel(Protocol):
    def start(self, port: int, authtoken: str, domain: str | None = None, *, host: str = "127.0.0.1") -> str:
        """Open the tunnel to host:port; returns its public base URL (https://…, no path). Raises TunnelError."""

    def stop(self) -> None:
        """Close the tunnel opened by start (nothing when none is open)."""


class SdkNgrok:
    """One ngrok listener of this process, opened with `ngrok.forward` and closed with `ngrok.disconnect`."""

    def __init__(self) -> None:
        self.url: str | None = None

    def start(self, port: int, authtoken: str, domain: str | None = None, *, host: str = "127.0.0.1") -> str:
        try:
            import ngrok
        except ImportError as exc:  # requirements.txt pins it; a hand-made venv may lack it
            raise TunnelError(f"the ngrok package is not installed ({exc}); pip install -r requirements.txt") from None
        options = {"authtoken": authtoken}
        if domain:
            options["domain"] = domain
        try:
            listener = ngrok.forward(f"{host}:{port}", **options)
        except Exception as exc:  # the SDK raises plain ValueError/OSError-like errors with ngrok's text
            raise TunnelError(f"ngrok did not open the tunnel: {_first_line(exc)}") from None
        self.url = listener.url()
        return self.url

    def stop(self) -> None:
        url, self.url = self.url, None
        if url is None:
            return
        try:
            import ngrok

            ngrok.disconnect(url)
        except Exception as exc:
            log.warning("closing the ngrok tunnel %s failed: %s", url, _first_line(exc))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
