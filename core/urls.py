"""The gateway's own URLs, from the config: where carriers send webhooks and where they open media streams.

The public base is publicUrl when set, else the URL of the tunnel this host runs while it is up
(ngrok or Tailscale, started by the gateway): the calls app names where that comes from with
`set_tunnel_url_source`, since core knows nothing of processes and state files.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

if TYPE_CHECKING:
    from core.config.schema import VoiceCallConfig


_tunnel_url: Callable[[VoiceCallConfig], str | None] | None = None


def set_tunnel_url_source(source: Callable[[VoiceCallConfig], str | None] | None) -> None:
    """Name the function that returns the running tunnel's public URL for a config (None while none is up)."""
    global _tunnel_url
    _tunnel_url = source


def public_base(config: VoiceCallConfig) -> str | None:
    """The public URL carriers reach the gateway at: publicUrl when set, else the tunnel's while it is up."""
    if config.public_url:
        return config.public_url
    source = _tunnel_url
    return source(config) if source is not None else None


def webhook_url(config: VoiceCallConfig) -> str:
    """Where carriers send webhooks: the public base (its own path, or serve.path), else the local listener."""
    base = public_base(config)
    if base:
        parts = urlsplit(base)
        if parts.path and parts.path != "/":
            return base
        return f"{parts.scheme}://{parts.netloc}{config.webhook_path()}"
    host = config.serve.bind
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{config.serve.port}{config.webhook_path()}"


def public_webhook_url(config: VoiceCallConfig) -> str | None:
    """The webhook URL carriers are told to call (and sign), when there is a public base."""
    return webhook_url(config) if public_base(config) else None


def with_query(url: str, **params: str | None) -> str:
    """`url` with `params` added to its query (None values left out, existing ones kept)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    query += [(name, value) for name, value in params.items() if value is not None]
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


def media_stream_url(config: VoiceCallConfig) -> str | None:
    """ws(s)://<public host><streaming.streamPath>, when streaming is on and the public URL is known."""
    base = public_base(config) if config.streaming.enabled else None
    if not base:
        return None
    parts = urlsplit(base)
    scheme = "wss" if parts.scheme == "https" else "ws"
    # Importing the schema is free here (the config is built) and costly for whoever only imports this module.
    from core.config.schema import normalize_path

    return f"{scheme}://{parts.netloc}{normalize_path(config.streaming.stream_path)}"


def realtime_stream_url(config: VoiceCallConfig, token: str) -> str | None:
    """ws(s)://<public host><realtime stream path>/<token>, when realtime is on (streaming off) and the public URL is known."""
    base = public_base(config) if config.realtime.enabled and not config.streaming.enabled else None
    if not base:
        return None
    parts = urlsplit(base)
    scheme = "wss" if parts.scheme == "https" else "ws"
    from core.config.schema import normalize_path

    return f"{scheme}://{parts.netloc}{normalize_path(config.realtime_stream_path())}/{token}"


def realtime_streams_on(config: VoiceCallConfig) -> bool:
    """Whether conversation calls stream to the realtime bridge (it needs a public URL to be reached)."""
    return bool(config.realtime.enabled and not config.streaming.enabled and public_base(config))
