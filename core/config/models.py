"""Model providers for the llm responder: `provider/model` names resolved through `models.providers`."""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from core.redact import remember_secret

DEFAULT_PROVIDER = "openai"
DEFAULT_MODEL = "openai/gpt-4o-mini"


@dataclass(frozen=True)
class KnownProvider:
    base_url: str
    api_key_env: str | None


# OpenAI-compatible Chat Completions endpoints a user can name without configuring a base URL.
KNOWN_PROVIDERS: dict[str, KnownProvider] = {
    "openai": KnownProvider("https://api.openai.com/v1", "OPENAI_API_KEY"),
    "xai": KnownProvider("https://api.x.ai/v1", "XAI_API_KEY"),
    "mistral": KnownProvider("https://api.mistral.ai/v1", "MISTRAL_API_KEY"),
    "google": KnownProvider("https://generativelanguage.googleapis.com/v1beta/openai", "GEMINI_API_KEY"),
    "ollama": KnownProvider("http://127.0.0.1:11434/v1", None),
}


class ModelError(ValueError):
    """A responseModel that cannot be resolved; the message names the setting to fix."""


@dataclass(frozen=True)
class ResolvedModel:
    provider: str
    model: str
    base_url: str
    api_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        remember_secret(self.api_key)  # servers echo the key in their errors: masked wherever it is logged

    @property
    def name(self) -> str:
        return f"{self.provider}/{self.model}"


def split_model(value: str) -> tuple[str, str]:
    """`provider/model` → (provider, model); a bare model name uses the default provider."""
    value = value.strip()
    provider, slash, model = value.partition("/")
    if not slash:
        return DEFAULT_PROVIDER, value
    return provider.strip(), model.strip()


def model_problem(value: str, configured: Mapping[str, object]) -> str | None:
    """Why `value` cannot name a model (None when it can); used by config validation."""
    provider, model = split_model(value)
    if not provider or not model:
        return f"must be provider/model, e.g. {DEFAULT_MODEL} (got {value!r})"
    if provider not in configured and provider not in KNOWN_PROVIDERS:
        return (f"unknown model provider {provider!r}: add models.providers.{provider} with its baseUrl"
                f" (known without one: {', '.join(KNOWN_PROVIDERS)})")
    return None


def resolve_model(value: str, providers: Mapping[str, object], environ: Mapping[str, str] | None = None) -> ResolvedModel:
    """The endpoint, model and key for `value`, from models.providers or the well-known table.

    `providers` maps ids to ModelProviderConfig-like objects (base_url, api_key with reveal()).
    """
    environ = os.environ if environ is None else environ
    problem = model_problem(value, providers)
    if problem:
        raise ModelError(f"responseModel: {problem}")
    provider, model = split_model(value)
    block = providers.get(provider)
    known = KNOWN_PROVIDERS.get(provider)
    base_url = getattr(block, "base_url", None) or (known.base_url if known else None)
    if not base_url:
        raise ModelError(f"models.providers.{provider}.baseUrl: required")
    secret = getattr(block, "api_key", None)
    api_key = secret.reveal() if secret is not None else None
    if not api_key and known and known.api_key_env:
        api_key = environ.get(known.api_key_env) or None
    return ResolvedModel(provider=provider, model=model, base_url=base_url.rstrip("/"), api_key=api_key)
