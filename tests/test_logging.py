"""Logging settings: nothing that carries secrets is logged, whatever level the project's loggers run at."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

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
