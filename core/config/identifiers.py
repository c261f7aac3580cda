"""Carrier identifiers' shapes (Twilio SIDs, Telnyx ids, Plivo auth ids): a typo becomes a setup warning, not a refused first call."""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import dotted
from .secrets import Secret, SecretError


@dataclass(frozen=True)
class Shape:
    carrier: str
    key: str  # camelCase, inside the carrier's block
    pattern: re.Pattern
    name: str  # what the value should be, e.g. "a Twilio Account SID"
    expected: str  # the shape in words
    secret: bool = False  # never printed: only its length is named


# Twilio: every SID is a two-letter type prefix and 32 hex digits; the auth token is 32 hex digits.
# Telnyx: Call Control connection (application) ids are decimal; API v2 keys start with "KEY".
# Plivo: an auth id is MA (account) or SA (subaccount) and 18 uppercase letters or digits.
# (telnyx.publicKey is parsed as a key at load time: a bad one is an error, not a warning.)
SHAPES = (
    Shape("twilio", "accountSid", re.compile(r"AC[0-9a-fA-F]{32}"), "a Twilio Account SID", "AC followed by 32 hex digits"),
    Shape("twilio", "authToken", re.compile(r"[0-9a-fA-F]{32}"), "a Twilio auth token", "32 hex digits", secret=True),
    Shape("telnyx", "connectionId", re.compile(r"[0-9]+"), "a Telnyx connection id", "digits only"),
    Shape("telnyx", "apiKey", re.compile(r"KEY[0-9A-Za-z_-]+"), "a Telnyx API v2 key", '"KEY" followed by letters, digits and _', secret=True),
    Shape("plivo", "authId", re.compile(r"[MS]A[0-9A-Z]{18}"), "a Plivo Auth ID", "MA or SA followed by 18 uppercase letters or digits"),
)
SHOWN = 40  # an identifier longer than this is cut in the warning


def identifier_warnings(
    config, environ: Mapping[str, str] | None = None, env_sources: Mapping[str, str] | None = None, prefix: str = "",
) -> list[str]:
    """One warning per carrier identifier whose value does not have the carrier's shape.

    Each names the key (and the environment variable it came from), what is wrong and the expected
    shape; a secret's value is never printed, only its length.
    """
    warnings: list[str] = []
    for shape in SHAPES:
        block = getattr(config, shape.carrier, None)
        value = _value(block, shape.key, environ) if block is not None else None
        if value is None or shape.pattern.fullmatch(value):
            continue
        path = dotted((shape.carrier, shape.key))
        source = (env_sources or {}).get(path) or _reference(block, shape.key)
        where = f"{prefix}{path}" + (f" (from {source})" if source else "")
        if shape.secret:
            what = f"the value ({len(value)} character{'s' if len(value) != 1 else ''}, not shown)"
        elif _is_a_secret_of(block, value, environ):
            what = "the same value as this block's credential (swapped?)"
        elif _has_a_credentials_shape(value):
            what = f"a value shaped like a credential ({len(value)} characters, not shown)"
        else:
            what = _quoted(value)
        warnings.append(f"{where}: {what} does not look like {shape.name} ({shape.expected})")
    return warnings


def _field(block, camel_key: str):
    return getattr(block, re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), camel_key), None)


def _reference(block, camel_key: str) -> str:
    """Where a credential given as a reference was read ("env:TWILIO_AUTH_TOKEN"), "" for a literal."""
    value = _field(block, camel_key)
    return value.describe() if isinstance(value, Secret) and value.ref else ""


def _value(block, camel_key: str, environ: Mapping[str, str] | None) -> str | None:
    value = _field(block, camel_key)
    if isinstance(value, Secret):
        try:
            return value.resolve(environ)
        except SecretError:
            return None  # already an error naming the variable or file
    return value if isinstance(value, str) else None


def _is_a_secret_of(block, value: str, environ: Mapping[str, str] | None) -> bool:
    """An identifier that holds a credential of its block must not be printed."""
    for name in type(block).model_fields:
        secret = getattr(block, name, None)
        if isinstance(secret, Secret):
            try:
                if secret.resolve(environ) == value:
                    return True
            except SecretError:
                continue
    return False


def _has_a_credentials_shape(value: str) -> bool:
    """A credential pasted into an identifier's key (a Telnyx KEY… in connectionId) must not be printed either."""
    return any(shape.secret and shape.pattern.fullmatch(value) for shape in SHAPES)


def _quoted(value: str) -> str:
    shown = value if len(value) <= SHOWN else value[:SHOWN] + "…"
    return '"' + shown.replace("\\", "\\\\").replace('"', '\\"') + '"'
