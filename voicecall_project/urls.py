"""HTTP routes served by Django (the carrier webhook path is routed in asgi.py)."""
from django.contrib import admin
from django.urls import include, path
from django.views.generic import TemplateView

from calls import rpc, tools, views
from calls.metrics.view import metrics_view

admin.site.site_header = "Voice-call gateway"
admin.site.site_title = "Voice-call gateway"
admin.site.index_title = "Calls, routes and allowlists"
admin.site.site_url = "/"  # "View site": the landing page below

urlpatterns = [
    # Links only, no database: the admin's "View site" and anyone opening the bare address land here.
    path("", TemplateView.as_view(template_name="voicecall/landing.html"), name="landing"),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("metrics", metrics_view, name="metrics"),
    path("voice/rpc", rpc.rpc_view, name="rpc"),
    path("voice/tools/voice_call.json", tools.tool_document_view, name="voice-call-tool"),
    # Before the admin's own URLs: its catch-all would answer these paths first.
    path("admin/console/", include("calls.console.urls")),
    path("admin/", admin.site.urls),
]
