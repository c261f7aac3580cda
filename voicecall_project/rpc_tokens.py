"""RPC bearer tokens as a setting: parsing VOICECALL_RPC_TOKENS when the settings are read.

Imported by settings, so it needs nothing but the standard library and Django at import time.
"""
from __future__ import annotations

import hmac
import re
from dataclasses import dataclass

SCOPES = ("read", "write")
MIN_TOKEN_LENGTH = 16
# RFC 6750 b64token characters: what may follow "Bearer " in a header.
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


@dataclass(frozen=True)
class RpcToken:
    scope: str
    token: str
    source: str  # where it came from, for messages: "VOICECALL_RPC_TOKENS entry 2" or the file path

    def allows(self, scope: str) -> bool:
        return self.scope == "write" or scope == "read"


def parse_rpc_tokens(raw: str) -> tuple[RpcToken, ...]:
    """ "write:abc…, read:def…" → tokens; a bad entry raises naming its position and the problem."""
    from django.core.exceptions import ImproperlyConfigured

    tokens: list[RpcToken] = []
    for index, entry in enumerate((part.strip() for part in raw.split(",")), start=1):
        if not entry:
            continue
        where = f"VOICECALL_RPC_TOKENS entry {index}"
        scope, sep, token = entry.partition(":")
        scope, token = scope.strip(), token.strip()
        if not sep:
            raise ImproperlyConfigured(f'{where}: expected "scope:token" (scope read or write)')
        if scope not in SCOPES:
            raise ImproperlyConfigured(f"{where}: scope must be read or write, got {scope!r}")
        if not TOKEN_PATTERN.fullmatch(token):
            raise ImproperlyConfigured(f"{where}: the token may only use letters, digits and - . _ ~ + / =")
        if len(token) < MIN_TOKEN_LENGTH:
            raise ImproperlyConfigured(f"{where}: the token must be at least {MIN_TOKEN_LENGTH} characters")
        if any(hmac.compare_digest(token, other.token) for other in tokens):
            raise ImproperlyConfigured(f"{where}: the same token is listed twice")
        tokens.append(RpcToken(scope, token, where))
    return tuple(tokens)
