"""Documents a carrier serves on a later webhook of the same call, kept in the database so any process can."""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from django.conf import settings

from .models import CarrierDocument


class DatabaseDocuments:
    """The DocumentStore carriers get from the runtime."""

    def put(self, call_id: str, body: str) -> str:
        token = secrets.token_urlsafe(16)
        CarrierDocument.objects.create(token=token, call_id=call_id, body=body)
        return token


def document_for(call_id: str, token: str | None) -> str | None:
    """The stored document `token` of this call (a token of another call finds nothing)."""
    if not token:
        return None
    return CarrierDocument.objects.filter(token=token, call_id=call_id).values_list("body", flat=True).first()


def stream_token(call_id: str) -> str:
    """The token a call's media stream must present: derived, so every gateway process agrees on it."""
    digest = hmac.new(settings.SECRET_KEY.encode(), f"media-stream:{call_id}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:16]).decode().rstrip("=")


def stream_token_valid(call_id: str, token: str) -> bool:
    return hmac.compare_digest(stream_token(call_id).encode(), token.encode())
