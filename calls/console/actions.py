"""POST /admin/console/calls/<id>/<action>/: speak, send DTMF, transfer or end a live call for an operator (calls.act_on_call)."""
from __future__ import annotations

import logging
import uuid

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect, JsonResponse
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme

from core.errors import (
    CallHasEnded, CallNotConnected, CallNotFound, InvalidRequest, SetupIncomplete, UnsupportedByCarrier,
    VoiceCallDisabled, VoiceCallError,
)

from .. import services

log = logging.getLogger(__name__)

PERMISSION = "calls.act_on_call"
# A call id and action that no URL would name: reversed once, they become the widget's placeholders.
_PLACEHOLDER_CALL = uuid.UUID(int=0)
_PLACEHOLDER_ACTION = "action-name"


def action_url_template() -> str:
    """The endpoint's URL with `{call}` and `{action}` in place of the call id and action (for the widget)."""
    url = reverse("console:call-action", kwargs={"call_id": _PLACEHOLDER_CALL, "action": _PLACEHOLDER_ACTION})
    return url.replace(str(_PLACEHOLDER_CALL), "{call}").replace(_PLACEHOLDER_ACTION, "{action}")


def action_urls(call_id) -> dict[str, str]:
    """The endpoint's URL for each action on this call (the record page's plain forms post there)."""
    return {
        action: reverse("console:call-action", kwargs={"call_id": call_id, "action": action})
        for action in services.OPERATOR_ACTIONS
    }


def _status_of(error: VoiceCallError) -> int:
    """The HTTP status an action's error is answered with: never 500 for what the operator or the call did."""
    if isinstance(error, CallNotFound):
        return 404
    if isinstance(error, (CallHasEnded, CallNotConnected, UnsupportedByCarrier)):
        return 409  # the call (or its carrier) cannot take this action now
    if isinstance(error, InvalidRequest):  # InputRejected too: a missing or malformed field
        return 400
    if isinstance(error, (SetupIncomplete, VoiceCallDisabled)):
        return 503
    return 502  # the carrier or the media stream failed the request


def _wants_json(request: HttpRequest) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def _back_url(request: HttpRequest, call_id) -> str:
    """`next` when it is a page of this site, else the call's record."""
    target = request.POST.get("next") or ""
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        return target
    return reverse("admin:calls_call_change", args=[call_id])


def _answer(request: HttpRequest, call_id, *, ok: bool, message: str, status: int, call_live: bool = False) -> HttpResponse:
    if _wants_json(request):
        body = {"ok": ok, "message": message}
        if call_live:
            body["callLive"] = True  # a 409 about the carrier, not the call: the other actions stay usable
        return JsonResponse(body, status=status)
    if status == 404 and not request.POST.get("next"):
        raise Http404(message)  # no record to go back to
    messages.add_message(request, messages.SUCCESS if ok else messages.ERROR, message)
    return HttpResponseRedirect(_back_url(request, call_id))


def call_action_view(request: HttpRequest, call_id: uuid.UUID, action: str) -> HttpResponse:
    if action not in services.OPERATOR_ACTIONS:
        if _wants_json(request):
            return JsonResponse({"ok": False, "message": f"Unknown action {action!r}"}, status=404)
        raise Http404(f"Unknown action {action!r}")
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    if not request.user.has_perm(PERMISSION):
        if _wants_json(request):
            return JsonResponse({"ok": False, "message": "You may not act on calls (needs the act_on_call permission)"}, status=403)
        raise PermissionDenied
    field = services.ACTION_FIELDS[action]
    try:
        done = services.operator_action(
            call_id=str(call_id), action=action, user=request.user, value=request.POST.get(field) if field else None,
            extra={name: request.POST.get(name) for name in services.ACTION_EXTRA_FIELDS.get(action, ())},
        )
    except VoiceCallError as exc:
        return _answer(request, call_id, ok=False, message=exc.message, status=_status_of(exc),
                       call_live=isinstance(exc, UnsupportedByCarrier))
    except Exception:
        # A bug, not the operator's input: logged with its traceback; the operator is told it failed.
        log.exception("operator %s on call %s failed", action, call_id)
        return _answer(request, call_id, ok=False, message=f"{action} failed: internal error (see the gateway's log)", status=500)
    return _answer(request, call_id, ok=True, message=done, status=200)


call_action = admin.site.admin_view(call_action_view)
