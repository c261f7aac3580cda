"""`manage.py gateway` refuses to start on a config, flag or address it cannot serve as told, and on a data directory another gateway holds."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from calls.free_ports import free_port
from tests.paths import ROOT
from tests.waiting import wait_until

TEST_ONLY_ENV = ("DATABASE_URL", "REDIS_URL", "VOICECALL_BACKGROUND", "VOICECALL_EMBEDDED_SCHEDULER",
                 "VOICECALL_AUTOSTART_SERVICES", "VOICECALL_CONFIG", "VOICECALL_GATEWAY_URL", "VOICECALL_DATA_DIR",
                 "LOG_LEVEL", "VOICECALL_LOG_LEVEL", "LOG_FORMAT")


def gateway_env(data_dir: Path, config: dict | str | None = None, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in TEST_ONLY_ENV}
    env.update(DJANGO_SETTINGS_MODULE="voicecall_project.settings", VOICECALL_DATA_DIR=str(data_dir),
               PYTHONUNBUFFERED="1", **extra)
    if config is not None:
        path = data_dir / "voicecall.json5"
        path.write_text(config if isinstance(config, str) else json.dumps(config))
        env["VOICECALL_CONFIG"] = str(path)
    return env


def migrated(data_dir: Path) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    env = gateway_env(data_dir)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True, timeout=120)
    return data_dir


def refused(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """Run `manage.py gateway` expecting it to stop on its own."""
    return subprocess.run([sys.executable, "manage.py", "gateway", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


class Running:
    """A `manage.py gateway` process serving on `port`, its output in `log`."""

    def __init__(self, env: dict[str, str], port: int, log: Path, *args: str) -> None:
        self.port, self.log = port, log
        with open(log, "w") as out:
            self.process = subprocess.Popen([sys.executable, "manage.py", "gateway", "--port", str(port), *args],
                                            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        wait_until(self.healthy, f"the gateway on port {port} to answer /healthz", timeout=60, interval=0.1)

    def healthy(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError("the gateway exited:\n" + self.log.read_text())
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> str:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(20)
        return self.log.read_text()


def nothing_listens(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize(("value", "message"), [
    ('"abc"', 'serve.port: must be an integer, got "abc"'),
    ("70000", "serve.port: must be between 1 and 65535, got 70000"),
    ("0", "serve.port: must be between 1 and 65535, got 0"),
])
def test_an_invalid_serve_port_stops_the_gateway_naming_the_key_and_the_file(tmp_path, value, message):
    env = gateway_env(tmp_path, "{provider: 'mock', serve: {port: %s}}" % value)
    done = refused(env)
    assert done.returncode == 1, done.stderr
    assert message in done.stderr
    assert f"the config file {tmp_path / 'voicecall.json5'}" in done.stderr
    assert "Traceback" not in done.stderr and "Voice-call gateway on" not in done.stdout


def test_an_unreadable_config_file_stops_the_gateway(tmp_path):
    done = refused(gateway_env(tmp_path, "{provider: 'mock',"))
    assert done.returncode == 1
    assert f"VOICECALL_CONFIG: {tmp_path / 'voicecall.json5'} is not valid JSON or JSON5" in done.stderr
    env = gateway_env(tmp_path, VOICECALL_CONFIG=str(tmp_path / "absent.json5"))
    done = refused(env)
    assert done.returncode == 1 and f"no config file at {tmp_path / 'absent.json5'}" in done.stderr


def test_a_port_flag_overrides_an_invalid_serve_port(tmp_path):
    migrated(tmp_path)
    env = gateway_env(tmp_path, {"provider": "mock", "serve": {"port": "abc"}})
    gateway = Running(env, free_port(), tmp_path / "gateway.log")
    try:
        readyz = httpx.get(f"http://127.0.0.1:{gateway.port}/readyz", timeout=5)
        assert readyz.status_code == 503 and readyz.json()["errors"] == ["serve.port: must be an integer"]
    finally:
        gateway.stop()


@pytest.mark.parametrize("flag", [["--port", "abc"], ["--port", "0"], ["--port", "65536"], ["--bind", " "],
                                  ["--bind", "127.0.0.1:8000"]])
def test_a_bad_flag_is_a_usage_error(tmp_path, flag):
    done = refused(gateway_env(tmp_path), *flag)
    assert done.returncode == 2
    assert f"argument {flag[0]}: expected a" in done.stderr
    if flag[1] == "127.0.0.1:8000":
        assert "give --bind 127.0.0.1 --port 8000" in done.stderr


@pytest.mark.parametrize("server", ["daphne", "uvicorn"])
def test_a_port_in_use_is_one_line_naming_the_key_and_the_holder(tmp_path, server):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        from_file = refused(gateway_env(tmp_path, {"serve": {"port": port}}), "--server", server)
        from_flag = refused(gateway_env(tmp_path), "--port", str(port), "--server", server)
    assert from_file.returncode == from_flag.returncode == 1
    assert len(from_file.stderr.strip().splitlines()) == 1, from_file.stderr
    # This test's process holds the port: the message names it.
    assert from_file.stderr.startswith(
        f"Cannot listen on http://127.0.0.1:{port} (serve.port in {tmp_path / 'voicecall.json5'}): "
        f"the port is already in use by pid {os.getpid()} ("), from_file.stderr
    assert from_flag.stderr.startswith(f"Cannot listen on http://127.0.0.1:{port} (--port): the port is already in use")
    assert from_flag.stderr.strip().endswith("Stop that process, or choose another port: set serve.port, or give --port.")


def test_an_address_of_another_machine_names_the_bind_key(tmp_path):
    port = free_port()
    done = refused(gateway_env(tmp_path), "--bind", "192.0.2.1", "--port", str(port))
    assert done.returncode == 1
    assert done.stderr.strip() == (f"Cannot listen on http://192.0.2.1:{port} (--bind): 192.0.2.1 is not an address of "
                                   "this machine. Listen on an address of this machine (127.0.0.1, or 0.0.0.0 for all "
                                   "of them): set serve.bind, or give --bind.")


def test_a_second_gateway_on_the_same_data_directory_refuses_naming_the_first(tmp_path):
    data = migrated(tmp_path / "var")
    config = {"provider": "twilio", "serve": {"port": free_port()}}
    first = Running(gateway_env(data, config), config["serve"]["port"], tmp_path / "first.log")
    try:
        # Missing carrier credentials are setup left to do, not a refusal: the gateway serves its admin
        # and /readyz names them.
        readyz = httpx.get(f"http://127.0.0.1:{first.port}/readyz", timeout=5)
        assert readyz.status_code == 503 and "twilio.accountSid: required (or set TWILIO_ACCOUNT_SID)" in readyz.text
        second_port = free_port()
        done = refused(gateway_env(data), "--port", str(second_port))
        assert done.returncode == 1
        assert re.fullmatch(
            rf"Another gateway \(pid {first.process.pid} on [^,]+, http://127\.0\.0\.1:{first.port}, "
            rf"config {re.escape(str(data / 'voicecall.json5'))}, started \d{{4}}-\d\d-\d\d \d\d:\d\d UTC\) already uses "
            rf"the data directory {re.escape(str(data))} and its database\. Stop it, or give this one its own data "
            r"directory: VOICECALL_DATA_DIR=/path/to/other python manage.py gateway \(with its own --port\)\.",
            done.stderr.strip()), done.stderr
        assert nothing_listens(second_port)
        # Another data directory is another gateway's own.
        other = Running(gateway_env(migrated(tmp_path / "other")), second_port, tmp_path / "other.log")
        other.stop()
    finally:
        first.stop()
    # Once the first has stopped, the data directory is free.
    Running(gateway_env(data), free_port(), tmp_path / "second.log").stop()


def test_a_lock_file_left_by_a_killed_gateway_does_not_block(tmp_path):
    data = migrated(tmp_path)
    killed = Running(gateway_env(data), free_port(), tmp_path / "killed.log")
    killed.stop(signal.SIGKILL)
    assert json.loads((data / "gateway.lock").read_text())["pid"] == killed.process.pid
    after = Running(gateway_env(data), free_port(), tmp_path / "after.log")
    try:
        assert json.loads((data / "gateway.lock").read_text())["pid"] == after.process.pid
    finally:
        after.stop()


def test_a_lock_file_that_cannot_be_opened_is_one_line_naming_it(tmp_path):
    data = migrated(tmp_path)
    (data / "gateway.lock").mkdir()  # as unwritable as a read-only directory, for any user (root included)
    done = refused(gateway_env(data), "--port", str(free_port()))
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"Cannot open the lock file {data / 'gateway.lock'} in the data directory: Is a directory. The gateway needs to "
        "write in its data directory: fix its permissions, or set VOICECALL_DATA_DIR to a directory this user can write.")


def test_the_process_holding_the_port_is_named_without_its_arguments():
    from calls.port_holder import listener_of

    code = "import socket, sys; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); print(s.getsockname()[1], flush=True); sys.stdin.read()"
    holder = subprocess.Popen([sys.executable, "-c", code, "--password=hunter2-not-a-real-one"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = int(holder.stdout.readline())
        named = listener_of(port)
        assert named.startswith(f"pid {holder.pid} ({sys.executable} -c import socket")
        assert "hunter2" not in named and len(named) < 120
    finally:
        holder.stdin.close()
        holder.wait(10)
