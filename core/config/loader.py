"""Reading the call config file: unwrap, rewrite legacy keys, fill env fallbacks, validate, resolve secrets."""
from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import json5
from pydantic import BaseModel, ValidationError

from .errors import ConfigError, dotted, file_error, split_prefix
from .identifiers import identifier_warnings
from .keys import key_errors
from .legacy import migrate_block, migrate_tts
from .merge import deep_merge
from .schema import TtsConfig, VoiceCallConfig
from .secrets import Secret, SecretError
from .unbuilt import unbuilt_settings
from .validation import cross_field_errors

WRAPPER_PREFIX = "plugins.entries.voice-call.config."
ENTRY_PATH = ("plugins", "entries", "voice-call")
ENTRY_KEYS = {"enabled", "config"}

# Environment fallbacks per carrier: (config block, key, variable).
CARRIER_ENV = {
    "telnyx": [
        ("telnyx", "apiKey", "TELNYX_API_KEY"),
        ("telnyx", "connectionId", "TELNYX_CONNECTION_ID"),
        ("telnyx", "publicKey", "TELNYX_PUBLIC_KEY"),
    ],
    "twilio": [
        ("twilio", "accountSid", "TWILIO_ACCOUNT_SID"),
        ("twilio", "authToken", "TWILIO_AUTH_TOKEN"),
        (None, "fromNumber", "TWILIO_FROM_NUMBER"),
    ],
    "plivo": [
        ("plivo", "authId", "PLIVO_AUTH_ID"),
        ("plivo", "authToken", "PLIVO_AUTH_TOKEN"),
    ],
}
TUNNEL_ENV = [("tunnel", "ngrokAuthToken", "NGROK_AUTHTOKEN"), ("tunnel", "ngrokDomain", "NGROK_DOMAIN")]


@dataclass
class LoadedConfig:
    """The config in force and what is wrong with it.

    `config` is always usable for serving (defaults when the file could not be read);
    `errors` lists why the call runtime cannot start ("setup incomplete"): ConfigErrors, lines that
    also carry their key path; `env_fallbacks` maps the keys filled from the environment (camelCase
    path in the block) to the variable each came from. `stand_in` is true when `config` is not what
    the file says but defaults standing in for a file that could not be read, parsed or validated:
    nothing about the file's settings (carrier, exposure, mode) can be judged from it.
    """

    config: VoiceCallConfig
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    path: str | None = None
    env_fallbacks: dict[str, str] = field(default_factory=dict)
    stand_in: bool = False

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    @property
    def ok(self) -> bool:
        return self.enabled and not self.errors


def load_config_file(path: str | os.PathLike | None, environ: Mapping[str, str] | None = None) -> LoadedConfig:
    """Load the config named by VOICECALL_CONFIG (None or "" means all defaults, mock carrier)."""
    if not path:
        return load_config_data({}, environ=environ)
    file = Path(os.path.expanduser(str(path)))
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return _unusable(file_error(f"VOICECALL_CONFIG: no config file at {file}"), str(file))
    except OSError as exc:
        return _unusable(file_error(f"VOICECALL_CONFIG: cannot read {file}: {exc.strerror or exc}"), str(file))
    try:
        data = json5.loads(text)
    except ValueError as exc:
        return _unusable(file_error(f"VOICECALL_CONFIG: {file} is not valid JSON or JSON5: {exc}"), str(file))
    return load_config_data(data, environ=environ, path=str(file))


def load_config_data(
    data: Any, *, environ: Mapping[str, str] | None = None, path: str | None = None
) -> LoadedConfig:
    """Validate an already-parsed config (bare block or the plugins wrapper)."""
    environ = os.environ if environ is None else environ
    warnings: list[str] = []
    if not isinstance(data, dict):
        return _unusable(ConfigError((), "must be a JSON object", text="config: must be a JSON object"), path)

    block, core_tts, entry_enabled, prefix, errors = _unwrap(data, warnings)
    if errors:
        return _unusable(errors, path, warnings)

    block, changes = migrate_block(block, prefix)
    if isinstance(core_tts, dict):
        core_tts = copy.deepcopy(core_tts)
        changes += migrate_tts(core_tts, "tts.")
    if changes:
        warnings.append(
            "legacy config keys detected; they still work for now, but run "
            "`python manage.py voicecall doctor --fix` to rewrite them"
        )
        warnings += [f"  {change}" for change in changes]

    errors: list[str] = []
    if core_tts is not None:
        core_errors = _validation_errors(TtsConfig, core_tts, "tts.")
        errors += core_errors
        if not core_errors and isinstance(block.get("tts"), dict | None):
            block["tts"] = deep_merge(core_tts, block.get("tts"))

    env_sources = _apply_env_fallbacks(block, environ)
    try:
        config = VoiceCallConfig.model_validate(block)
    except ValidationError as exc:
        errors += format_validation_errors(exc, prefix, env_sources)
        config, stand_in = _fallback_config(block), True
    else:
        stand_in = False
    disabled = not entry_enabled or block.get("enabled") is False
    if disabled:
        config = config.model_copy(update={"enabled": False})
    elif not config.provider:
        config = config.model_copy(update={"provider": "mock"})
    if errors:
        return LoadedConfig(
            config=config, errors=errors, warnings=warnings, path=path, env_fallbacks=env_sources, stand_in=stand_in,
        )

    errors += [error.under(prefix) for error in cross_field_errors(config, environ)]
    if config.enabled:
        secret_errors = resolve_secrets(config, environ)
        errors += [error.under(prefix) for error in secret_errors]
        if not secret_errors:
            errors += [error.under(prefix) for error in key_errors(config)]
    if config.skip_signature_verification:
        warnings.append(
            "SECURITY WARNING: skipSignatureVerification is on; webhooks are accepted without "
            "checking the carrier's signature. Use this for local testing only."
        )
    warnings += unbuilt_settings(config, prefix)
    if config.enabled:
        warnings += identifier_warnings(config, environ, env_sources, prefix)
    return LoadedConfig(config=config, errors=errors, warnings=warnings, path=path, env_fallbacks=env_sources)


def _unwrap(data: dict[str, Any], warnings: list[str]):
    """Return (block, core tts, entry enabled, error path prefix, errors)."""
    if "plugins" not in data:
        return copy.deepcopy(data), None, True, "", []
    errors: list[str] = []
    entries = data.get("plugins")
    entries = entries.get("entries") if isinstance(entries, dict) else None
    entry = entries.get("voice-call") if isinstance(entries, dict) else None
    if not isinstance(entry, dict):
        return {}, None, True, WRAPPER_PREFIX, [ConfigError(ENTRY_PATH, "missing (expected an object)")]
    unknown_entry = sorted(set(entry) - ENTRY_KEYS)
    if unknown_entry:
        errors.append(ConfigError(ENTRY_PATH, f"unknown key(s): {', '.join(unknown_entry)}"))
    enabled = entry.get("enabled", True)
    if not isinstance(enabled, bool):
        errors.append(ConfigError((*ENTRY_PATH, "enabled"), "must be true or false"))
    block = entry.get("config", {})
    if not isinstance(block, dict):
        errors.append(ConfigError((*ENTRY_PATH, "config"), "must be an object"))
    ignored = sorted(set(data) - {"plugins", "tts"})
    if ignored:
        warnings.append(f"ignoring top-level keys outside plugins.entries.voice-call: {', '.join(ignored)}")
    return copy.deepcopy(block), data.get("tts"), enabled is not False, WRAPPER_PREFIX, errors


def _apply_env_fallbacks(block: dict[str, Any], environ: Mapping[str, str]) -> dict[str, str]:
    """Fill missing credentials from the environment; returns {config path: variable used}."""
    used: dict[str, str] = {}
    provider = block.get("provider")
    provider = provider if isinstance(provider, str) else "mock"
    for section, key, variable in CARRIER_ENV.get(provider, []) + TUNNEL_ENV:
        value = environ.get(variable, "").strip()
        if not value:
            continue
        target = block if section is None else block.get(section, {})
        if not isinstance(target, dict):
            continue
        if target.get(key) in (None, ""):
            target[key] = value
            if section is not None:
                block[section] = target
            used[f"{section}.{key}" if section else key] = variable
    return used


def format_validation_errors(
    exc: ValidationError, prefix: str = "", env_sources: dict[str, str] | None = None
) -> list[ConfigError]:
    """Pydantic errors as "<path>: <message>" lines, paths in the file's own camelCase."""
    lines = []
    for error in exc.errors(include_url=False):
        parts = _loc_parts(error["loc"])
        message = _message(error)
        variable = (env_sources or {}).get(dotted(parts))
        if variable:
            message += f" (from {variable})"
        if parts:
            lines.append(ConfigError(parts, message).under(prefix))
        else:
            lines.append(ConfigError(split_prefix(prefix), message, text=f"{prefix.rstrip('.') or 'config'}: {message}"))
    return lines


def _loc_parts(loc: tuple) -> tuple[str | int, ...]:
    return tuple(part if isinstance(part, int) else str(part) for part in loc if part != "[key]")


def _message(error: dict[str, Any]) -> str:
    kind = error["type"]
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        return "unknown key"
    msg = error["msg"]
    if kind == "value_error" and msg.startswith("Value error, "):
        return msg[len("Value error, "):]
    if kind in ("int_type", "int_from_float", "int_parsing"):
        return "must be an integer"
    if kind in ("bool_type", "bool_parsing"):
        return "must be true or false"
    if kind in ("string_type",):
        return "must be a string"
    if kind in ("float_type", "float_parsing"):
        return "must be a number"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return "must be an object"
    if kind == "list_type":
        return "must be an array"
    return msg.replace("Input should be", "must be").replace("List should have", "must have")


def resolve_secrets(config: BaseModel, environ: Mapping[str, str] | None = None) -> list[ConfigError]:
    """Resolve every credential now so a missing variable or file is reported with its path."""
    errors: list[ConfigError] = []
    for parts, secret in iter_secret_parts(config):
        try:
            secret.resolve(environ)
        except SecretError as exc:
            errors.append(ConfigError(parts, str(exc)))
    return errors


def iter_secret_parts(node: Any, path: tuple[str | int, ...] = ()):
    """Yield (key path parts, Secret) for every credential in a config model."""
    if isinstance(node, Secret):
        yield path, node
    elif isinstance(node, BaseModel):
        for name, info in type(node).model_fields.items():
            yield from iter_secret_parts(getattr(node, name), (*path, info.alias or name))
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from iter_secret_parts(value, (*path, str(key)))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from iter_secret_parts(value, (*path, index))


def _validation_errors(model: type[BaseModel], data: Any, prefix: str) -> list[str]:
    try:
        model.model_validate(data)
    except ValidationError as exc:
        return format_validation_errors(exc, prefix)
    return []


def _fallback_config(block: dict[str, Any]) -> VoiceCallConfig:
    """Defaults for serving while the file is invalid; keeps a valid `serve` block if there is one."""
    serve = block.get("serve") if isinstance(block, dict) else None
    try:
        return VoiceCallConfig.model_validate({"serve": serve} if isinstance(serve, dict) else {})
    except ValidationError:
        return VoiceCallConfig()


def _unusable(errors: ConfigError | list[ConfigError], path: str | None, warnings: list[str] | None = None) -> LoadedConfig:
    return LoadedConfig(
        config=VoiceCallConfig(),
        errors=[errors] if isinstance(errors, str) else errors,
        warnings=warnings or [],
        path=path,
        stand_in=True,
    )
