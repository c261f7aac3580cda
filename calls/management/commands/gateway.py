"""`python manage.py gateway`: run the gateway (Daphne, or uvicorn) on serve.bind:serve.port with its background services."""
from __future__ import annotations

import sys

from django.core.management.base import BaseCommand

from calls.config import get_config
from calls.gateway import get_gateway


APP = "voicecall_project.asgi:application"
# How long a worker thread (database work, a reply's responder) may hold the GIL while the event
# loop waits for it. Python's 5 ms default is a whole 20 ms frame slot's margin gone; at 1 ms the
# loop gets back to its frames sooner, for a few more thread switches.
GIL_SWITCH_SECONDS = 0.001


def run_daphne(bind: str, port: int) -> None:
    from daphne.cli import CommandLineInterface

    from calls import daphne_guards
    from calls.access_log import with_logged_access
    from calls.daphne_requests import skip_form_parsing
    from calls.http_limits import daphne_endpoint

    skip_form_parsing()
    daphne_guards.install()  # the HTTP limits, enforced before Daphne buffers a body
    interface = CommandLineInterface()
    interface.server_class = with_logged_access(interface.server_class)
    interface.run(["-e", daphne_endpoint(bind, port), APP])


def run_uvicorn(bind: str, port: int) -> None:
    import uvicorn

    from calls.http_limits import head_timeout
    from calls.uvicorn_guards import GuardedHttpToolsProtocol

    # Media streams are never compressed by carriers, and an access line per webhook is noise. The
    # HTTP limits: the guarded protocol for connections and heads, the ASGI layer for bodies; a kept-alive
    # connection idles as long as a new one may (uvicorn's own timer, which any byte cancels).
    # log_config=None: uvicorn's loggers keep the project's console handler (redacted, LOG_FORMAT).
    uvicorn.run(APP, host=bind, port=port, lifespan="off", ws_per_message_deflate=False, access_log=False,
                log_level="warning", log_config=None, http=GuardedHttpToolsProtocol, timeout_keep_alive=head_timeout())


SERVERS = {"daphne": run_daphne, "uvicorn": run_uvicorn}


class Command(BaseCommand):
    help = "Run the voice-call gateway: webhooks, admin, health endpoints, and the call runtime."
    requires_system_checks: list = []

    def add_arguments(self, parser) -> None:
        parser.add_argument("--bind", help="Address to listen on (default: serve.bind, 127.0.0.1)")
        parser.add_argument("--port", type=int, help="Port to listen on (default: serve.port, 3334)")
        parser.add_argument("--server", choices=SERVERS, default="daphne",
                            help="ASGI server: daphne (default) or uvicorn (uvloop and httptools)")

    def handle(self, *args, bind=None, port=None, server="daphne", **options) -> None:
        from calls.memtrace import install

        install()  # only with VOICECALL_TRACEMALLOC set (bench/memory.py --trace)

        serve = get_config().config.serve
        bind = bind or serve.bind
        port = port or serve.port
        sys.setswitchinterval(GIL_SWITCH_SECONDS)
        get_gateway().start()
        self.stdout.write(f"Voice-call gateway on http://{bind}:{port} (admin at /admin/, webhooks at {serve.path}, RPC at /voice/rpc)")
        self.stdout.flush()
        try:
            SERVERS[server](bind, port)
        finally:
            # A clean stop says so at once: the streams this process still held are closed by the next
            # sweep rather than after the heartbeat timeout.
            get_gateway().stop_node()
