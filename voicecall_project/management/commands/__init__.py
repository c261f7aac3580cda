"""The project's management commands: `runserver` on Daphne."""
