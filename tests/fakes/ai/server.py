"""Serving plumbing the loopback WebSocket fakes share: start/stop on a loop or in a thread of its own."""
from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, ClassVar

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response


class FakeWebsocketServer:
    """A WebSocket server on 127.0.0.1 (random port); subclasses implement `_handler` and `_process_request`.

    Serve it in the test's loop (`await fake.start()` / `async with fake`) or in a thread with its
    own loop (`fake.start_thread()` / `with fake:`), e.g. for a gateway served on another thread.
    Subclasses keep their connections in `self.connections` (`last` is the newest).
    """

    serve_options: ClassVar[dict[str, Any]] = {}
    thread_name: ClassVar[str] = "fake-websocket"
    connections: list[Any]

    def _init_server(self) -> None:
        self._server: Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task] = set()

    # --- what a fake implements -----------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        raise NotImplementedError

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> Any:
        """Serve on the running loop (the test's)."""
        self._loop = asyncio.get_running_loop()
        self._server = await serve(self._handler, "127.0.0.1", 0, process_request=self._process_request,
                                   **self.serve_options)
        return self

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Any:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def start_thread(self) -> Any:
        """Serve from a thread with its own loop (for sync tests, or a gateway on another thread)."""
        loop = asyncio.new_event_loop()
        started: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:
                started.set_exception(exc)
                loop.close()
                return
            started.set_result(None)
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread = threading.Thread(target=run, name=self.thread_name, daemon=True)
        self._thread.start()
        started.result(timeout=10)
        return self

    start_in_thread = start_thread

    def stop_thread(self) -> None:
        if self._thread is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> Any:
        return self.start_thread()

    def __exit__(self, *exc: object) -> None:
        self.stop_thread()

    # --- where and what -------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The ws:// origin of the fake (a provider's `baseUrl`)."""
        assert self._server is not None, "start the fake first"
        port = self._server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}"

    @property
    def http_url(self) -> str:
        """The same origin as http:// (config validates baseUrl as an HTTP URL; the client turns it into ws://)."""
        return self.url.replace("ws://", "http://", 1)

    @property
    def last(self) -> Any:
        return self.connections[-1]

    # --- running things on the fake's loop ------------------------------------------------

    def _spawn(self, coro) -> asyncio.Task:
        """A task on the running loop, cancelled by stop()."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def submit(self, coro) -> concurrent.futures.Future:
        """Run an action from synchronous code: `fake.submit(fake.close(1000)).result()`."""
        assert self._loop is not None, "start the fake first"
        return asyncio.run_coroutine_threadsafe(coro, self._loop)
