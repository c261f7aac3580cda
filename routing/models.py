"""Per-number routes and allowlisted callers, managed in the admin beside the config file's own."""
from __future__ import annotations

import secrets
from datetime import timedelta

from django.db import models
from django.utils import timezone

from .validators import validate_e164


class NumberRoute(models.Model):
    """Overrides for inbound calls dialed to `number` (the config's `numbers` keys, editable here).

    A route here wins over a config route for the same number.
    """

    number = models.CharField(max_length=16, unique=True, validators=[validate_e164], help_text="E.164, e.g. +15550001234")
    inbound_greeting = models.TextField(blank=True, default="")
    agent_id = models.CharField(max_length=128, blank=True, default="")
    response_model = models.CharField(max_length=200, blank=True, default="", help_text="provider/model")
    response_system_prompt = models.TextField(blank=True, default="")
    response_timeout_ms = models.PositiveIntegerField(null=True, blank=True)
    tts = models.JSONField(default=dict, blank=True, help_text="Deep-merged over the global tts config")
    # Unset (None): the config's recording.carrier / recording.local.
    record_carrier = models.BooleanField("carrier recording", null=True, blank=True,
                                         help_text="The carrier records calls to this number; unknown: recording.carrier")
    record_local = models.BooleanField("local recording", null=True, blank=True,
                                       help_text="A local WAV of streamed calls to this number; unknown: recording.local")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["number"]

    def __str__(self) -> str:
        return self.number

    def as_route_config(self) -> dict:
        """The route in the config's camelCase shape (only the fields that are set)."""
        data = {
            "inboundGreeting": self.inbound_greeting or None,
            "agentId": self.agent_id or None,
            "responseModel": self.response_model or None,
            "responseSystemPrompt": self.response_system_prompt or None,
            "responseTimeoutMs": self.response_timeout_ms,
            "tts": self.tts or None,
        }
        recording = {"carrier": self.record_carrier, "local": self.record_local}
        if any(value is not None for value in recording.values()):
            data["recording"] = {key: value for key, value in recording.items() if value is not None}
        return {key: value for key, value in data.items() if value is not None}


class AllowedCaller(models.Model):
    """A caller let in when inboundPolicy is allowlist or pairing (added to the config's allowFrom)."""

    number = models.CharField(max_length=16, unique=True, validators=[validate_e164], help_text="E.164, e.g. +15550001234")
    label = models.CharField(max_length=200, blank=True, default="")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["number"]

    def __str__(self) -> str:
        return f"{self.number} {self.label}".strip()


PAIRING_CODE_DIGITS = 6
PAIRING_CODE_LIFETIME = timedelta(hours=24)


def new_pairing_code() -> str:
    return f"{secrets.randbelow(10 ** PAIRING_CODE_DIGITS):0{PAIRING_CODE_DIGITS}d}"


def pairing_code_expiry():
    return timezone.now() + PAIRING_CODE_LIFETIME


class PairingCodeQuerySet(models.QuerySet):
    def usable(self) -> PairingCodeQuerySet:
        return self.filter(used_at__isnull=True, expires_at__gt=timezone.now())


class PairingCode(models.Model):
    """A one-time code an unknown caller keys in or says to join the allowlist (inboundPolicy pairing)."""

    code = models.CharField(max_length=PAIRING_CODE_DIGITS, unique=True, default=new_pairing_code,
                            help_text="Give this to the caller; it works once.")
    label = models.CharField(max_length=200, blank=True, default="", help_text="Who it is for (becomes the allowlist label)")
    expires_at = models.DateTimeField(default=pairing_code_expiry)
    used_at = models.DateTimeField(null=True, blank=True)
    used_by = models.CharField(max_length=16, blank=True, default="", help_text="The number that paired with it")
    created_at = models.DateTimeField(auto_now_add=True)

    objects = PairingCodeQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.code} {self.label}".strip()

    @property
    def usable(self) -> bool:
        return self.used_at is None and self.expires_at > timezone.now()

    def save(self, *args, **kwargs) -> None:
        # A fresh random code may collide with an old one: draw again rather than fail the form.
        if self._state.adding:
            for _ in range(10):
                if not PairingCode.objects.filter(code=self.code).exists():
                    break
                self.code = new_pairing_code()
        super().save(*args, **kwargs)
