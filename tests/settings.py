"""Test settings: the real settings, with background work run inline and no services auto-started.

Under pytest-xdist every worker process gets its own data folder, its own database (pytest-django
suffixes the test database's name per worker) and, in the distributed mode, its own Redis
database, so channel-layer groups and Celery queues never cross workers.
"""
import os
import tempfile
from urllib.parse import urlsplit, urlunsplit

os.environ["VOICECALL_BACKGROUND"] = "inline"
os.environ["VOICECALL_EMBEDDED_SCHEDULER"] = "false"
os.environ["VOICECALL_AUTOSTART_SERVICES"] = "false"
os.environ["VOICECALL_CONFIG"] = ""
# The CLI runs standalone unless a test points it at a gateway it started.
os.environ["VOICECALL_GATEWAY_URL"] = "off"
# The secret key, the local RPC token and the like: this process's own, not the checkout's var/.
os.environ.setdefault("VOICECALL_DATA_DIR", tempfile.mkdtemp(prefix="voicecall-data-"))

_worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", … under pytest-xdist
if _worker.startswith("gw") and os.environ.get("REDIS_URL"):
    # Database 0 is left to a serial run; workers take 1, 2, … (Redis has 16 by default).
    _redis = urlsplit(os.environ["REDIS_URL"])
    os.environ["REDIS_URL"] = urlunsplit(_redis._replace(path=f"/{1 + int(_worker[2:]) % 15}"))

if os.environ.get("REDIS_URL"):
    # The distributed mode refuses to start without a shared key; processes a test starts inherit it.
    os.environ.setdefault("SECRET_KEY", "voicecall-tests-" + "k" * 40)

from voicecall_project.settings import *  # noqa: E402,F401,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":  # noqa: F405
    # A file, not shared-cache memory: threads in tests then wait on locks like in production.
    DATABASES["default"]["TEST"] = {"NAME": os.path.join(tempfile.mkdtemp(prefix="voicecall-test-"), "test.sqlite3")}  # noqa: F405
# Threads (webhook handlers, the sweeper, a Celery worker) close their connections after each
# unit of work, so the test database can be dropped at the end.
DATABASES["default"]["CONN_MAX_AGE"] = 0  # noqa: F405
