"""RPC bearer tokens: the local token file, the token the CLI sends, and checking a request's header.

The configured tokens are parsed with the settings (voicecall_project.rpc_tokens).
"""
from __future__ import annotations

import functools
import hashlib
import hmac
from pathlib import Path

from core.redact import remember_secret
from voicecall_project.rpc_tokens import TOKEN_PATTERN, RpcToken
from voicecall_project.secret_files import secret_file

LOCAL_TOKEN_FILE = "rpc_token"


@functools.lru_cache(maxsize=4)
def local_token(data_dir: Path) -> RpcToken:
    """A write token the CLI can use on the gateway's RPC without configuring one.

    Embedded: kept in the data directory, so the CLI on this machine has it. Distributed: derived
    from SECRET_KEY, which every process shares, so the CLI's token is accepted by whichever gateway
    a load balancer sends it to (a file per data directory would differ between hosts). Read once
    per process: every request checks it, and neither source changes while we run.
    """
    from django.conf import settings

    if settings.VOICECALL_MODE == "distributed":
        derived = hmac.new(settings.SECRET_KEY.encode(), b"voicecall-local-rpc-token", hashlib.sha256).hexdigest()
        token = RpcToken("write", derived, "derived from SECRET_KEY")
    else:
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
