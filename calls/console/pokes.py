"""Pokes for the live calls page: a call changed, so every console socket re-reads what changed.

The database is the truth; a poke carries nothing but "look again". It is sent to the channel-layer
group CONSOLE_GROUP after the change commits, from whichever process made it (a webhook thread, a
Celery worker, a media stream's service). Sending must cost the writer next to nothing, so `poke()`
only sets a flag and hands off to an event loop: the gateway's own loop in the embedded mode (the
in-memory layer lives there), a small publisher thread of this process with Redis. Pokes within
POKE_INTERVAL of the last one sent are folded into one, so a burst of webhooks costs the consoles
a few reads a second, not one per row written. A lost poke is covered by the sockets' own timer.
"""
from __future__ import annotations

import asyncio
import logging
import os
import threading
import time

from django.conf import settings
from django.db import transaction

from ..log_limit import warn_limited

log = logging.getLogger(__name__)

CONSOLE_GROUP = "voicecall.console"
POKE = {"type": "console.poke"}
# At most one poke per this many seconds per process; the first after a quiet spell goes at once.
POKE_INTERVAL = 0.2
# A layer that takes longer than this to take a poke is down; the sockets' timer covers for it.
SEND_TIMEOUT = 2.0


def in_memory_layer() -> bool:
    """The in-memory channel layer (embedded mode): consoles are in this process, on the gateway's loop."""
    backend = settings.CHANNEL_LAYERS.get("default", {}).get("BACKEND", "")
    return backend.endswith("InMemoryChannelLayer")


class Poker:
    """Coalesces pokes and sends them on an event loop; `poke()` is safe and cheap from any thread."""

    def __init__(self) -> None:
        self.pending = False  # a send is scheduled and has not started yet: later pokes ride on it
        self.last_sent = 0.0
        self.sent = 0
        self._task: asyncio.Future | None = None
        self._publisher: tuple[int, asyncio.AbstractEventLoop] | None = None
        self._lock = threading.Lock()

    def poke(self) -> None:
        if self.pending:
            return
        loop = self._loop()
        if loop is None:
            return
        self.pending = True
        try:
            loop.call_soon_threadsafe(self._schedule)
        except RuntimeError:  # the loop closed meanwhile (a server stopping): nobody is left to tell
            self.pending = False

    def _loop(self) -> asyncio.AbstractEventLoop | None:
        if in_memory_layer():
            from ..gateway import get_gateway

            loop = get_gateway().loop
            return loop if loop is not None and not loop.is_closed() else None
        return self._publisher_loop()

    def _publisher_loop(self) -> asyncio.AbstractEventLoop:
        """This process's publisher loop, on a daemon thread (a new one in a forked child)."""
        publisher = self._publisher
        if publisher is not None and publisher[0] == os.getpid():
            return publisher[1]
        with self._lock:
            if self._publisher is None or self._publisher[0] != os.getpid():
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="console-pokes", daemon=True).start()
                self._task = None
                self._publisher = (os.getpid(), loop)
            return self._publisher[1]

    def _schedule(self) -> None:
        """On the loop: one sender at a time; it goes on while pokes keep arriving."""
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._send())

    async def _send(self) -> None:
        from channels.layers import get_channel_layer

        while self.pending:  # a poke made while the last one was on its way needs one more
            wait = self.last_sent + POKE_INTERVAL - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self.pending = False  # pokes from here on need another send
            self.last_sent = time.monotonic()
            try:
                async with asyncio.timeout(SEND_TIMEOUT):
                    await get_channel_layer().group_send(CONSOLE_GROUP, POKE)
                self.sent += 1
            except Exception as exc:  # the layer is down: the consoles' timer finds the change instead
                warn_limited(log, ("console poke", type(exc).__name__), "console poke not sent: %s: %s",
                             type(exc).__name__, exc)


poker = Poker()


def poke() -> None:
    """Tell the consoles that calls changed (any thread, never blocks)."""
    poker.poke()


def changed() -> None:
    """A call, its transcript or its stream changed: poke the consoles once the change is committed."""
    transaction.on_commit(poker.poke)
