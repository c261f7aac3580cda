"""ASGI entry point: the carrier webhook path goes to the webhook app, everything else to Django."""
from __future__ import annotations

import os

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voicecall_project.settings")
# The admin's CSS and JS are served by the gateway itself, so it needs no web server in front.
django_application = ASGIStaticFilesHandler(get_asgi_application())

from channels.routing import ProtocolTypeRouter  # noqa: E402  (needs Django set up)
from django.conf import settings  # noqa: E402

from asgiref.sync import sync_to_async  # noqa: E402

from calls.config import get_config  # noqa: E402
from calls.console.socket import SOCKET_PATH as CONSOLE_SOCKET_PATH  # noqa: E402
from calls.gateway import get_gateway  # noqa: E402
from core.config.schema import normalize_path  # noqa: E402
from calls.http_limits import BodyGuard  # noqa: E402
from calls.webhooks import HOLD_MUSIC_PATH, WebhookApp  # noqa: E402


class GatewayHttp:
    """Sends {serve.path} (slashes normalized) and the hold music to the webhook app, the rest to Django."""

    def __init__(self, webhook_app, django_app) -> None:
        self.webhook_app = webhook_app
        self.django_app = django_app

    async def __call__(self, scope, receive, send) -> None:
        if settings.VOICECALL_AUTOSTART_SERVICES and not get_gateway().started:
            # Served by a plain `daphne ...asgi:application`: start restore and the sweeper now.
            await sync_to_async(get_gateway().start, thread_sensitive=False)()
        path = normalize_path(scope["path"])
        if path == HOLD_MUSIC_PATH:
            return await self.webhook_app.hold_music(scope, receive, send)
        if path == get_config().config.webhook_path():
            return await self.webhook_app(scope, receive, send)
        return await self.django_app(scope, receive, send)


class Lifespan:
    """ASGI lifespan for servers that send it (uvicorn, hypercorn); Daphne starts services itself."""

    async def __call__(self, scope, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await sync_to_async(get_gateway().start, thread_sensitive=False)()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await sync_to_async(get_gateway().stop, thread_sensitive=False)()
                await send({"type": "lifespan.shutdown.complete"})
                return


class GatewayWebsocket:
    """Media streams at streaming.streamPath, realtime streams at <realtime stream path>/<token> (read
    per connection, so config reloads apply), the console's live calls socket; others refused."""

    def __init__(self) -> None:
        from calls.console.socket import live_calls_socket
        from calls.streams.media import MediaStreamConsumer
        from calls.streams.realtime import RealtimeStreamConsumer

        self.media = MediaStreamConsumer.as_asgi()
        self.realtime = RealtimeStreamConsumer.as_asgi()
        self.console = live_calls_socket()

    async def __call__(self, scope, receive, send) -> None:
        config = get_config().config
        path = normalize_path(scope["path"])
        if path == CONSOLE_SOCKET_PATH:  # checked first: carrier stream paths are configurable
            return await self.console(scope, receive, send)
        if path == normalize_path(config.streaming.stream_path):
            return await self.media(scope, receive, send)
        prefix = normalize_path(config.realtime_stream_path()) + "/"
        if config.realtime.enabled and path.startswith(prefix) and "/" not in path[len(prefix):]:
            scope = {**scope, "url_route": {"kwargs": {"token": path[len(prefix):]}}}
            return await self.realtime(scope, receive, send)
        await send({"type": "websocket.close"})  # refused before the upgrade completes


application = ProtocolTypeRouter(
    {
        "http": GatewayHttp(WebhookApp(), BodyGuard(django_application)),
        "websocket": GatewayWebsocket(),
        "lifespan": Lifespan(),
    }
)
