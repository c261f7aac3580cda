"""GET /metrics: the Prometheus text format, optionally behind a bearer token (VOICECALL_METRICS_TOKEN)."""
from __future__ import annotations

import hmac

from django.conf import settings
from django.http import HttpResponse
from django.views.decorators.http import require_GET

from . import multiproc, recorders
from .database import DatabaseCollector


class _ThisProcess:
    """This process's own metrics (and prometheus_client's process and platform ones), when not in multiprocess mode."""

    def collect(self):
        from prometheus_client import REGISTRY

        return REGISTRY.collect()


def registry():
    """What one scrape shows: every process's counters (multiprocess mode) or this process's, and the database gauges."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    scrape = CollectorRegistry(auto_describe=False)
    path = multiproc.directory()
    if path:
        MultiProcessCollector(scrape, path=path)
    else:
        scrape.register(_ThisProcess())
    scrape.register(DatabaseCollector())
    return scrape


def authorized(header: str | None) -> bool:
    """Whether the request may scrape: no token configured, or `Authorization: Bearer <the token>` (compared in constant time)."""
    expected = settings.VOICECALL_METRICS_TOKEN
    if not expected:
        return True
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), expected.encode())


@require_GET
def metrics_view(request):
    from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

    if not authorized(request.headers.get("Authorization")):
        recorders.refused("metrics_auth")
        response = HttpResponse("Unauthorized\n", status=401, content_type="text/plain; charset=utf-8")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    # Every name here is a classic one, so the body is the same in text format 0.0.4 and 1.0.0; 0.0.4 is
    # what every Prometheus version (and other scrapers) reads.
    return HttpResponse(generate_latest(registry()), content_type=CONTENT_TYPE_PLAIN_0_0_4)
