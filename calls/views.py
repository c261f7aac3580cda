"""Health endpoints: /healthz (the process answers) and /readyz (database up, call runtime ready, where restore is)."""
from __future__ import annotations

from django.db import connection
from django.http import JsonResponse

from .config import get_config
from .gateway import get_gateway


def healthz(request):
    return JsonResponse({"status": "ok"})


def readyz(request):
    problems: list[str] = []
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:
        problems.append(f"database: {exc}")
    loaded = get_config()
    if not loaded.enabled:
        problems.append("voice calls are disabled (enabled: false)")
    problems += loaded.errors
    body = {"ready": not problems, "provider": loaded.config.provider if loaded.ok else None}
    # Restore runs while the gateway serves (webhooks of live calls must be answered meanwhile), so
    # it does not decide readiness; its state says whether every live call was checked yet.
    body["restore"] = get_gateway().restore.as_dict()
    if problems:
        body["errors"] = problems
    return JsonResponse(body, status=200 if not problems else 503)
