"""Where each secret of the config and of the deployment comes from, for the setup page: never a value.

Every row is built from names, paths and counts only; no function here reads a secret's value
(an environment variable is tested for presence, a secret file for readability).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from core.config import LoadedConfig
from core.config.errors import dotted, key_path
from core.config.loader import CARRIER_ENV, iter_secret_parts
from core.config.secrets import Secret

# What AI providers fall back to when their block has no apiKey (providers/, api_key_env).
PROVIDER_KEY_ENVS = (
    ("OPENAI_API_KEY", "openai: responses, TTS, transcription, realtime"),
    ("GEMINI_API_KEY", "google: responses, realtime"),
    ("GOOGLE_API_KEY", "google realtime, when GEMINI_API_KEY is unset"),
    ("ELEVENLABS_API_KEY", "elevenlabs: TTS, transcription"),
    ("DEEPGRAM_API_KEY", "deepgram: transcription"),
    ("MISTRAL_API_KEY", "mistral: responses, transcription"),
    ("XAI_API_KEY", "xai: responses, transcription"),
)
CARRIER_SECRETS = {"authToken", "apiKey", "publicKey"}  # the carriers' Credential keys (schema.py)
NOT_SET = "not set"


@dataclass(frozen=True)
class SecretSource:
    name: str  # the key path in the config, or the deployment setting
    source: str  # "env TWILIO_AUTH_TOKEN", "file /run/secrets/x", "inline in the config file", "not set"
    found: bool | None = None  # the variable is set / the file is readable; None when that says nothing
    note: str = ""


def config_secrets(loaded: LoadedConfig, environ: Mapping[str, str] | None = None) -> list[SecretSource]:
    """Every credential of the config in force, and the carrier's missing ones."""
    environ = os.environ if environ is None else environ
    rows: list[SecretSource] = []
    present: set[str] = set()
    for parts, secret in iter_secret_parts(loaded.config):
        present.add(dotted(parts))
        variable = loaded.env_fallbacks.get(dotted(parts))
        if variable:
            rows.append(SecretSource(key_path(parts), f"env {variable}", bool(environ.get(variable)),
                                     "not in the file: its environment fallback"))
        else:
            rows.append(_secret_row(key_path(parts), secret, environ))
    provider = loaded.config.provider if loaded.config.enabled else None
    for section, key, variable in CARRIER_ENV.get(provider or "", []):
        path = f"{section}.{key}" if section else key
        if key in CARRIER_SECRETS and path not in present:
            rows.append(SecretSource(path, NOT_SET, False, f"set {path} in the config file or {variable}"))
    return rows


def _secret_row(name: str, secret: Secret, environ: Mapping[str, str]) -> SecretSource:
    ref = secret.ref
    if ref is None:
        return SecretSource(name, "inline in the config file", True,
                            'a "${ENV_NAME}" or {source: "file"} reference keeps it out of the file')
    if ref.source == "env":
        return SecretSource(name, f"env {ref.id}", bool(environ.get(ref.id)))
    path = os.path.expanduser(ref.id)
    where = f"file {ref.id}" + (f" at {ref.pointer}" if ref.pointer else "")
    return SecretSource(name, where, os.path.isfile(path) and os.access(path, os.R_OK))


def provider_key_envs(environ: Mapping[str, str] | None = None) -> list[SecretSource]:
    """The AI providers' key variables: used by a provider block without apiKey."""
    environ = os.environ if environ is None else environ
    return [
        SecretSource(variable, f"env {variable}" if environ.get(variable) else NOT_SET, None, used_by)
        for variable, used_by in PROVIDER_KEY_ENVS
    ]


def deployment_secrets(settings, environ: Mapping[str, str] | None = None) -> list[SecretSource]:
    """SECRET_KEY, the RPC tokens and the service URLs (these without their credentials)."""
    environ = os.environ if environ is None else environ
    data_dir = Path(settings.DATA_DIR)
    rows = [
        SecretSource("SECRET_KEY", "env SECRET_KEY", True) if environ.get("SECRET_KEY", "").strip()
        else SecretSource("SECRET_KEY", f"file {data_dir / 'secret_key'}", True, "made on first start (embedded mode)"),
    ]
    tokens = settings.VOICECALL_RPC_TOKENS
    if tokens:
        counts = [f"{sum(t.scope == scope for t in tokens)} {scope}" for scope in ("write", "read")]
        rows.append(SecretSource("VOICECALL_RPC_TOKENS", "env VOICECALL_RPC_TOKENS", True, "tokens: " + ", ".join(counts)))
    else:
        rows.append(SecretSource("VOICECALL_RPC_TOKENS", NOT_SET, None, "only the local token is accepted"))
    if settings.VOICECALL_MODE == "distributed":
        rows.append(SecretSource("local RPC token", "derived from SECRET_KEY", True, "what the CLI sends by default"))
    else:
        rows.append(SecretSource("local RPC token", f"file {data_dir / 'rpc_token'}", True, "what the CLI sends by default"))
    rows.append(SecretSource(
        "VOICECALL_RPC_TOKEN", "env VOICECALL_RPC_TOKEN" if environ.get("VOICECALL_RPC_TOKEN") else NOT_SET, None,
        "the token the CLI sends",
    ))
    rows.append(SecretSource("DATABASE_URL", *_database(settings.DATABASES["default"], environ)))
    if settings.REDIS_URL:
        rows.append(SecretSource("REDIS_URL", "env REDIS_URL", True, without_credentials(settings.REDIS_URL)))
    else:
        rows.append(SecretSource("REDIS_URL", NOT_SET, None, "embedded mode: in-memory channel layer, no Celery"))
    return rows


def _database(database: Mapping, environ: Mapping[str, str]) -> tuple[str, bool, str]:
    source = "env DATABASE_URL" if environ.get("DATABASE_URL") else "default (no DATABASE_URL)"
    engine = database["ENGINE"].rsplit(".", 1)[-1]
    if engine == "sqlite3":
        return source, True, f"sqlite file {database['NAME']}"
    host = database.get("HOST") or "local socket"
    port = f":{database['PORT']}" if database.get("PORT") else ""
    where = f"{engine} at {host}{port}, database {database.get('NAME')}"
    if database.get("USER") or database.get("PASSWORD"):
        where += " (its user and password not shown)"
    return source, True, where


def without_credentials(url: str) -> str:
    """scheme://host:port/path of a service URL: no user, password or query (which may carry one)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    hidden = " (credentials not shown)" if parts.username or parts.password or parts.query else ""
    return f"{parts.scheme}://{host}{port}{parts.path}{hidden}"
