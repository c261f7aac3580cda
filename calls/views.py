"""Health endpoints: /healthz (the process answers) and /readyz (database up, call runtime ready, tunnel up, where restore is)."""
from __future__ import annotations

from django.db import connection
from django.http import JsonResponse

from .config import get_config
from .gateway import get_gateway


def healthz(request):
    return JsonResponse({"status": "ok"})


def readyz(request):
    body = readiness()
    return JsonResponse(body, status=200 if body["ready"] else 503)


def readiness() -> dict:
    """What /readyz answers: ready, the carrier, where restore is, and the problems (also the setup page)."""
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
    exposure = None
    if loaded.ok:
        from .exposure import exposure_status

        # A configured tunnel that is not up leaves carriers with a URL they cannot reach: not ready.
        exposure = exposure_status(loaded.config, get_gateway().exposure)
        if exposure["state"] not in ("up", "off"):
            problems.append(f"exposure: {exposure['configured']} is {exposure['state']}"
                            + (f": {exposure['error']}" if exposure.get("error") else ""))
    body = {"ready": not problems, "provider": loaded.config.provider if loaded.ok else None}
    if exposure is not None and exposure["state"] != "off":  # nothing configured: nothing to say
        body["exposure"] = {key: exposure.get(key) for key in ("configured", "state", "publicUrl", "error", "webhookUrl")
                            if exposure.get(key) is not None}
    # Restore runs while the gateway serves (webhooks of live calls must be answered meanwhile), so
    # it does not decide readiness; its state says whether every live call was checked yet.
    body["restore"] = get_gateway().restore.as_dict()
    if problems:
        body["errors"] = problems
    return body
