"""The latency dashboard page and the call records' CSV export (both need calls.view_call)."""
from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

from asgiref.sync import sync_to_async
from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone

from . import latency
from .calls_csv import csv_lines
from .latency import DEFAULT_WINDOW, WINDOWS, Filters


class LatencyForm(forms.Form):
    """The page's GET parameters: a window and filters (the same for the CSV export)."""

    window = forms.ChoiceField(choices=[(w.key, w.label) for w in WINDOWS.values()], required=False,
                               label="Window")
    route = forms.CharField(max_length=16, required=False, label="Route")
    agent = forms.CharField(max_length=128, required=False, label="Agent")
    carrier = forms.CharField(max_length=16, required=False, label="Carrier")
    responder = forms.CharField(max_length=200, required=False, label="Responder / model")

    def window_and_filters(self) -> tuple[latency.Window, Filters]:
        data = self.cleaned_data
        return WINDOWS[data.get("window") or DEFAULT_WINDOW], Filters(
            route=data.get("route", ""), agent=data.get("agent", ""), carrier=data.get("carrier", ""),
            responder=data.get("responder", ""))

    def problems(self) -> list[str]:
        """Each bad parameter named with what is wrong, for the page."""
        return [f"{self.fields[name].label or name}: {' '.join(errors)}" if name in self.fields else " ".join(errors)
                for name, errors in self.errors.items()]


def _require_view(request: HttpRequest) -> None:
    if not request.user.has_perm("calls.view_call"):
        raise PermissionDenied


def latency_view(request: HttpRequest) -> HttpResponse:
    _require_view(request)
    form = LatencyForm(request.GET)
    context = {**admin.site.each_context(request), "title": "Latency", "form": form, "windows": WINDOWS.values()}
    if not form.is_valid():
        context["problems"] = form.problems()
        return TemplateResponse(request, "admin/calls/console/latency.html", context, status=400)
    window, filters = form.window_and_filters()
    now = timezone.now()
    data = latency.dashboard(window, filters, now=now)
    since = latency.bucket_starts(window, now)[0]
    context.update(
        data=data, window=window, filters=filters, max_rows=latency.MAX_ROWS,
        choices={"route": latency.distinct_values("route_key", since), "agent": latency.distinct_values("agent_id", since),
                 "carrier": latency.distinct_values("provider", since), "responder": latency.responder_values(since)},
        query=request.GET.urlencode(),
    )
    return TemplateResponse(request, "admin/calls/console/latency.html", context)


def calls_csv_view(request: HttpRequest) -> HttpResponse:
    _require_view(request)
    form = LatencyForm(request.GET)
    if not form.is_valid():
        return HttpResponse("\n".join(form.problems()) + "\n", status=400, content_type="text/plain; charset=utf-8")
    window, filters = form.window_and_filters()
    now = timezone.now()
    since = latency.bucket_starts(window, now)[0]
    response = StreamingHttpResponse(_served(request, csv_lines(since, now, filters)), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="calls-{window.key}-{now:%Y%m%d-%H%M}.csv"'
    return response


def _served(request: HttpRequest, lines: Iterator[str]) -> Iterator[str] | AsyncIterator[str]:
    """The lines as the server streams them: under ASGI Django reads a plain iterator whole before
    sending anything, so there each chunk is made on a worker thread while the previous one goes out."""
    if not isinstance(request, ASGIRequest):
        return lines

    async def pieces() -> AsyncIterator[str]:
        while (piece := await sync_to_async(next)(lines, None)) is not None:
            yield piece

    return pieces()


latency_page = admin.site.admin_view(latency_view)
calls_csv = admin.site.admin_view(calls_csv_view)
