"""RPC bearer tokens: parsing VOICECALL_RPC_TOKENS, the local token file, and checking a request's header.

Imported by settings, so it needs nothing but the standard library at import time.
"""
from __future__ import annotations

import functools
import hmac
import re
from dataclasses import dataclass
from pathlib import Path

from voicecall_project.secret_files import secret_file

SCOPES = ("read", "write")
MIN_TOKEN_LENGTH = 16
# RFC 6750 b64token characters: what may follow "Bearer " in a header.
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
LOCAL_TOKEN_FILE = "rpc_token"


@dataclass(frozen=True)
class RpcToken:
    scope: str
    token: str
    source: str  # where it came from, for messages: "VOICECALL_RPC_TOKENS entry 2" or the file path

    def allows(self, scope: str) -> bool:
        return self.scope == "write" or scope == "read"


class TokenConfigError(ValueError):
    pass


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


@functools.lru_cache(maxsize=4)
def local_token(data_dir: Path) -> RpcToken:
    """A write token kept in the data directory, so the CLI on this machine can use the gateway's RPC.

    Read once per process: every request checks it, and the file does not change while we run.
    """
    path = Path(data_dir) / LOCAL_TOKEN_FILE
    return RpcToken("write", secret_file(path, 32), str(path))


def accepted_tokens() -> tuple[RpcToken, ...]:
    from django.conf import settings

    return (*settings.VOICECALL_RPC_TOKENS, local_token(settings.DATA_DIR))


def client_token() -> str:
    """The token the CLI sends: VOICECALL_RPC_TOKEN, else the first configured write token, else the local one."""
    from django.conf import settings

    if settings.VOICECALL_RPC_TOKEN:
        return settings.VOICECALL_RPC_TOKEN
    for token in settings.VOICECALL_RPC_TOKENS:
        if token.scope == "write":
            return token.token
    return local_token(settings.DATA_DIR).token


class AuthError(Exception):
    """The request is not authenticated; the message says why (never echoing the token)."""


def authenticate(header: str | None) -> RpcToken:
    """The token an `Authorization: Bearer …` header carries, or AuthError."""
    if header is None or not header.strip():
        raise AuthError("missing bearer token: send Authorization: Bearer <token>")
    scheme, _, credentials = header.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() != "bearer" or not credentials or not TOKEN_PATTERN.fullmatch(credentials):
        raise AuthError("malformed Authorization header: expected Bearer <token>")
    found = None
    for candidate in accepted_tokens():
        # Compare against every token, so the time taken says nothing about which one matched.
        if hmac.compare_digest(candidate.token.encode(), credentials.encode()):
            found = candidate
    if found is None:
        raise AuthError("invalid token")
    return found
