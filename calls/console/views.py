"""The console's pages (each wrapped by the admin's login check in urls.py; each checks its own permission)."""
from __future__ import annotations

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse

from .actions import action_url_template
from .live import calls_in_progress
from .socket import SOCKET_PATH


def live_calls(request):
    """Calls in progress, kept current by the page's WebSocket (calls/console/socket.py)."""
    if not request.user.has_perm("calls.view_call"):
        raise PermissionDenied
    can_act = request.user.has_perm("calls.act_on_call")
    return TemplateResponse(request, "admin/calls/console/live.html", {
        **admin.site.each_context(request),
        "title": "Live calls",
        "calls": calls_in_progress(),
        "can_act": can_act,
        # Where each row's action widget posts (calls/static/calls/console/actions.js).
        "action_url_template": action_url_template() if can_act else "",
        "socket_path": SOCKET_PATH,
    })
