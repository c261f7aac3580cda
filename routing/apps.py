"""Django app config for inbound routing."""
from django.apps import AppConfig


class RoutingConfig(AppConfig):
    name = "routing"
    verbose_name = "Inbound routing"
    default_auto_field = "django.db.models.BigAutoField"
