"""The gateway's own URLs, from the config: where carriers send webhooks and where they open media streams."""
from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

if TYPE_CHECKING:
    from core.config.schema import VoiceCallConfig


def webhook_url(config: VoiceCallConfig) -> str:
    """Where carriers send webhooks: publicUrl (its own path, or serve.path), else the local listener."""
    if config.public_url:
        parts = urlsplit(config.public_url)
        if parts.path and parts.path != "/":
            return config.public_url
        return f"{parts.scheme}://{parts.netloc}{config.webhook_path()}"
    host = config.serve.bind
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{config.serve.port}{config.webhook_path()}"


def public_webhook_url(config: VoiceCallConfig) -> str | None:
    """The webhook URL carriers are told to call, when a public URL is configured."""
    return webhook_url(config) if config.public_url else None


def with_query(url: str, **params: str | None) -> str:
    """`url` with `params` added to its query (None values left out, existing ones kept)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    query += [(name, value) for name, value in params.items() if value is not None]
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


def media_stream_url(config: VoiceCallConfig) -> str | None:
    """ws(s)://<public host><streaming.streamPath>, when streaming is on and the public URL is known."""
    if not (config.streaming.enabled and config.public_url):
        return None
    parts = urlsplit(config.public_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    # Importing the schema is free here (the config is built) and costly for whoever only imports this module.
    from core.config.schema import normalize_path

    return f"{scheme}://{parts.netloc}{normalize_path(config.streaming.stream_path)}"


def realtime_stream_url(config: VoiceCallConfig, token: str) -> str | None:
    """ws(s)://<public host><realtime stream path>/<token>, when realtime is on (streaming off) and the public URL is known."""
    if not (config.realtime.enabled and not config.streaming.enabled and config.public_url):
        return None
    parts = urlsplit(config.public_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    from core.config.schema import normalize_path

    return f"{scheme}://{parts.netloc}{normalize_path(config.realtime_stream_path())}/{token}"


def realtime_streams_on(config: VoiceCallConfig) -> bool:
    """Whether conversation calls stream to the realtime bridge (it needs a public URL to be reached)."""
    return bool(config.realtime.enabled and not config.streaming.enabled and config.public_url)
