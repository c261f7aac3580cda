"""`manage.py voicecall expose`: show the exposure, add or remove the Tailscale handler (a fake `tailscale` on PATH),
say where the ngrok tunnel lives; exit codes 0 (ok), 1 (failed), 2 (usage), as a shell sees them."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
from django.core.management import call_command

from calls import exposure as exposure_module
from calls.gateway import get_gateway
from core.urls import webhook_url
from tests.fakes.tailscale import DNS_NAME, FakeTailscale
from tests.paths import ROOT as MAIN

TWILIO = {"enabled": True, "provider": "twilio", "fromNumber": "+15550009999",
          "twilio": {"accountSid": "AC" + "7" * 32, "authToken": "e" * 32}}
TUNNEL = "https://9c1d-fake-tunnel.ngrok-free.app"
FUNNEL_URL = f"https://{DNS_NAME}/voice/webhook"


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path):
    settings.DATA_DIR = tmp_path / "data"
    return settings.DATA_DIR


@pytest.fixture
def tailscale(tmp_path, monkeypatch):
    fake = FakeTailscale(tmp_path / "tailscale")
    monkeypatch.setenv("PATH", fake.path_with_it())
    return fake


def run(*args: str) -> tuple[int, str, str]:
    """`voicecall expose <args>` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("voicecall", "expose", *args, stdout=out, stderr=err)
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, out.getvalue(), err.getvalue()


def test_nothing_configured_shows_off(configure):
    configure(TWILIO)
    code, out, _ = run("--json")
    assert code == 0
    assert json.loads(out) == {"configured": "none", "state": "off", "ok": True,
                               "webhookUrl": "http://127.0.0.1:3334/voice/webhook"}
    code, out, _ = run()
    assert code == 0
    assert out.splitlines() == ["Exposure: none (off)", "Carriers are given: http://127.0.0.1:3334/voice/webhook"]


def test_funnel_then_off_through_the_tailscale_cli(configure, tailscale):
    config = configure(TWILIO).config
    code, out, err = run("--mode", "funnel", "--json")
    assert (code, err) == (0, "")
    status = json.loads(out)
    assert status["state"] == "up" and status["provider"] == "tailscale-funnel" and status["startedBy"] == "cli"
    assert status["publicUrl"] == FUNNEL_URL and status["webhookUrl"] == FUNNEL_URL
    assert tailscale.changes() == [
        ["funnel", "--bg", "--yes", "--https=443", "--set-path=/voice/webhook", "http://127.0.0.1:3334/voice/webhook"]]
    # The handler outlives this command: every process of the host gives carriers its URL.
    assert webhook_url(config) == FUNNEL_URL
    code, out, _ = run()
    assert code == 0
    assert out.splitlines() == ["Exposure: none (up)", "Running: tailscale-funnel (added by voicecall expose)",
                                f"Public URL: {FUNNEL_URL}", f"Carriers are given: {FUNNEL_URL}"]

    code, out, _ = run("--mode", "off", "--json")
    assert code == 0
    assert tailscale.changes()[-1] == ["funnel", "--https=443", "--set-path=/voice/webhook", "off"]
    assert tailscale.handlers() == {}
    assert json.loads(out)["state"] == "off"
    assert webhook_url(config) == "http://127.0.0.1:3334/voice/webhook"


def test_show_asks_tailscale_and_fails_when_the_configured_handler_is_gone(configure, tailscale):
    configure({**TWILIO, "tailscale": {"mode": "serve", "port": 8443}})
    assert run("--mode", "serve")[0] == 0
    assert tailscale.handlers(8443) == {"/voice/webhook": "http://127.0.0.1:3334/voice/webhook"}
    code, out, _ = run()
    assert code == 0 and f"Public URL: https://{DNS_NAME}:8443/voice/webhook" in out
    subprocess.run(["tailscale", "serve", "--https=8443", "--set-path=/voice/webhook", "off"], check=True)
    code, out, _ = run()
    assert code == 1
    assert "Exposure: tailscale-serve (down)" in out
    assert "Problem: tailscale no longer serves /voice/webhook on port 8443" in out


def test_a_funnel_port_tailscale_refuses_is_named(configure, tailscale):
    configure({**TWILIO, "tailscale": {"port": 8080}})
    code, out, err = run("--mode", "funnel")
    assert (code, out) == (1, "")
    assert err.strip() == ("tailscale funnel failed: tailscale funnel serves only on ports 443, 8443, 10000, not 8080")
    assert tailscale.changes() == []


def test_no_tailscale_binary(configure, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    configure(TWILIO)
    code, _, err = run("--mode", "serve")
    assert code == 1
    assert err.strip() == ("tailscale serve failed: no tailscale binary on PATH: install Tailscale (1.52 or later) "
                           "and run `tailscale up`")


def test_the_config_asking_for_another_tunnel_or_a_public_url_is_refused(configure, tailscale):
    configure({**TWILIO, "tunnel": {"provider": "ngrok"}})
    code, _, err = run("--mode", "funnel")
    assert code == 1 and err.startswith("the config asks for ngrok: set tailscale.mode funnel")
    configure({**TWILIO, "publicUrl": "https://voice.example.com"})
    code, _, err = run("--mode", "serve")
    assert code == 1 and err.startswith("publicUrl is set (https://voice.example.com)")
    assert tailscale.changes() == []


def test_ngrok_lives_with_the_gateway(configure, monkeypatch):
    configure({**TWILIO, "tunnel": {"provider": "ngrok"}}, env={})
    code, _, err = run("--mode", "ngrok")
    assert code == 1
    assert err.startswith("the ngrok tunnel lives with the gateway process: set tunnel.provider ngrok")
    assert "Now: no ngrok authtoken" in err


def test_while_a_gateway_owns_the_exposure_the_cli_changes_nothing(configure, tailscale, monkeypatch):
    class StandIn:
        def start(self, port, authtoken, domain=None, *, host="127.0.0.1"):
            return TUNNEL

        def stop(self):
            pass

    config = configure({**TWILIO, "tunnel": {"provider": "ngrok", "ngrokAuthToken": "2fAkE0123456789abcdef0123"}}).config
    exposure = get_gateway().exposure
    monkeypatch.setattr(exposure, "ngrok_factory", StandIn)
    try:
        exposure.start(config)
        assert exposure.wait(lambda state: state is not None and state.state == "up", 10)
        code, out, _ = run("--mode", "ngrok", "--json")
        assert code == 0 and json.loads(out)["publicUrl"] == TUNNEL
        code, _, err = run("--mode", "off")
        assert code == 1
        assert err.startswith(f"a running gateway on this host owns the exposure (ngrok, up, pid {os.getpid()})")
    finally:
        exposure.stop()
        exposure.state = None
    assert tailscale.changes() == []


def test_exit_codes_as_the_shell_sees_them(tmp_path, tailscale):
    """A real process: 0 after adding the handler, 2 for a mode that does not exist, 1 for a failure."""
    config = tmp_path / "voicecall.json"
    config.write_text(json.dumps({**TWILIO, "tailscale": {"mode": "funnel"}}))
    # The project's own settings: the test settings would clear VOICECALL_CONFIG.
    env = {**os.environ, "VOICECALL_DATA_DIR": str(tmp_path / "data"), "DJANGO_SETTINGS_MODULE": "voicecall_project.settings",
           "VOICECALL_CONFIG": str(config), "PATH": tailscale.path_with_it()}

    def cli(*args):
        return subprocess.run([sys.executable, "manage.py", "voicecall", *args], cwd=MAIN, env=env,
                              capture_output=True, text=True, timeout=60)

    down = cli("expose")
    assert down.returncode == 1 and "Exposure: tailscale-funnel (down)" in down.stdout
    started = cli("expose", "--mode", "funnel")
    assert started.returncode == 0, started.stderr
    assert f"Public URL: {FUNNEL_URL}" in started.stdout
    setup = cli("setup", "--json")
    check = {c["id"]: c for c in json.loads(setup.stdout)["checks"]}["webhook-exposure"]
    assert check == {"id": "webhook-exposure", "ok": True,
                     "message": f"Webhooks exposed through tailscale-funnel (added by voicecall expose) at {FUNNEL_URL}"}
    usage = cli("expose", "--mode", "cloudflare")
    assert usage.returncode == 2 and "invalid choice: 'cloudflare'" in usage.stderr
    tailscale.fail("funnel off", "error: failed to remove the handler")
    failed = cli("expose", "--mode", "off")
    assert failed.returncode == 1 and "failed to remove the handler" in failed.stderr


def test_the_gateway_retries_tailscale_while_the_cli_state_stays_readable(configure, tailscale, monkeypatch):
    """A handler added by the CLI is taken over by a gateway configured for it (same handler, same URL)."""
    monkeypatch.setattr(exposure_module, "RETRY_S", 0.2)
    config = configure({**TWILIO, "tailscale": {"mode": "funnel"}}).config
    assert run("--mode", "funnel")[0] == 0
    exposure = get_gateway().exposure
    try:
        exposure.start(config)
        assert exposure.wait(lambda state: state is not None and state.state == "up", 10)
        assert exposure.state.started_by == "gateway" and webhook_url(config) == FUNNEL_URL
    finally:
        exposure.stop()
        exposure.state = None
    assert tailscale.handlers() == {}  # the gateway removes what it serves when it stops
