"""The live calls page's WebSocket: a snapshot of the calls in progress, then each change as it happens.

Staff with `calls.view_call` only (the admin session's user; others are closed with CLOSE_LOGIN or
CLOSE_FORBIDDEN). The socket joins CONSOLE_GROUP, where writers poke after a change commits and
media streams publish their health once a second; on a poke, and on a timer in case one was lost,
it reads what changed (calls/console/live.py) and sends it (docs/console.md, Live calls).
"""
from __future__ import annotations

import asyncio
import json
import logging
from urllib.parse import urlparse

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.security.websocket import AllowedHostsOriginValidator
from django.db import close_old_connections

from ..gateway import get_gateway
from ..log_limit import warn_limited
from ..streams.outage import layer_errors
from .live import LiveView
from .pokes import CONSOLE_GROUP, in_memory_layer

log = logging.getLogger(__name__)

SOCKET_PATH = "/admin/console/live/socket"
CLOSE_LOGIN = 4401  # not logged in (the session expired): the page says so
CLOSE_FORBIDDEN = 4403  # logged in without calls.view_call
# A look at the database this long after the last, poked or not: a lost poke costs at most this.
SAFETY_SECONDS = 1.0
# How long a refused socket waits for its client to finish the close.
REFUSED_CLOSE_SECONDS = 10.0


def may_view(user) -> bool:
    return bool(user.is_active and user.is_staff and user.has_perm("calls.view_call"))


def read(func):
    """A database read on a worker thread of its own (not the shared one Django's views queue on)."""

    def run():
        close_old_connections()
        try:
            return func()
        finally:
            close_old_connections()

    return database_sync_to_async(run, thread_sensitive=False)()


class LiveCallsConsumer(AsyncWebsocketConsumer):
    """One open live calls page."""

    async def websocket_connect(self, message) -> None:
        # Reached only through ConsoleGate: the user may view calls and the page is this site's.
        await self.accept()
        if in_memory_layer():
            # Pokes from this process's threads reach the in-memory layer on this loop.
            get_gateway().bind_loop(asyncio.get_running_loop())
        self.wake = asyncio.Event()
        self.view = LiveView()
        self.follower: asyncio.Task | None = None
        try:
            await self.channel_layer.group_add(CONSOLE_GROUP, self.channel_name)
        except layer_errors() as exc:  # the timer still shows every change, a second late at most
            log.warning("console socket: joining %s failed: %s", CONSOLE_GROUP, exc)
        await self._send_all(await read(self.view.snapshot))
        self.follower = asyncio.ensure_future(self._follow())

    async def _follow(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self.wake.wait(), SAFETY_SECONDS)
            except TimeoutError:
                pass
            self.wake.clear()
            try:
                messages = await read(self.view.changes)
            except Exception as exc:  # the database is away: tried again on the next poke or tick
                warn_limited(log, ("console socket read", type(exc).__name__), "console socket: reading the live calls "
                             "failed: %s: %s", type(exc).__name__, exc)
                continue
            await self._send_all(messages)

    async def _send_all(self, messages: list[dict]) -> None:
        for message in messages:
            await self.send(text_data=json.dumps(message))

    async def console_poke(self, event) -> None:
        self.wake.set()

    async def console_stream(self, event) -> None:
        """A media stream's health, once a second: passed on for the calls on this page."""
        if event.get("callId") in self.view.rows:
            await self.send(text_data=json.dumps({"type": "stream", "callId": event["callId"], "stats": event.get("stats") or {}}))

    async def receive(self, text_data=None, bytes_data=None) -> None:
        pass  # the page only listens

    async def websocket_disconnect(self, message) -> None:
        follower = getattr(self, "follower", None)
        if follower is not None:
            follower.cancel()
        if hasattr(self, "view"):
            try:
                await self.channel_layer.group_discard(CONSOLE_GROUP, self.channel_name)
            except layer_errors():
                pass
        await super().websocket_disconnect(message)


class ConsoleGate:
    """Refuses the sockets the console does not serve before a consumer exists.

    A consumer holds a channel-layer receive until its client finishes the close handshake, which a
    refused client may take seconds to do (or never do); refused here, a socket costs nothing but itself.
    """

    def __init__(self, app) -> None:
        self.app = app
        self.origins = AllowedHostsOriginValidator(None)  # only its origin test is used

    async def __call__(self, scope, receive, send) -> None:
        if not self.origins.valid_origin(_origin(scope)):
            await send({"type": "websocket.close"})  # before the upgrade: HTTP 403
            return
        user = scope.get("user")
        if user is None or not user.is_authenticated:
            return await _refuse(receive, send, CLOSE_LOGIN)
        if not await database_sync_to_async(may_view, thread_sensitive=False)(user):
            return await _refuse(receive, send, CLOSE_FORBIDDEN)
        return await self.app(scope, receive, send)


def _origin(scope):
    for name, value in scope.get("headers", []):
        if name == b"origin":
            try:
                return urlparse(value.decode("latin1"))
            except UnicodeDecodeError:
                return None
    return None


async def _refuse(receive, send, code: int) -> None:
    """Open, then close with `code` (a socket refused before it opens shows the browser no code at all)."""
    if (await receive())["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.close", "code": code})
    try:  # the client's side of the close; a client that never answers is let go
        async with asyncio.timeout(REFUSED_CLOSE_SECONDS):
            while (await receive())["type"] != "websocket.disconnect":
                pass
    except TimeoutError:
        pass


def live_calls_socket():
    """The ASGI app of the socket: the admin session's user, checked with the page's Origin before any consumer runs."""
    return AuthMiddlewareStack(ConsoleGate(LiveCallsConsumer.as_asgi()))
