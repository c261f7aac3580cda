"""`python manage.py gateway`: run the gateway (Daphne) on serve.bind:serve.port with its background services."""
from __future__ import annotations

from django.core.management.base import BaseCommand

from calls.config import get_config
from calls.gateway import get_gateway


class Command(BaseCommand):
    help = "Run the voice-call gateway: webhooks, admin, health endpoints, and the call runtime."
    requires_system_checks: list = []

    def add_arguments(self, parser) -> None:
        parser.add_argument("--bind", help="Address to listen on (default: serve.bind, 127.0.0.1)")
        parser.add_argument("--port", type=int, help="Port to listen on (default: serve.port, 3334)")

    def handle(self, *args, bind=None, port=None, **options) -> None:
        from daphne.cli import CommandLineInterface

        from calls.daphne_requests import skip_form_parsing
        from calls.memtrace import install

        install()  # only with VOICECALL_TRACEMALLOC set (bench/memory.py --trace)

        serve = get_config().config.serve
        bind = bind or serve.bind
        port = port or serve.port
        get_gateway().start()
        skip_form_parsing()
        self.stdout.write(f"Voice-call gateway on http://{bind}:{port} (admin at /admin/, webhooks at {serve.path}, RPC at /voice/rpc)")
        self.stdout.flush()
        CommandLineInterface().run(["-b", bind, "-p", str(port), "voicecall_project.asgi:application"])
