"""Key material named in the config, read once at load time so a bad key is a setup error, not a refused webhook."""
from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


class PublicKeyError(ValueError):
    """telnyx.publicKey cannot be read as an Ed25519 public key."""


def load_public_key(text: str) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM, base64 of the 32 raw bytes, or base64 DER (SPKI)."""
    # Imported here: only a Telnyx config has a key, and every config load goes through this module.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_public_key

    text = text.strip()
    if not text:
        raise PublicKeyError("telnyx.publicKey is empty")
    try:
        if text.startswith("-----BEGIN"):
            key = load_pem_public_key(text.encode("ascii"))
        else:
            raw = b64decode(text)
            key = Ed25519PublicKey.from_public_bytes(raw) if len(raw) == 32 else load_der_public_key(raw)
    except (ValueError, TypeError, binascii.Error) as exc:
        raise PublicKeyError(f"telnyx.publicKey is not an Ed25519 public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise PublicKeyError("telnyx.publicKey is not an Ed25519 key")
    return key


def b64decode(text: str) -> bytes:
    """Standard or URL-safe base64, padding optional; binascii.Error on anything else."""
    cleaned = text.strip().replace("-", "+").replace("_", "/")
    cleaned += "=" * (-len(cleaned) % 4)
    return base64.b64decode(cleaned, validate=True)


def key_errors(config) -> list[ConfigError]:
    """Keys that must parse before any webhook arrives (a bad one would refuse every request)."""
    if config.provider != "telnyx" or not config.telnyx or not config.telnyx.public_key:
        return []
    try:
        load_public_key(config.telnyx.public_key.reveal())
    except PublicKeyError as exc:
        return [ConfigError(("telnyx", "publicKey"), str(exc).removeprefix("telnyx.publicKey "))]
    return []
