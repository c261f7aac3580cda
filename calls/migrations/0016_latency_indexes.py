"""Indexes for reading a time window: calls by start, auto-replies by when they were heard, events by type and time."""
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("calls", "0015_console_permissions"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="call",
            index=models.Index(fields=["started_at"], name="call_started_at"),
        ),
        migrations.AddIndex(
            model_name="callevent",
            index=models.Index(fields=["type", "occurred_at"], name="event_type_occurred"),
        ),
        migrations.AddIndex(
            model_name="replyturn",
            index=models.Index(fields=["heard_at"], name="reply_heard_at"),
        ),
    ]
