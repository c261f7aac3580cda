"""Admin login throttling: too many failed logins for one username from one client address lock that pair out for a while."""
from __future__ import annotations

import logging
import math
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.core.exceptions import ValidationError

from .clock import now
from .metrics import recorders as metrics
from .models import AdminLoginFailure

log = logging.getLogger(__name__)

LOCKED_MESSAGE = "Too many failed login attempts; try again in %(minutes)s."


def client_address(request) -> str:
    """The address the request came from (behind a proxy: the proxy's, unless the server rewrites it)."""
    return (request.META.get("REMOTE_ADDR") or "unknown")[:45]


def _window() -> timedelta:
    return timedelta(seconds=settings.VOICECALL_ADMIN_LOGIN_WINDOW_SECONDS)


def _lockout() -> timedelta:
    return timedelta(seconds=settings.VOICECALL_ADMIN_LOGIN_LOCKOUT_SECONDS)


def locked_for(username: str, address: str, *, at: datetime) -> timedelta | None:
    """How much longer this username is locked out for this address, or None when it is not.

    Locked: the last MAX_FAILURES failures all fell within the window, and the last of them is
    less than the lockout time ago. Refused attempts are not failures, so they never extend it.
    """
    limit = settings.VOICECALL_ADMIN_LOGIN_MAX_FAILURES
    recent = list(
        AdminLoginFailure.objects.filter(username=username, ip_address=address, failed_at__gt=at - _window() - _lockout())
        .order_by("-failed_at")
        .values_list("failed_at", flat=True)[:limit]
    )
    if len(recent) < limit or recent[0] - recent[-1] > _window():
        return None
    remaining = recent[0] + _lockout() - at
    return remaining if remaining > timedelta(0) else None


def failure_record(username: str, address: str, *, at: datetime) -> None:
    """Remember a failed login; rows too old to lock anything any more go at the same time."""
    AdminLoginFailure.objects.create(username=username, ip_address=address, failed_at=at)
    AdminLoginFailure.objects.filter(failed_at__lt=at - _window() - _lockout()).delete()


def failures_clear(username: str, address: str) -> None:
    AdminLoginFailure.objects.filter(username=username, ip_address=address).delete()


def locked_message(remaining: timedelta) -> str:
    minutes = max(1, math.ceil(remaining.total_seconds() / 60))
    return LOCKED_MESSAGE % {"minutes": f"{minutes} minute" if minutes == 1 else f"{minutes} minutes"}


class ThrottledAdminAuthenticationForm(AdminAuthenticationForm):
    """The admin's login form, refusing a locked-out username and address before the password is checked."""

    def clean(self):
        username = (self.cleaned_data.get("username") or "")[:150]
        if not username or self.request is None:
            return super().clean()  # nothing to count: the form reports the missing field
        address = client_address(self.request)
        at = now()
        remaining = locked_for(username, address, at=at)
        if remaining is not None:
            log.warning("admin login for %r from %s refused: locked out after repeated failures", username, address)
            metrics.refused("admin_lockout")
            raise ValidationError(locked_message(remaining), code="locked_out")
        try:
            cleaned = super().clean()
        except ValidationError:
            failure_record(username, address, at=at)
            log.info("admin login for %r from %s failed", username, address)
            raise
        failures_clear(username, address)
        return cleaned
