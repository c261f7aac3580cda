"""The gateway's own URLs a carrier is told to use: webhooks (with extra query parameters) and the media stream."""
from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from calls.config.schema import normalize_path


def with_query(url: str, **params: str | None) -> str:
    """`url` with `params` added to its query (None values left out, existing ones kept)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    query += [(name, value) for name, value in params.items() if value is not None]
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


def public_webhook_url(config) -> str | None:
    """The webhook URL carriers are told to call, when a public URL is configured."""
    if not config.public_url:
        return None
    from calls.runtime import webhook_url  # the one definition of the webhook URL

    return webhook_url(config)


def gateway_webhook_url(config) -> str:
    from calls.runtime import webhook_url

    return webhook_url(config)


def media_stream_url(config) -> str | None:
    """ws(s)://<public host><streaming.streamPath>, when streaming is on and the public URL is known."""
    if not (config.streaming.enabled and config.public_url):
        return None
    parts = urlsplit(config.public_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}{normalize_path(config.streaming.stream_path)}"
