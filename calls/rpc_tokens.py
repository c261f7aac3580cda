"""RPC bearer tokens: the local token file, the token the CLI sends, and checking a request's header.

The configured tokens are parsed with the settings (voicecall_project.rpc_tokens).
"""
from __future__ import annotations

import functools
import hmac
from pathlib import Path

from core.redact import remember_secret
from voicecall_project.rpc_tokens import TOKEN_PATTERN, RpcToken
from voicecall_project.secret_files import secret_file

LOCAL_TOKEN_FILE = "rpc_token"


@functools.lru_cache(maxsize=4)
def local_token(data_dir: Path) -> RpcToken:
    """A write token kept in the data directory, so the CLI on this machine can use the gateway's RPC.

    Read once per process: every request checks it, and the file does not change while we run.
    """
    path = Path(data_dir) / LOCAL_TOKEN_FILE
    token = RpcToken("write", secret_file(path, 32), str(path))
    remember_secret(token.token)
    return token


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
