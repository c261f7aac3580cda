"""The setup page: the `setup` checks with their fixes, the config file and its errors by key path, where each secret comes from, the run mode and readiness."""
from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q
from django.template.response import TemplateResponse

from calls.cli.setup import config_file, error_fix, setup_checks, warning_fix
from calls.config import get_config
from calls.models import GatewayNode
from calls.views import readiness

from .secret_sources import config_secrets, deployment_secrets, provider_key_envs

NO_CONFIG = "none: defaults with the mock carrier"


@dataclass(frozen=True)
class ErrorRow:
    key_path: str  # "" for the file as a whole
    message: str
    fix: str


@dataclass(frozen=True)
class WarningRow:
    text: str
    details: tuple[str, ...]  # the indented lines that follow a warning (each legacy key rewritten)
    fix: str


def setup_view(request):
    if not request.user.has_perm("calls.view_setup"):
        raise PermissionDenied
    loaded = get_config()
    checks = setup_checks(loaded)
    file = config_file(loaded)
    context = {
        **admin.site.each_context(request),
        "title": "Setup",
        "ok": all(check.ok for check in checks),
        "checks": checks,
        "failing": [check for check in checks if not check.ok and not check.skipped],
        "skipped": [check for check in checks if check.skipped],
        "warnings": warning_rows(loaded.warnings, file),
        "config_path": loaded.path or NO_CONFIG,
        "errors": [ErrorRow(getattr(e, "key_path", ""), getattr(e, "message", str(e)), error_fix(e, file)) for e in loaded.errors],
        "config_secrets": config_secrets(loaded),
        "config_valid": not loaded.errors,
        "provider_keys": provider_key_envs(),
        "deployment_secrets": deployment_secrets(settings),
        "mode": settings.VOICECALL_MODE,
        "background": settings.VOICECALL_BACKGROUND,
        "channel_layer": settings.CHANNEL_LAYERS["default"]["BACKEND"].rsplit(".", 1)[-1],
        "nodes": live_nodes(),
        "readiness": readiness(),
    }
    return TemplateResponse(request, "admin/calls/console/setup.html", context)


def warning_rows(warnings: list[str], file: str) -> list[WarningRow]:
    """The config's warnings, each with the detail lines under it and what to do."""
    rows: list[WarningRow] = []
    for warning in warnings:
        if warning.startswith("  ") and rows:
            last = rows[-1]
            rows[-1] = WarningRow(last.text, (*last.details, warning.strip()), last.fix)
        else:
            rows.append(WarningRow(warning, (), warning_fix(warning, file)))
    return rows


def live_nodes() -> list[GatewayNode]:
    """Gateway processes not stopped, newest first, with their open media streams counted."""
    return list(
        GatewayNode.objects.filter(stopped_at__isnull=True)
        .annotate(open_streams=Count("media_streams", filter=Q(media_streams__closed_at__isnull=True)))
        .order_by("-started_at")[:50]
    )
