"""A real `manage.py gateway` logs each event once, in the project's format, without the servers' start-up noise."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from calls.free_ports import free_port
from tests.calls.test_gateway_start import Running, gateway_env, migrated
from tests.paths import ROOT

TEXT_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+( \[call [\w-]+\])?: .+")
BANNER = "Voice-call gateway on http://127.0.0.1:"
SERVER_NOISE = ("HTTP/2 support", "Configuring endpoint", "Listening on TCP address", "Started server process",
                "Uvicorn running", "Waiting for application startup", "Application startup complete")


def run_and_call(tmp_path, server: str, *args: str, **env: str) -> tuple[list[str], str]:
    """Start the gateway, place a call through it (an INFO line per step), stop it; its output lines and the call id."""
    data = migrated(tmp_path)
    port = free_port()
    gateway = Running(gateway_env(data, **env), port, tmp_path / "gateway.log", "--server", server, *args)
    try:
        placed = subprocess.run(
            [sys.executable, "manage.py", "voicecall", "call", "--to", "+15550001111", "--message", "Hello", "-q"],
            cwd=ROOT, env=gateway_env(data, VOICECALL_GATEWAY_URL=f"http://127.0.0.1:{port}"),
            capture_output=True, text=True, timeout=60)
        assert placed.returncode == 0, placed.stderr
    finally:
        output = gateway.stop()
    return [line for line in output.splitlines() if line.strip()], placed.stdout.strip()


def assert_once(messages: list[str], fragment: str) -> None:
    assert sum(fragment in message for message in messages) == 1, (fragment, messages)


@pytest.mark.parametrize("server", ["daphne", "uvicorn"])
def test_text_lines_are_written_once_without_the_servers_start_up_lines(tmp_path, server):
    lines, call_id = run_and_call(tmp_path, server)
    assert sum(line.startswith(BANNER) for line in lines) == 1, lines
    logged = [line for line in lines if not line.startswith(BANNER)]
    assert all(TEXT_LINE.fullmatch(line) for line in logged), logged
    messages = [line.split(": ", 1)[1] for line in logged]
    assert_once(messages, "voice call runtime ready: carrier mock")
    assert_once(messages, f"outbound call {call_id} to +15550001111 queued")
    assert_once(messages, "sweeper started")
    assert not [line for line in lines if any(noise in line for noise in SERVER_NOISE)], lines
    assert not [line for line in logged if " DEBUG " in line], logged


@pytest.mark.parametrize("server", ["daphne", "uvicorn"])
def test_json_lines_and_verbose(tmp_path, server):
    lines, call_id = run_and_call(tmp_path, server, "--verbose", LOG_FORMAT="json")
    records = [json.loads(line) for line in lines if not line.startswith(BANNER)]
    messages = [record["message"] for record in records]
    assert_once(messages, "voice call runtime ready: carrier mock")
    assert_once(messages, f"outbound call {call_id} to +15550001111 queued")
    assert not [message for message in messages if any(noise in message for noise in SERVER_NOISE)], messages
    # --verbose: the project's DEBUG lines, never the WebSocket client's (they carry request headers).
    debug = [record for record in records if record["level"] == "DEBUG"]
    assert any(record["message"].startswith(f"data directory {tmp_path}, database sqlite3 ") for record in debug), records
    assert all(record["logger"].split(".")[0] in ("calls", "routing", "providers") for record in debug), debug


def test_a_bad_log_level_stops_naming_it_and_the_accepted_values(tmp_path):
    for name in ("LOG_LEVEL", "VOICECALL_LOG_LEVEL"):
        done = subprocess.run([sys.executable, "manage.py", "gateway"], cwd=ROOT, env=gateway_env(tmp_path, **{name: "loud"}),
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 1
        assert done.stderr.strip() == (f"ImproperlyConfigured: {name} must be one of DEBUG, INFO, WARNING, ERROR, "
                                       "CRITICAL, got 'loud'")
