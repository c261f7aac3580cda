"""Logging settings: nothing that carries secrets is logged, whatever level the project's loggers run at."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_the_websocket_client_never_logs_request_headers():
    # Its DEBUG lines carry every request header, the providers' API keys among them.
    assert logging.getLogger("websockets.client").getEffectiveLevel() >= logging.INFO
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.DEBUG)
    try:
        assert not logging.getLogger("websockets.client").isEnabledFor(logging.DEBUG)
    finally:
        root.setLevel(level)


def test_a_line_is_written_once_after_a_server_sets_up_logging_too():
    # Daphne calls logging.basicConfig when it starts: the project's lines must not then appear twice.
    script = (
        "import django, logging; django.setup(); logging.basicConfig(level=logging.INFO); "
        "logging.getLogger('calls.example').warning('written once')"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "voicecall_project.settings"}
    env.pop("VOICECALL_CONFIG", None)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("written once") == 1, done.stderr


SECRET = "configured-secret-value-42"

# A job about a call logs a line carrying credentials and fails with a traceback that carries more;
# a line about no call comes before. Run with the real settings in a fresh process.
JOB_SCRIPT = f"""
import django, logging, os
django.setup()
from calls import background
from core.redact import remember_secret
remember_secret({SECRET!r})
log = logging.getLogger("calls.example")

@background.job("example.job")
def job(*, call_id):
    log.warning("upstream answered 401: Bearer sk-abcdefghijklmnopqrstuv %s", os.environ["THE_SECRET"])
    raise RuntimeError("refused Basic QUMxMjM0NTY3ODk6dG9rZW4= key=" + os.environ["THE_SECRET"])

log.warning("no call here")
background.run_job("example.job", {{"call_id": "call-7"}})
"""


def run_logging(script: str, **extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "voicecall_project.settings", "THE_SECRET": SECRET, **extra}
    env.pop("VOICECALL_CONFIG", None)
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def assert_no_secret(text: str) -> None:
    for secret in (SECRET, "sk-abcdefghijklmnopqrstuv", "QUMxMjM0NTY3ODk6dG9rZW4="):
        assert secret not in text


def test_json_lines_name_the_call_and_carry_no_secret():
    done = run_logging(JOB_SCRIPT, LOG_FORMAT="json")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.strip()]
    assert [line["message"] for line in lines][:1] == ["no call here"]
    assert "call_id" not in lines[0]
    about_call = [line for line in lines if line.get("call_id") == "call-7"]
    assert len(about_call) == 2, lines
    warning, failure = about_call
    assert warning["level"] == "WARNING" and warning["logger"] == "calls.example"
    assert "Bearer [redacted]" in warning["message"]
    assert failure["logger"] == "calls.background" and failure["level"] == "ERROR"
    assert "RuntimeError" in failure["exception"] and "Traceback" in failure["exception"]
    assert set(warning) >= {"time", "level", "logger", "message", "call_id"}
    assert warning["time"].endswith("+00:00")
    assert_no_secret(done.stderr)


def test_text_lines_name_the_call_and_carry_no_secret():
    done = run_logging(JOB_SCRIPT)
    assert done.returncode == 0, done.stderr
    assert "calls.example: no call here" in done.stderr
    assert "WARNING calls.example [call call-7]: upstream answered 401: Bearer [redacted]" in done.stderr
    assert "ERROR calls.background [call call-7]: background job example.job failed" in done.stderr
    assert "RuntimeError: refused Basic [redacted] key=[redacted]" in done.stderr
    assert_no_secret(done.stderr)


@pytest.mark.parametrize("value", ["xml", "JSONL", "1"])
def test_an_unknown_log_format_stops_the_process_naming_it(value):
    done = run_logging("import django; django.setup()", LOG_FORMAT=value)
    assert done.returncode != 0
    assert "LOG_FORMAT must be text or json" in done.stderr and repr(value.lower()) in done.stderr


def test_log_format_is_read_case_insensitively():
    done = run_logging("import django, logging; django.setup(); logging.getLogger('calls.x').warning('hi')",
                       LOG_FORMAT=" JSON ")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stderr.strip())["message"] == "hi"


def test_a_celery_worker_keeps_the_console_handler_and_its_redaction():
    # A worker sets up logging when it starts; by default Celery would swap in a handler of its own.
    script = (
        "import django, logging; django.setup()\n"
        "from voicecall_project.celery import app\n"
        "app.log.setup_logging_subsystem(loglevel='INFO')\n"
        "logging.getLogger('calls.example').warning('job failed: Bearer abcdefghijklmnop12')\n"
    )
    done = run_logging(script, LOG_FORMAT="json")
    assert done.returncode == 0, done.stderr
    (line,) = [json.loads(text) for text in done.stderr.splitlines() if text.strip()]
    assert line["message"] == "job failed: Bearer [redacted]"
