"""Building the gateway's own webhook URLs with extra query parameters for a carrier to call back."""
from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit


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
