"""The real ASGI application served by Daphne on a loopback port, in this process, for end-to-end tests.

One server for the whole session (Twisted's reactor runs once per process). It shares this
process's config and database, so tests configure it with the usual fixtures; they must use
transactional database access, since requests are served on other threads.
"""
from __future__ import annotations

import threading

from tests.waiting import wait_until

_server = None
_url: str | None = None


def live_gateway_loop():
    """The event loop the live gateway serves on (Twisted's asyncio reactor loop), once started."""
    from twisted.internet import reactor

    return reactor._asyncioEventloop


def live_gateway_url() -> str:
    """Start Daphne on 127.0.0.1:<free port> once; returns its base URL."""
    global _server, _url
    if _url is not None:
        return _url
    from daphne.server import Server

    from calls import daphne_guards
    from calls.daphne_requests import skip_form_parsing
    from calls.http_limits import daphne_endpoint
    from calls.warmup import warm
    from voicecall_project.asgi import application

    skip_form_parsing()  # as `manage.py gateway` does: the carriers' form posts must arrive whole
    daphne_guards.install()  # and with the same HTTP limits
    warm()  # as Gateway.start() does before a real gateway serves

    ready = threading.Event()
    _server = Server(
        application=application,
        endpoints=[daphne_endpoint("127.0.0.1", 0)],
        signal_handlers=False,
        ready_callable=ready.set,
        verbosity=0,
    )
    threading.Thread(target=_server.run, name="live-gateway", daemon=True).start()
    if not ready.wait(10):
        raise RuntimeError("the live gateway did not start")
    host, port = wait_until(lambda: _server.listening_addresses, "the live gateway to bind a port")[0]
    _url = f"http://{host}:{port}"
    return _url
