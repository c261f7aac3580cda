"""Local fake carriers (Twilio, Telnyx, Plivo) that speak each carrier's real protocol on a loopback port."""
from __future__ import annotations

from .base import Delivery, FakeServer, Recorded
from .plivo import FakePlivo, FakePlivoCall
from .telnyx import FakeTelnyx, FakeTelnyxCall
from .twilio import FakeTwilio, FakeTwilioCall

__all__ = [
    "Delivery",
    "FakePlivo",
    "FakePlivoCall",
    "FakeServer",
    "FakeTelnyx",
    "FakeTelnyxCall",
    "FakeTwilio",
    "FakeTwilioCall",
    "Recorded",
]
