"""Admin: per-number routes (the config file's shown beside them), allowlisted callers, pairing codes."""
from __future__ import annotations

from django import forms
from django.contrib import admin

from .models import AllowedCaller, NumberRoute, PairingCode
from .routes import validate_route_tts
from .validators import EXAMPLE, to_e164


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

    def changelist_view(self, request, extra_context=None):
        from calls.config import get_config

        config = get_config().config
        admin_numbers = set(NumberRoute.objects.filter(enabled=True).values_list("number", flat=True))
        config_routes = [
            {"number": number, "overridden": number in admin_numbers,
             "settings": route.model_dump(by_alias=True, exclude_none=True, mode="json")}
            for number, route in sorted(config.numbers.items())
        ]
        extra_context = {**(extra_context or {}), "config_routes": config_routes}
        return super().changelist_view(request, extra_context)


class E164FormField(forms.CharField):
    """A phone number in any common notation, cleaned to E.164 (what is stored and compared)."""

    def to_python(self, value):
        text = super().to_python(value)
        return to_e164(text) if text else text


class AllowedCallerForm(forms.ModelForm):
    number = E164FormField(
        max_length=32, help_text=f"With its country code, in any common notation (+1 (555) 000-3333, 0015550003333); "
                                 f"stored as {EXAMPLE}.")

    class Meta:
        model = AllowedCaller
        fields = "__all__"


@admin.register(AllowedCaller)
class AllowedCallerAdmin(admin.ModelAdmin):
    """Callers let in; the config file's allowFrom numbers are shown beside them, read-only."""

    form = AllowedCallerForm
    list_display = ("number", "label", "enabled", "created_at")
    list_filter = ("enabled",)
    search_fields = ("number", "label")

    def changelist_view(self, request, extra_context=None):
        from calls.config import get_config
        from core.phone import digits_only

        admin_digits = {digits_only(number) for number in AllowedCaller.objects.values_list("number", flat=True)}
        config_callers = [{"number": number, "also_here": digits_only(number) in admin_digits}
                          for number in get_config().config.allow_from]
        extra_context = {**(extra_context or {}), "config_callers": config_callers}
        return super().changelist_view(request, extra_context)


class UsableFilter(admin.SimpleListFilter):
    title = "usable"
    parameter_name = "usable"

    def lookups(self, request, model_admin):
        return (("yes", "Usable"), ("no", "Used or expired"))

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.usable()
        if self.value() == "no":
            return queryset.exclude(pk__in=queryset.usable().values("pk"))
        return queryset


@admin.register(PairingCode)
class PairingCodeAdmin(admin.ModelAdmin):
    """Create a code, read it to the caller; it works once, until it expires (inboundPolicy "pairing")."""

    list_display = ("code", "label", "usable", "expires_at", "used_at", "used_by", "created_at")
    list_filter = (UsableFilter,)
    search_fields = ("code", "label", "used_by")
    readonly_fields = ("code", "used_at", "used_by", "created_at")
    fields = ("code", "label", "expires_at", "used_at", "used_by", "created_at")

    @admin.display(boolean=True)
    def usable(self, obj: PairingCode) -> bool:
        return obj.usable
