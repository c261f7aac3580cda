"""The call config in force for this process: loaded once from VOICECALL_CONFIG, swappable in tests.

The config itself (schema, loader, validation) is `core.config`; which one is in force is state
of the process, kept by its Gateway. These functions are the accessors the rest of the code uses.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from ..gateway import get_gateway

if TYPE_CHECKING:
    from core.config import LoadedConfig

__all__ = ["get_config", "reload_config", "use_config"]


def get_config() -> LoadedConfig:
    """The loaded config (read from VOICECALL_CONFIG on first use)."""
    return get_gateway().config()


def reload_config() -> LoadedConfig:
    """Read the config file again (e.g. after doctor --fix)."""
    return get_gateway().reload_config()


def use_config(
    data: dict[str, Any] | LoadedConfig, environ: dict[str, str] | None = None
) -> AbstractContextManager[LoadedConfig]:
    """Put a config in force for the duration of a block (tests, standalone tools)."""
    return get_gateway().use_config(data, environ)
