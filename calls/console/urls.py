"""The console's URLs, under /admin/console/ (namespace "console"); each page checks its own permission."""
from __future__ import annotations

from django.contrib import admin
from django.urls import path

from . import actions, latency_views, recordings, views
from .setup import setup_view

app_name = "console"

urlpatterns = [
    path("live/", admin.site.admin_view(views.live_calls), name="live"),
    path("calls/<uuid:call_id>/<slug:action>/", actions.call_action, name="call-action"),
    path("setup/", admin.site.admin_view(setup_view), name="setup"),
    path("latency/", latency_views.latency_page, name="latency"),
    path("calls.csv", latency_views.calls_csv, name="calls-csv"),
    path("recordings/<uuid:recording_id>/audio", admin.site.admin_view(recordings.recording_audio), name="recording-audio"),
]
