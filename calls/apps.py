"""Django app config for the call domain; it creates the process's Gateway."""
from django.apps import AppConfig


class CallsConfig(AppConfig):
    name = "calls"
    verbose_name = "Calls"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from .gateway import Gateway

        self.gateway = Gateway()
        from . import checks  # noqa: F401  (registers the config system check)
        # The modules that define background jobs are imported on first use (background.load_jobs):
        # commands that only read call records never pay for the services and the reply loop.
