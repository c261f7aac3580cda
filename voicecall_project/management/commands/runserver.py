"""`python manage.py runserver`: the development server on Daphne (ASGI: webhooks and media-stream WebSockets).

Daphne's own app would put this command in place, but it imports Daphne and Twisted at startup
for every command; this module is imported only when `runserver` runs. The project app is listed
before django.contrib.staticfiles so that its `runserver` is the one Django picks.
"""
from daphne.management.commands.runserver import Command  # noqa: F401
