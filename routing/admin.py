"""Admin: per-number routes and allowlisted callers, with E.164 and tts validation."""
from __future__ import annotations

from django import forms
from django.contrib import admin

from .models import AllowedCaller, NumberRoute
from .routes import validate_route_tts


class NumberRouteForm(forms.ModelForm):
    class Meta:
        model = NumberRoute
        fields = "__all__"

    def clean_tts(self):
        value = self.cleaned_data.get("tts") or {}
        errors = validate_route_tts(value)
        if errors:
            raise forms.ValidationError(errors)
        return value


@admin.register(NumberRoute)
class NumberRouteAdmin(admin.ModelAdmin):
    form = NumberRouteForm
    list_display = ("number", "agent_id", "response_model", "enabled", "updated_at")
    list_filter = ("enabled",)
    search_fields = ("number", "agent_id", "inbound_greeting")


@admin.register(AllowedCaller)
class AllowedCallerAdmin(admin.ModelAdmin):
    list_display = ("number", "label", "enabled", "created_at")
    list_filter = ("enabled",)
    search_fields = ("number", "label")
