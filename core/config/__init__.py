"""The call config as data: schema, secrets, legacy rewrite, merge, cross-field rules and the loader.

Which config is in force for the running process is not kept here but in `calls.config`.
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .loader import LoadedConfig, load_config_data, load_config_file
    from .schema import VoiceCallConfig
    from .secrets import Secret, SecretError

__all__ = ["LoadedConfig", "Secret", "SecretError", "VoiceCallConfig", "load_config_data", "load_config_file"]

# Resolved on first use: importing a light submodule (models, merge) must not build the pydantic schema.
_HOMES = {
    "LoadedConfig": "loader",
    "load_config_data": "loader",
    "load_config_file": "loader",
    "VoiceCallConfig": "schema",
    "Secret": "secrets",
    "SecretError": "secrets",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value
