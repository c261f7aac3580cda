"""The call config in force for this process: loaded once from VOICECALL_CONFIG, swappable in tests.

The config itself (schema, loader, validation) is `core.config`; only which one is in force is kept here.
"""
from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from typing import Any, Iterator

from core.config import LoadedConfig, load_config_data, load_config_file

__all__ = ["get_config", "on_config_change", "reload_config", "use_config"]

log = logging.getLogger(__name__)
_lock = threading.Lock()
_current: LoadedConfig | None = None
_listeners: list = []


def get_config() -> LoadedConfig:
    """The loaded config (read from VOICECALL_CONFIG on first use)."""
    global _current
    if _current is None:
        with _lock:
            if _current is None:
                from django.conf import settings

                _set(load_config_file(settings.VOICECALL_CONFIG))
    return _current  # type: ignore[return-value]


def reload_config() -> LoadedConfig:
    """Read the config file again (e.g. after doctor --fix)."""
    from django.conf import settings

    with _lock:
        _set(load_config_file(settings.VOICECALL_CONFIG))
    return _current  # type: ignore[return-value]


def on_config_change(listener) -> None:
    """Call `listener()` whenever the config in force is replaced (caches hook in here)."""
    _listeners.append(listener)


@contextmanager
def use_config(data: dict[str, Any] | LoadedConfig, environ: dict[str, str] | None = None) -> Iterator[LoadedConfig]:
    """Put a config in force for the duration of a block (tests, standalone tools)."""
    global _current
    loaded = data if isinstance(data, LoadedConfig) else load_config_data(data, environ=environ or {})
    previous = _current
    with _lock:
        _set(loaded)
    try:
        yield loaded
    finally:
        with _lock:
            _set(previous)


def _set(loaded: LoadedConfig | None) -> None:
    global _current
    _current = loaded
    for listener in _listeners:
        listener()
