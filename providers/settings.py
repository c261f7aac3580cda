"""What every speech provider reads from its config block: settings, the API key, whether it can run."""
from __future__ import annotations

import os
from typing import Any, ClassVar

from core.redact import remember_secret


class ProviderSettings:
    """A provider built from its camelCase config block (e.g. `streaming.providers.<id>`)."""

    # Environment variable read when the block has no apiKey (None: no key needed).
    api_key_env: ClassVar[str | None] = None

    def __init__(self, settings: dict[str, Any] | None = None, *, environ: dict[str, str] | None = None) -> None:
        self.settings = dict(settings or {})
        self.environ = os.environ if environ is None else environ

    def setting(self, key: str, default: Any = None) -> Any:
        value = self.settings.get(key)
        return default if value is None else value

    def api_key(self) -> str | None:
        secret = self.settings.get("apiKey")
        if secret not in (None, ""):
            key = secret.reveal() if hasattr(secret, "reveal") else str(secret)
        else:
            key = self.environ.get(self.api_key_env) if self.api_key_env else None
        remember_secret(key)  # masked in every log line and error from now on, wherever it came from
        return key

    def configured(self) -> bool:
        """Whether this provider can run (has its key, or needs none)."""
        return self.api_key_env is None or bool(self.api_key())
