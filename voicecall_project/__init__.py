"""Project package: settings, ASGI routing, URLs and the Celery app (in `celery.py`, loaded only where used)."""
