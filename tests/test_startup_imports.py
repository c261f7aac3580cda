"""What a `manage.py` process imports: each command loads what it uses, and nothing heavy it does not.

Each command runs as `manage.py` in a fresh interpreter that writes the names in sys.modules
when it exits; the tests assert on those names, never on time, so a busy machine cannot fail
them. The process uses the real settings on an SQLite database in a temporary folder.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid

import pytest

from tests.paths import ROOT

# Loaded only by the commands that need them (why, in the comments of the modules that import them).
SERVER = ("twisted", "daphne", "autobahn")  # Daphne: `gateway` and `runserver` only
CELERY = ("celery", "kombu")  # the distributed mode, when a task is sent or run
SIMULATOR = ("calls.simulator",)  # `voicecall simulate`
CONFIG = ("pydantic", "core.config.schema", "core.config.loader")  # commands that read the call config
CALL_WORK = ("calls.services", "calls.conversation", "httpx")  # placing and controlling calls
MEDIA = ("numpy", "cryptography")  # audio (TTS, media streams) and Telnyx keys: not for placing a mock call


def environment(data_dir, **extra: str) -> dict[str, str]:
    """The real settings, embedded mode, on the SQLite database in `data_dir`, with no gateway to delegate to."""
    environ = {key: value for key, value in os.environ.items() if key not in ("DATABASE_URL", "REDIS_URL")}
    environ.update(
        DJANGO_SETTINGS_MODULE="voicecall_project.settings",
        VOICECALL_DATA_DIR=str(data_dir),
        VOICECALL_CONFIG="",
        VOICECALL_GATEWAY_URL="off",
    )
    return {**environ, **extra}


def run_python(args: list[str], data_dir, **extra: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=environment(data_dir, **extra), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


# `python manage.py <args>`, writing the loaded modules' names to the file named first. (Not
# `-X importtime`: it does not list the modules importlib.import_module loads, as Django does.)
MANAGE = (
    "import atexit, runpy, sys\n"
    "out = sys.argv.pop(1)\n"
    "atexit.register(lambda: open(out, 'w').write('\\n'.join(sorted(sys.modules))))\n"
    "sys.argv[0] = 'manage.py'\n"
    "runpy.run_path('manage.py', run_name='__main__')\n"
)


def imported(*args: str, data_dir, **extra: str) -> set[str]:
    """The modules a `python manage.py <args>` process has loaded when it exits."""
    out = data_dir / f"modules-{uuid.uuid4().hex}.txt"
    run_python(["-c", MANAGE, str(out), *args], data_dir, **extra)
    return set(out.read_text().split())


def loaded(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in packages))


@pytest.fixture(scope="module")
def migrated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("startup-imports")
    run_python(["manage.py", "migrate", "--verbosity", "0"], folder)
    return folder


@pytest.fixture
def data_dir(migrated, tmp_path):
    """A migrated SQLite database of the test's own, with no calls."""
    return shutil.copytree(migrated, tmp_path / "data")


def test_status_with_no_calls_loads_no_server_celery_simulator_or_config(data_dir):
    modules = imported("voicecall", "status", data_dir=data_dir)
    assert "calls.selectors" in modules  # the walk saw the command run
    assert loaded(modules, SERVER + CELERY + SIMULATOR + CONFIG + CALL_WORK + MEDIA) == []


def test_status_of_stored_calls_reads_them_without_the_config(data_dir):
    """The full record (transcript, events, metadata) is a read of the database only."""
    script = (
        "import django; django.setup()\n"
        "from calls.models import Call, TranscriptEntry\n"
        "call = Call.objects.create(provider='mock', direction='outbound', from_number='+15550000000',"
        " to_number='+15550001111', provider_call_id='mock-imports')\n"
        "TranscriptEntry.objects.create(call=call, speaker='bot', text='Hello')\n"
        "print(call.pk)\n"
    )
    made = run_python(["-c", script], data_dir)
    call_id = str(uuid.UUID(made.stdout.split()[-1]))

    for args in (("voicecall", "status"), ("voicecall", "status", "--call-id", call_id)):
        modules = imported(*args, data_dir=data_dir)
        assert loaded(modules, SERVER + CELERY + SIMULATOR + CONFIG + CALL_WORK + MEDIA) == [], args


def test_help_of_a_command_loads_nothing_it_would_run(data_dir):
    modules = imported("voicecall", "call", "--help", data_dir=data_dir)
    assert loaded(modules, SERVER + CELERY + SIMULATOR + CONFIG + CALL_WORK + MEDIA) == []


def test_placing_a_call_loads_the_config_and_services_but_no_server_celery_or_simulator(data_dir):
    config = data_dir / "voicecall.json"
    config.write_text(json.dumps({"provider": "mock", "toNumber": "+15550002222"}))
    modules = imported("voicecall", "call", "--message", "Hello", data_dir=data_dir, VOICECALL_CONFIG=str(config))
    assert {"calls.services", "core.config.schema", "providers.carriers.mock"} <= modules  # placed standalone
    assert loaded(modules, SERVER + CELERY + SIMULATOR + MEDIA) == []


def test_the_celery_worker_finds_the_project_app_and_tasks_go_to_its_broker(data_dir):
    """`celery -A voicecall_project` finds the app although the package no longer imports it, and a
    process that sends a task (the gateway in distributed mode) sends it through that app, from any
    thread, whichever thread loaded it."""
    script = (
        "import django; django.setup()\n"
        "import sys\n"
        "assert 'celery' not in sys.modules\n"
        "import threading\n"
        "loading = threading.Thread(target=lambda: __import__('calls.tasks'))  # as a webhook thread would\n"
        "loading.start(); loading.join()\n"
        "from calls.tasks import run_job_task\n"
        "from celery.app.utils import find_app\n"
        "app = find_app('voicecall_project')\n"
        "from django.conf import settings\n"
        "print(app.main, run_job_task.app is app, app.conf.broker_url == settings.CELERY_BROKER_URL)\n"
    )
    result = run_python(["-c", script], data_dir)
    assert result.stdout.split() == ["voicecall", "True", "True"]


def test_runserver_is_daphnes_and_loaded_only_when_it_runs():
    """`runserver` serves ASGI (webhooks and media-stream WebSockets), from a module only it imports."""
    from django.core.management import get_commands, load_command_class

    app = get_commands()["runserver"]
    assert app == "voicecall_project"
    command = load_command_class(app, "runserver")
    from daphne.management.commands.runserver import Command as DaphneRunserver

    assert isinstance(command, DaphneRunserver)


def test_importing_the_config_schema_builds_no_validator_until_a_config_is_read():
    script = (
        "from core.config import schema\n"
        "before = [m.__name__ for m in (schema.VoiceCallConfig, schema.NumberRoute) if m.__pydantic_complete__]\n"
        "config = schema.VoiceCallConfig.model_validate({'numbers': {'+15550001111': {'inboundGreeting': 'Hi'}}})\n"
        "print(before, schema.VoiceCallConfig.__pydantic_complete__, config.numbers['+15550001111'].inbound_greeting)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["[]", "True", "Hi"]
