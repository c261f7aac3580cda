"""`python manage.py gateway`: run the gateway (Daphne, or uvicorn) on serve.bind:serve.port with its background services."""
from __future__ import annotations

import logging
import sys

from django.conf import settings
from django.core.management.base import BaseCommand

from calls import data_dir_lock
from calls.config import get_config
from calls.gateway import get_gateway
from calls.serving import CannotServe, ListenFailed, Sources, bind_arg, bind_problem, config_refusal, port_arg, reason_of, serving_errors, url
from core.redact import redact


APP = "voicecall_project.asgi:application"
log = logging.getLogger(__name__)
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
    interface.server_class = _exiting_on_listen_failure(with_logged_access(interface.server_class))
    try:
        interface.run(["-e", daphne_endpoint(bind, port), APP])
    except SystemExit:
        if interface.server_class.listen_failure is None:
            raise
    failure = interface.server_class.listen_failure
    if failure is not None:
        exc = getattr(failure.value, "socketError", None)  # Twisted's CannotListenError wraps the OSError
        raise ListenFailed(exc if isinstance(exc, OSError) else OSError(failure.getErrorMessage()))


def _exiting_on_listen_failure(server_class: type) -> type:
    """Daphne's Server, remembering why it could not listen: Daphne would log it and exit with code 1.

    Only when another process took the address after the gateway's own check.
    """

    class Server(server_class):
        listen_failure = None

        def listen_error(self, failure) -> None:
            type(self).listen_failure = failure
            self.stop()

    return Server


def run_uvicorn(bind: str, port: int) -> None:
    import signal

    import uvicorn

    # uvicorn stops gracefully on SIGTERM, then raises the signal again under the handler it found:
    # the default one would end the process before the gateway's `finally` (tunnel, node) runs.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)

    from calls.http_limits import head_timeout
    from calls.uvicorn_guards import GuardedHttpToolsProtocol

    # Media streams are never compressed by carriers, and an access line per webhook is noise. The
    # HTTP limits: the guarded protocol for connections and heads, the ASGI layer for bodies; a kept-alive
    # connection idles as long as a new one may (uvicorn's own timer, which any byte cancels).
    # log_config=None: uvicorn's loggers keep the project's console handler (redacted, LOG_FORMAT).
    uvicorn.run(APP, host=bind, port=port, lifespan="off", ws_per_message_deflate=False, access_log=False,
                log_level="warning", log_config=None, http=GuardedHttpToolsProtocol, timeout_keep_alive=head_timeout())


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


SERVERS = {"daphne": run_daphne, "uvicorn": run_uvicorn}
PROJECT_LOGGERS = ("calls", "routing", "providers")


def _tunnel_port_note(port: int) -> None:
    """The tunnel forwards to serve.port (a cluster's balancer); say so when this gateway listens elsewhere."""
    from calls.exposure import configured_provider

    loaded = get_config()
    provider = configured_provider(loaded.config) if loaded.ok else None
    if provider and port != loaded.config.serve.port:
        logging.getLogger("calls.exposure").warning(
            "the %s tunnel forwards to serve.port %d, not to this gateway's --port %d: right behind a balancer on "
            "serve.port (voicecall cluster); otherwise set serve.port to %d", provider, loaded.config.serve.port, port, port)


class Command(BaseCommand):
    help = "Run the voice-call gateway: webhooks, admin, health endpoints, and the call runtime."
    requires_system_checks: list = []

    def add_arguments(self, parser) -> None:
        parser.add_argument("--bind", type=bind_arg, help="Address to listen on (default: serve.bind, 127.0.0.1)")
        parser.add_argument("--port", type=port_arg, help="Port to listen on, 1-65535 (default: serve.port, 3334)")
        parser.add_argument("--server", choices=SERVERS, default="daphne",
                            help="ASGI server: daphne (default) or uvicorn (uvloop and httptools)")
        parser.add_argument("--verbose", action="store_true",
                            help="Log the project's DEBUG lines too (as LOG_LEVEL=DEBUG)")

    def handle(self, *args, bind=None, port=None, server="daphne", verbose=False, **options) -> None:
        try:
            self._serve(bind, port, server, verbose)
        except (CannotServe, data_dir_lock.DataDirTaken) as exc:
            # One message naming the key or flag and the fix; a traceback would bury it.
            self.stderr.write(redact(str(exc)))  # it may quote a config value or another process
            sys.exit(1)

    def _serve(self, bind: str | None, port: int | None, server: str, verbose: bool) -> None:
        from calls.memtrace import install

        install()  # only with VOICECALL_TRACEMALLOC set (bench/memory.py --trace)
        if verbose:
            for name in PROJECT_LOGGERS:
                logging.getLogger(name).setLevel(logging.DEBUG)

        loaded = get_config()
        errors = serving_errors(loaded, bind_given=bind is not None, port_given=port is not None)
        if errors:
            raise CannotServe(config_refusal(loaded, errors))
        serve = loaded.config.serve
        database = settings.DATABASES["default"]
        log.debug("data directory %s, database %s %s, config %s", settings.DATA_DIR,
                  database["ENGINE"].rsplit(".", 1)[-1], database.get("NAME"), loaded.path or "none (defaults, mock carrier)")
        sources = Sources(loaded, bind_given=bind is not None, port_given=port is not None)
        bind = bind if bind is not None else serve.bind
        port = port if port is not None else serve.port
        if data_dir_lock.needs_lock():
            data_dir_lock.hold(settings.DATA_DIR, url=url(bind, port), config_path=loaded.path)
        problem = bind_problem(bind, port)
        if problem:
            raise CannotServe(sources.refusal(bind, port, *problem))
        sys.setswitchinterval(GIL_SWITCH_SECONDS)
        _tunnel_port_note(port)
        get_gateway().start()
        self.stdout.write(f"Voice-call gateway on {url(bind, port)} (admin at /admin/, webhooks at {serve.path}, RPC at /voice/rpc)")
        self.stdout.flush()
        try:
            SERVERS[server](bind, port)
        except ListenFailed as failed:  # the address was taken between the check and the server's own bind
            raise CannotServe(sources.refusal(bind, port, *reason_of(failed.error, bind, port))) from None
        finally:
            # The tunnel closes with the server (a Tailscale handler would outlive the process).
            get_gateway().exposure.stop()
            # A clean stop says so at once: the streams this process still held are closed by the next
            # sweep rather than after the heartbeat timeout.
            get_gateway().stop_node()
