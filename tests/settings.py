"""Test settings: the real settings, with background work run inline and no services auto-started."""
import os

os.environ["VOICECALL_BACKGROUND"] = "inline"
os.environ["VOICECALL_EMBEDDED_SCHEDULER"] = "false"
os.environ["VOICECALL_AUTOSTART_SERVICES"] = "false"
os.environ["VOICECALL_CONFIG"] = ""
# The CLI runs standalone unless a test points it at a gateway it started.
os.environ["VOICECALL_GATEWAY_URL"] = "off"

from voicecall_project.settings import *  # noqa: E402,F401,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":  # noqa: F405
    # A file, not shared-cache memory: threads in tests then wait on locks like in production.
    import tempfile

    DATABASES["default"]["TEST"] = {"NAME": os.path.join(tempfile.mkdtemp(prefix="voicecall-test-"), "test.sqlite3")}  # noqa: F405
else:
    # Threads (webhook handlers, the sweeper, a Celery worker) close their connections after
    # each unit of work, so the test database can be dropped at the end.
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # noqa: F405
