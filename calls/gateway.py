"""Starting the gateway process's own services once: the config report, restore, the embedded sweeper."""
from __future__ import annotations

import logging
import threading

from django.conf import settings

from .config import get_config

log = logging.getLogger(__name__)
_started = False
_lock = threading.Lock()
_sweeper = None


def services_started() -> bool:
    return _started


def start_gateway_services() -> bool:
    """Idempotent; returns True the first time. Safe to call from any thread."""
    global _started, _sweeper
    with _lock:
        if _started:
            return False
        _started = True
    loaded = get_config()
    report_config(loaded)
    if loaded.ok:
        from core.errors import VoiceCallError
        from .services import calls_restore

        try:
            calls_restore()
        except VoiceCallError as exc:
            log.warning("restore skipped: %s", exc)
        except Exception:
            log.exception("restore failed; live calls keep their deadlines")
    if settings.VOICECALL_EMBEDDED_SCHEDULER:
        from .scheduler import Sweeper

        _sweeper = Sweeper()
        _sweeper.start()
    return True


def report_config(loaded) -> None:
    """Log, once, what the config says: warnings, and the setup-incomplete list if any."""
    for warning in loaded.warnings:
        log.warning(warning)
    if not loaded.enabled:
        log.warning("voice calls are disabled (enabled: false); the call runtime is not started")
    elif loaded.errors:
        log.warning(
            "voice call setup incomplete; the call runtime is not started. Missing or invalid: %s",
            "; ".join(loaded.errors),
        )
    else:
        config = loaded.config
        log.info(
            "voice call runtime ready: carrier %s, webhooks at %s (%s mode)",
            config.provider, config.webhook_path(), settings.VOICECALL_MODE,
        )


def stop_gateway_services() -> None:
    global _started, _sweeper
    with _lock:
        if _sweeper is not None:
            _sweeper.stop()
            _sweeper = None
        _started = False
