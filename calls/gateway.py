"""The gateway's process state in one object: config in force, call runtime, job executor, sweeper, event loop.

`CallsConfig.ready()` creates the one Gateway of the process; `get_gateway()` returns it. The
module-level accessors elsewhere (`get_config`, `get_runtime`, `background.submit`, ...) read
and change the state through it, so nothing else keeps process state in module globals.

Lifecycle: `start()` once per serving process (the `gateway` command, the ASGI lifespan, or the
first request under a plain ASGI server) reports the config, registers the process as a gateway
node with a heartbeat (calls/nodes.py), starts the configured tunnel (calls/exposure.py) and
restoring live calls, each on a thread of its own (the server listens meanwhile), and starts the
embedded sweeper; `stop()` stops the sweeper and the job threads, closes the tunnel and marks the
node stopped. Processes that only run jobs
or commands (Celery workers, the CLI) never start it and use the config and runtime lazily.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.apps import apps
from django.conf import settings

if TYPE_CHECKING:
    from core.config import LoadedConfig

    from .background import JobExecutor
    from .runtime import CallRuntime
    from .scheduler import Sweeper

log = logging.getLogger(__name__)

STOP_RESTORE_WAIT_SECONDS = 2.0


class Gateway:
    """Everything this process holds between requests; see the module docstring for the lifecycle."""

    def __init__(self) -> None:
        from .background import JobExecutor
        from .exposure import Exposure
        from .leases import LeaseKeeper
        from .nodes import NodeHeartbeat
        from .restoring import Restore

        self.jobs: JobExecutor = JobExecutor()
        # Claims this process holds while their work runs (a greeting playing), renewed on one thread.
        self.leases = LeaseKeeper()
        # Restore after start, in the background; /readyz reports its state.
        self.restore = Restore()
        # This serving process as a node other processes can see die (calls/nodes.py).
        self.node = NodeHeartbeat()
        # The tunnel to the public internet (ngrok, Tailscale) this process runs, or reads of another's.
        self.exposure = Exposure()
        # Told when a deadline is written (the embedded sweeper wakes up for it).
        self.deadline_listeners: list[Callable[[datetime], None]] = []
        # The event loop media streams run on here (the in-memory channel layer is bound to it).
        self.loop: asyncio.AbstractEventLoop | None = None
        self.sweeper: Sweeper | None = None
        self.started = False
        self._loaded: LoadedConfig | None = None
        self._runtime: CallRuntime | None = None
        self._config_lock = threading.Lock()
        self._runtime_lock = threading.Lock()
        self._start_lock = threading.Lock()

    # --- the config in force -------------------------------------------------------------------

    def config(self) -> LoadedConfig:
        """The loaded config (read from VOICECALL_CONFIG on first use)."""
        loaded = self._loaded
        if loaded is None:
            with self._config_lock:
                if self._loaded is None:
                    self._put_config(_read_config_file())
                loaded = self._loaded
        return loaded  # type: ignore[return-value]

    def reload_config(self) -> LoadedConfig:
        """Read the config file again (e.g. after doctor --fix)."""
        with self._config_lock:
            self._put_config(_read_config_file())
            return self._loaded  # type: ignore[return-value]

    @contextmanager
    def use_config(
        self, data: dict[str, Any] | LoadedConfig, environ: dict[str, str] | None = None
    ) -> Iterator[LoadedConfig]:
        """Put a config in force for the duration of a block (tests, standalone tools)."""
        from core.config.loader import LoadedConfig, load_config_data

        loaded = data if isinstance(data, LoadedConfig) else load_config_data(data, environ=environ or {})
        previous = self._loaded
        with self._config_lock:
            self._put_config(loaded)
        try:
            yield loaded
        finally:
            with self._config_lock:
                self._put_config(previous)

    def _put_config(self, loaded: LoadedConfig | None) -> None:
        self._loaded = loaded
        self.reset_runtime()  # the carrier was built from the config it replaces

    # --- the call runtime ----------------------------------------------------------------------

    def runtime(self) -> CallRuntime:
        """The runtime for the config in force; raises VoiceCallDisabled or SetupIncomplete."""
        from .runtime import build_runtime

        loaded = self.config()
        runtime = self._runtime
        if runtime is not None and runtime.loaded is loaded:
            return runtime
        with self._runtime_lock:
            if self._runtime is None or self._runtime.loaded is not loaded:
                self._runtime = build_runtime(loaded)
            return self._runtime

    def current_runtime(self) -> CallRuntime | None:
        """The runtime if it is already built for the config in force, else None (nothing is built)."""
        runtime, loaded = self._runtime, self._loaded
        return runtime if runtime is not None and loaded is not None and runtime.loaded is loaded else None

    def reset_runtime(self) -> None:
        with self._runtime_lock:
            if self._runtime is not None:
                self._runtime.carrier.close()
            self._runtime = None

    # --- the event loop ------------------------------------------------------------------------

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Remember the event loop media streams run on in this process (for the in-memory layer)."""
        self.loop = loop

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> bool:
        """Report the config, start restoring live calls (in the background), start the embedded sweeper.

        Idempotent; returns True the first time. Safe to call from any thread.
        """
        with self._start_lock:
            if self.started:
                return False
            self.started = True
        from core.malloc import tune

        from .background import load_jobs
        from .warmup import warm

        tune()  # before the thread pools start; see core/malloc.py
        warm()  # imports and TLS contexts happen here, once, never on the event loop
        load_jobs()  # the first webhook or reply of a serving process does not wait for the imports
        loaded = self.config()
        report_config(loaded)
        # Registered before restore and before the server listens: every stream it opens names it.
        self.node.start()
        if loaded.ok:
            # On a thread of its own: the tunnel takes seconds to open and the server listens meanwhile.
            self.exposure.start(loaded.config)
            self._restore_start()
        else:
            self.restore.skip("voice calls are disabled or their setup is incomplete")
        if settings.VOICECALL_EMBEDDED_SCHEDULER:
            from .scheduler import Sweeper

            self.sweeper = Sweeper()
            self.sweeper.start()
        return True

    def _restore_start(self) -> None:
        """Restore on its own thread: the server listens meanwhile (calls/restoring.py)."""
        from core.errors import VoiceCallError

        from .clock import now
        from .models import ReplyTurn

        started_at = now()
        try:
            self.runtime()  # the carrier is built here rather than by the first media stream
            # What exists before this process serves was left by the one before it (read now, before
            # the server listens; one indexed query).
            replies_upto = ReplyTurn.objects.order_by("-pk").values_list("pk", flat=True).first()
        except VoiceCallError as exc:
            log.warning("restore skipped: %s", exc)
            self.restore.skip(str(exc))
            return
        except Exception as exc:
            log.exception("restore failed; live calls keep their deadlines")
            self.restore.fail(f"{type(exc).__name__}: {exc}")
            return
        self.restore.start(process_started_at=started_at, replies_upto=replies_upto or 0, node_id=self.node.node_id)

    def stop(self) -> None:
        """Stop the sweeper, let the job threads finish, mark the node stopped; start() may be called again."""
        with self._start_lock:
            if self.sweeper is not None:
                self.sweeper.stop()
                self.sweeper = None
            self.jobs.shutdown()
            self.exposure.stop()
            self.stop_node()
            self.started = False
            from .restoring import Restore

            # A restore still running (a slow carrier) gets a moment, then ends on its own thread;
            # the next start restores again.
            self.restore.wait(STOP_RESTORE_WAIT_SECONDS)
            self.restore = Restore()


    def stop_node(self) -> None:
        """Stop the heartbeat and mark this process's node stopped (a server that exits calls this last)."""
        from .nodes import NodeHeartbeat

        node, self.node = self.node, NodeHeartbeat()
        node.stop()


def _read_config_file() -> LoadedConfig:
    # Imported here: the pydantic schema is built only by a process that reads the config.
    from core.config.loader import load_config_file

    return load_config_file(settings.VOICECALL_CONFIG)


def get_gateway() -> Gateway:
    """The process's one Gateway (created by CallsConfig.ready)."""
    return apps.get_app_config("calls").gateway


def report_config(loaded: LoadedConfig) -> None:
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
        if config.realtime.enabled:
            from calls.realtime.provider import realtime_problem

            problem = realtime_problem(config)
            if problem:
                log.warning("realtime.enabled is set but realtime voice cannot run: %s; realtime calls are not bridged",
                            problem)
        log.info(
            "voice call runtime ready: carrier %s, webhooks at %s (%s mode)",
            config.provider, config.webhook_path(), settings.VOICECALL_MODE,
        )
