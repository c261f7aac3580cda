"""Deployment settings, read from the environment, with embedded defaults that need no services."""
from __future__ import annotations

from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from voicecall_project.env_numbers import positive_int_env, seconds_env
from voicecall_project.rpc_tokens import parse_rpc_tokens
from voicecall_project.secret_files import secret_file

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# A local .env file is optional; real deployments set the environment directly.
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DATA_DIR = Path(env("VOICECALL_DATA_DIR", default=str(BASE_DIR / "var")))
DATA_DIR.mkdir(parents=True, exist_ok=True)

# The two run modes (docs/operations.md, Run modes): REDIS_URL switches on channels-redis and Celery.
REDIS_URL = env("REDIS_URL", default="")
VOICECALL_MODE = "distributed" if REDIS_URL else "embedded"

# Signs media-stream tokens, admin sessions and the local RPC token (docs/operations.md, Secrets and
# tokens). Embedded: unset means a random key kept in the data directory (so restarts keep sessions).
# Distributed: every process must share one, or a stream that lands on another node than its webhook
# is refused; a key per data directory would silently differ between hosts, so it must be set.
SECRET_KEY = env("SECRET_KEY", default="")
if not SECRET_KEY.strip():
    if VOICECALL_MODE == "distributed":
        raise ImproperlyConfigured(
            "SECRET_KEY must be set in the distributed mode (REDIS_URL is set): every gateway, worker and beat "
            "process must share the same value, because media-stream tokens and the local RPC token are derived "
            "from it and a process with another key refuses streams and commands the others accept. "
            "Generate one with: python -c 'import secrets; print(secrets.token_urlsafe(50))'"
        )
    SECRET_KEY = secret_file(DATA_DIR / "secret_key", 50)
DEBUG = env.bool("DEBUG", default=False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    # Only for its `runserver` (Daphne's, loaded when that command runs): first, so it wins over
    # django.contrib.staticfiles' WSGI one. The `gateway` command starts Daphne itself.
    "voicecall_project",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "calls",
    "routing",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "voicecall_project.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

ASGI_APPLICATION = "voicecall_project.asgi.application"

DATABASES = {
    "default": env.db_url("DATABASE_URL", default=f"sqlite:///{DATA_DIR / 'voicecall.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several threads (webhooks, the sweeper, background jobs) write at once: wait for the
    # lock instead of failing, take the write lock up front, and let readers run beside writers.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
    DATABASES["default"].setdefault("TEST", {})
# Each worker thread keeps its connection between requests: no connect (and, for SQLite, no
# PRAGMAs) per webhook. A connection found broken is replaced before it is used.
DATABASES["default"].setdefault("CONN_MAX_AGE", 60)
DATABASES["default"].setdefault("CONN_HEALTH_CHECKS", True)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # redis-py reads time out after 5 s by default, the same as the layer's blocking pop:
            # an idle consumer (a media stream waiting for commands) would die with a timeout.
            # Commands to streams bound their own waits (calls/streams/commands.py); a connection
            # that cannot be made in 2 s is an outage, not a slow server.
            "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": 30, "socket_connect_timeout": 2}]},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# Celery (distributed mode only); the embedded mode runs the same jobs in the gateway process.
CELERY_BROKER_URL = REDIS_URL or "memory://"
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TIMEZONE = "UTC"
# A job is queued from the request that wrote its rows (a webhook, an RPC, a stream's end): with the
# broker (Redis) down or stalled, that request must not wait long. Each try gives up after 2 s, and
# one retry follows (kombu's defaults: no read timeout at all, so a stalled Redis hangs the request;
# three retries). What happens to a job that could not be queued: calls/background.py.
CELERY_BROKER_CONNECTION_TIMEOUT = 2.0
CELERY_BROKER_TRANSPORT_OPTIONS = {"socket_timeout": 2.0, "socket_connect_timeout": 2.0}
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}
if REDIS_URL:
    # kombu's Redis transport, except that a worker losing Redis with a job in flight reconnects
    # instead of exiting (voicecall_project/broker.py).
    CELERY_BROKER_TRANSPORT = "voicecall_project.broker:Transport"
# A job running when the worker loses the broker goes on (a greeting mid-playback is not cut off);
# it cannot be acknowledged on that connection, so the broker hands it out again later, and a job
# claims its work first or asks the carrier for something idempotent (calls/services/resume.py).
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
# Jobs that speak (a greeting, a reply) hold their worker while the playback runs, seconds each, so a
# worker runs jobs on threads sized for calls, not cores (as the embedded job pool is); a worker's
# --pool and --concurrency options still win.
CELERY_WORKER_POOL = "threads"
CELERY_WORKER_CONCURRENCY = positive_int_env("VOICECALL_WORKER_THREADS", 32)

# How background jobs run: "thread" (embedded: a pool inside the gateway), "celery"
# (distributed), or "inline" (run on commit in the caller; CLI standalone runtime and tests).
VOICECALL_BACKGROUND = env(
    "VOICECALL_BACKGROUND", default="celery" if VOICECALL_MODE == "distributed" else "thread"
)
# Whether the gateway process runs the periodic sweep itself (embedded) or leaves it to Celery beat.
VOICECALL_EMBEDDED_SCHEDULER = env.bool(
    "VOICECALL_EMBEDDED_SCHEDULER", default=VOICECALL_MODE == "embedded"
)
# The most seconds restore after start spends asking the carrier about live calls (it runs in the
# background while the server listens); calls not asked about by then keep their deadlines.
VOICECALL_RESTORE_SECONDS = env.float("VOICECALL_RESTORE_SECONDS", default=60.0)
# How often the embedded sweeper looks for jobs a dead process left (an expired greeting or hang-up
# claim, an answered call never greeted) and starts them again; a greeting the carrier refused is
# retried at this pace too.
VOICECALL_RESUME_SECONDS = env.float("VOICECALL_RESUME_SECONDS", default=30.0)
# Each serving gateway process writes a heartbeat row this often (calls/services/nodes.py); a process
# whose heartbeat is older than the timeout is suspected, then declared dead by the next sweep, and the
# media streams it held are closed as a disconnect is (docs/operations.md, Restore after start and crashes).
VOICECALL_NODE_HEARTBEAT_SECONDS = seconds_env("VOICECALL_NODE_HEARTBEAT_SECONDS", 5.0)
VOICECALL_NODE_TIMEOUT_SECONDS = seconds_env("VOICECALL_NODE_TIMEOUT_SECONDS", 15.0)
if VOICECALL_NODE_TIMEOUT_SECONDS < 2 * VOICECALL_NODE_HEARTBEAT_SECONDS:
    raise ImproperlyConfigured(
        f"VOICECALL_NODE_TIMEOUT_SECONDS ({VOICECALL_NODE_TIMEOUT_SECONDS:g}) must be at least twice "
        f"VOICECALL_NODE_HEARTBEAT_SECONDS ({VOICECALL_NODE_HEARTBEAT_SECONDS:g}), so that one late heartbeat "
        "does not get a live gateway declared dead"
    )
# How long placing an outbound call waits for the carrier to accept the dial before it answers that
# the call is queued (the dial job goes on in the background); a request's own `wait` overrides it.
VOICECALL_DIAL_WAIT_SECONDS = env.float("VOICECALL_DIAL_WAIT_SECONDS", default=15.0)
if not 0 <= VOICECALL_DIAL_WAIT_SECONDS < float("inf"):
    raise ImproperlyConfigured("VOICECALL_DIAL_WAIT_SECONDS must be a finite number of seconds, 0 or more")
# Start the gateway's background services on the first ASGI request when the server did not.
VOICECALL_AUTOSTART_SERVICES = env.bool("VOICECALL_AUTOSTART_SERVICES", default=True)

# Bearer tokens for POST /voice/rpc: comma-separated "scope:token" entries, scope read or write
# (write includes read). Checked here so a bad entry stops every process with a message naming it.
VOICECALL_RPC_TOKENS = parse_rpc_tokens(env("VOICECALL_RPC_TOKENS", default=""))
# Bearer token GET /metrics asks for (docs/console.md, Metrics); unset means the endpoint is open.
VOICECALL_METRICS_TOKEN = env("VOICECALL_METRICS_TOKEN", default="").strip()
# Where the CLI finds the running gateway's RPC (default: http://<serve.bind>:<serve.port>).
VOICECALL_GATEWAY_URL = env("VOICECALL_GATEWAY_URL", default="")
# The token the CLI sends; default: the first write token above, else the local token file.
VOICECALL_RPC_TOKEN = env("VOICECALL_RPC_TOKEN", default="")

# Admin login throttling (calls/admin_login.py): this many failed logins for one username from one
# client address within the window lock that pair out for the lockout time.
VOICECALL_ADMIN_LOGIN_MAX_FAILURES = positive_int_env("VOICECALL_ADMIN_LOGIN_MAX_FAILURES", 5)
VOICECALL_ADMIN_LOGIN_WINDOW_SECONDS = positive_int_env("VOICECALL_ADMIN_LOGIN_WINDOW_SECONDS", 15 * 60)
VOICECALL_ADMIN_LOGIN_LOCKOUT_SECONDS = positive_int_env("VOICECALL_ADMIN_LOGIN_LOCKOUT_SECONDS", 15 * 60)

# Path of the call config file (JSON or JSON5); unset means defaults with the mock carrier.
VOICECALL_CONFIG = env("VOICECALL_CONFIG", default="")

# HTTP limits every server enforces (docs/operations.md, HTTP limits): seconds a connection has for a
# whole request head (from its opening or its previous answer), and for a body after its head.
VOICECALL_HTTP_HEAD_TIMEOUT = env.float("VOICECALL_HTTP_HEAD_TIMEOUT", default=10.0)
VOICECALL_WEBHOOK_BODY_TIMEOUT = env.float("VOICECALL_WEBHOOK_BODY_TIMEOUT", default=5.0)
VOICECALL_HTTP_BODY_TIMEOUT = env.float("VOICECALL_HTTP_BODY_TIMEOUT", default=30.0)
for _name in ("VOICECALL_HTTP_HEAD_TIMEOUT", "VOICECALL_WEBHOOK_BODY_TIMEOUT", "VOICECALL_HTTP_BODY_TIMEOUT"):
    if not 0 < globals()[_name] < float("inf"):  # also refuses NaN
        raise ImproperlyConfigured(f"{_name} must be a finite number of seconds above 0")

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"

# Console lines as text (the default) or one JSON object per line; both name the call a line is about.
LOG_FORMAT = env("LOG_FORMAT", default="text").strip().lower() or "text"
if LOG_FORMAT not in ("text", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT must be text or json, got {LOG_FORMAT!r}")

# Level of the project's loggers (calls, routing, providers); VOICECALL_LOG_LEVEL is its older name.
# `manage.py gateway --verbose` is LOG_LEVEL=DEBUG for one run. Other libraries log warnings only.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_LEVEL = (env("LOG_LEVEL", default="") or env("VOICECALL_LOG_LEVEL", default="") or "INFO").strip().upper()
if LOG_LEVEL not in LOG_LEVELS:
    _name = "LOG_LEVEL" if env("LOG_LEVEL", default="") else "VOICECALL_LOG_LEVEL"
    raise ImproperlyConfigured(f"{_name} must be one of {', '.join(LOG_LEVELS)}, got {env(_name)!r}")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # By dotted path, so reading the settings imports no project code; resolved when logging is set up.
    "formatters": {
        "text": {"()": "core.log_format.TextFormatter"},
        "json": {"()": "core.log_format.JsonFormatter"},
    },
    # No line leaves with a credential in its message or traceback, whichever logger wrote it.
    "filters": {"redact": {"()": "core.redact.RedactFilter"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["redact"]},
    },
    # One handler, on the root logger: the project's loggers propagate to it. A handler of their own
    # as well would print each line twice once a server (Daphne) gives the root logger one.
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        **{
            name: {"level": LOG_LEVEL}
            for name in ("calls", "routing", "providers")
        },
        # At DEBUG the WebSocket client logs every request's headers, the providers' API keys among them.
        "websockets": {"level": "INFO"},
        # The servers' start-up lines (HTTP/2 support, endpoints, "Listening on ...") repeat the
        # gateway's own banner; their warnings and errors still show.
        "daphne": {"level": "WARNING"},
        "uvicorn": {"level": "WARNING"},
    },
}
