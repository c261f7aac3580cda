"""Django system check: config problems show up in `manage.py check` and at startup, naming each key."""
from __future__ import annotations

from django.core import checks

from .config import get_config


@checks.register("voicecall")
def voicecall_config_check(app_configs=None, **kwargs):
    loaded = get_config()
    messages = [
        checks.Warning(error, hint="The gateway starts, but places and answers no calls until this is fixed.", id="voicecall.W001")
        for error in loaded.errors
    ]
    return messages
