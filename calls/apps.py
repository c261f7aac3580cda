"""Django app config for the call domain; it creates the process's Gateway."""
from django.apps import AppConfig


class CallsConfig(AppConfig):
    name = "calls"
    verbose_name = "Calls"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.conf import settings

        from core.redact import remember_secret

        from .gateway import Gateway

        # The settings' secrets are masked in every log line and error from the start (the call
        # config's are remembered as they are resolved; the local RPC token when it is read).
        for secret in (settings.SECRET_KEY, settings.VOICECALL_RPC_TOKEN, settings.VOICECALL_METRICS_TOKEN,
                       *(token.token for token in settings.VOICECALL_RPC_TOKENS)):
            remember_secret(secret)

        self.gateway = Gateway()
        from core.urls import set_tunnel_url_source

        # Every URL given to carriers (dials, TwiML, stream URLs, the signed URL checked) uses the
        # tunnel's while it is up; publicUrl still wins (core/urls.py).
        set_tunnel_url_source(self.gateway.exposure.public_url)
        from . import checks  # noqa: F401  (registers the config system check)
        # The modules that define background jobs are imported on first use (background.load_jobs):
        # commands that only read call records never pay for the services and the reply loop.
