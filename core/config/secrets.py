"""Credentials in the call config: plain strings, "${ENV}" strings and {source: env|file} SecretRefs."""
from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.redact import remember_secret

ENV_TEMPLATE = re.compile(r"^\$\{([A-Z][A-Z0-9_]{0,127})\}$")
ENV_ID = re.compile(r"^[A-Z][A-Z0-9_]{0,127}$")
PROVIDER_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
REF_KEYS = {"source", "provider", "id", "pointer"}


class SecretError(ValueError):
    """A credential could not be parsed or resolved; the message says why."""


@dataclass(frozen=True)
class SecretRef:
    """Where a credential lives: an environment variable or a file (optionally a JSON pointer in it)."""

    source: str
    id: str
    pointer: str | None = None
    provider: str | None = None

    def describe(self) -> str:
        where = f"{self.source}:{self.id}"
        return f"{where}#{self.pointer}" if self.pointer else where


class Secret:
    """A credential from the config. Its value never appears in repr, str or JSON output.

    A plain class, not a dataclass: serializers that take dataclasses apart (pydantic's Python
    dumps) would otherwise turn it into a dict holding the value.
    """

    __slots__ = ("literal", "ref", "_resolved")

    def __init__(self, literal: str | None = None, ref: SecretRef | None = None) -> None:
        self.literal = literal
        self.ref = ref
        self._resolved: str | None = None

    def __repr__(self) -> str:
        return f"Secret({self.describe()})"

    __str__ = __repr__

    def describe(self) -> str:
        """A safe description of where the value comes from (never the value)."""
        return self.ref.describe() if self.ref else "inline"

    def resolve(self, environ: Mapping[str, str] | None = None) -> str:
        """Read the value now (env/file) and remember it; raises SecretError naming what is missing."""
        if self._resolved is None:
            self._resolved = self.literal if self.ref is None else _read_ref(self.ref, os.environ if environ is None else environ)
            remember_secret(self._resolved)  # from now on masked in every log line and error
        return self._resolved

    def reveal(self) -> str:
        """The credential itself, for building carrier/AI requests only."""
        return self.resolve()


def parse_secret(value: Any) -> Secret:
    """Turn a config value into a Secret, or raise SecretError with a message for the key's path."""
    if isinstance(value, Secret):
        return value
    if isinstance(value, str):
        if not value.strip():
            raise SecretError("must not be empty")
        match = ENV_TEMPLATE.fullmatch(value.strip())
        if match:
            return Secret(ref=SecretRef(source="env", id=match.group(1)))
        if value.strip().startswith("${"):
            raise SecretError(f'"{value}" is not a valid ${{ENV_NAME}} reference (A-Z, 0-9, _)')
        return Secret(literal=value)
    if isinstance(value, dict):
        return Secret(ref=_parse_ref(value))
    raise SecretError('must be a string, "${ENV_NAME}", or a SecretRef object {source, id}')


def _parse_ref(value: dict[str, Any]) -> SecretRef:
    unknown = sorted(set(value) - REF_KEYS)
    if unknown:
        raise SecretError(f"SecretRef has unknown key(s): {', '.join(unknown)}")
    source = value.get("source")
    ref_id = value.get("id")
    provider = value.get("provider")
    pointer = value.get("pointer")
    if source == "exec":
        raise SecretError('SecretRef source "exec" is not supported; use "env" or "file"')
    if source not in ("env", "file"):
        raise SecretError('SecretRef source must be "env" or "file"')
    if not isinstance(ref_id, str) or not ref_id:
        raise SecretError("SecretRef id is required")
    if provider is not None and (not isinstance(provider, str) or not PROVIDER_NAME.fullmatch(provider)):
        raise SecretError("SecretRef provider must match ^[a-z][a-z0-9_-]{0,63}$")
    if source == "env":
        if not ENV_ID.fullmatch(ref_id):
            raise SecretError("SecretRef env id must match ^[A-Z][A-Z0-9_]{0,127}$")
        if pointer is not None:
            raise SecretError('SecretRef pointer is only valid with source "file"')
    else:
        if not os.path.isabs(os.path.expanduser(ref_id)):
            raise SecretError("SecretRef file id must be an absolute path")
        if pointer is not None and (not isinstance(pointer, str) or not pointer.startswith("/")):
            raise SecretError('SecretRef pointer must be an absolute JSON pointer like "/twilio/token"')
    return SecretRef(source=source, id=ref_id, pointer=pointer, provider=provider)


def _read_ref(ref: SecretRef, environ: Mapping[str, str]) -> str:
    if ref.source == "env":
        value = environ.get(ref.id, "")
        if not value:
            raise SecretError(f"environment variable {ref.id} is not set")
        return value
    path = Path(os.path.expanduser(ref.id))
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SecretError(f"cannot read secret file {path}: {exc.strerror or exc}") from None
    if ref.pointer is None:
        value = text.strip()
    else:
        value = _json_pointer(text, ref.pointer, path)
    if not value:
        raise SecretError(f"secret file {path} is empty")
    return value


def _json_pointer(text: str, pointer: str, path: Path) -> str:
    try:
        node: Any = json.loads(text)
    except ValueError:
        raise SecretError(f"secret file {path} is not JSON (needed for pointer {pointer})") from None
    for raw in pointer.split("/")[1:]:
        token = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            raise SecretError(f"secret file {path} has nothing at {pointer}")
    if not isinstance(node, str):
        raise SecretError(f"secret file {path} value at {pointer} is not a string")
    return node.strip()
