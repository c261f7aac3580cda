"""HTTP routes served by Django (the carrier webhook path is routed in asgi.py)."""
from django.contrib import admin
from django.urls import path

from calls import rpc, tools, views

admin.site.site_header = "Voice-call gateway"
admin.site.site_title = "Voice-call gateway"
admin.site.index_title = "Calls, routes and allowlists"

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("voice/rpc", rpc.rpc_view, name="rpc"),
    path("voice/tools/voice_call.json", tools.tool_document_view, name="voice-call-tool"),
    path("admin/", admin.site.urls),
]
