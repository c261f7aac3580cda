"""Calls through a tunnel, end to end: the fake Twilio is given the tunnel's URL, signs what it calls there, and
the tunnel (its `reroute`) delivers to the real gateway on its loopback port, as ngrok or Tailscale would."""
from __future__ import annotations

import os
from urllib.parse import urlsplit

import pytest

from calls import exposure as exposure_module
from calls.gateway import get_gateway
from calls.models import Call
from calls.services import call_initiate
from core.urls import webhook_url
from tests.fakes import FakeTwilio
from tests.fakes.tailscale import DNS_NAME, FakeTailscale
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

FROM = "+15550000001"
CALLER = "+15557654321"
TUNNEL = "https://3e5b-fake-tunnel.ngrok-free.app"


class StandInNgrok:
    def start(self, port, authtoken, domain=None, *, host="127.0.0.1"):
        return TUNNEL

    def stop(self):
        pass


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path):
    settings.DATA_DIR = tmp_path / "data"


@pytest.fixture
def exposure(monkeypatch):
    gateway_exposure = get_gateway().exposure
    monkeypatch.setattr(exposure_module, "RETRY_S", 0.2)
    monkeypatch.setattr(gateway_exposure, "ngrok_factory", StandInNgrok)
    yield gateway_exposure
    gateway_exposure.stop()
    gateway_exposure.state = None


def twilio_config(fake: FakeTwilio, **extra) -> dict:
    return {
        "enabled": True, "provider": "twilio", "fromNumber": FROM, "inboundPolicy": "open",
        "inboundGreeting": "Thanks for calling the clinic.", "maxConcurrentCalls": 5,
        "outbound": {"notifyHangupDelaySec": 1},
        "twilio": {"accountSid": fake.account_sid, "authToken": fake.auth_token, "baseUrl": fake.base_url},
        **extra,
    }


def start(exposure, config) -> str:
    exposure.start(config)
    assert exposure.wait(lambda state: state is not None and state.state in ("up", "failed"), 10)
    assert exposure.state.state == "up", exposure.state.error
    return exposure.state.public_url


def test_an_outbound_and_an_inbound_call_through_the_ngrok_tunnel(live_gateway, configure, exposure):
    with FakeTwilio() as fake:
        fake.reroute[TUNNEL] = live_gateway  # what the tunnel does
        config = configure(twilio_config(fake, tunnel={"provider": "ngrok", "ngrokAuthToken": "2fAkE0123456789abcdef01"})).config
        start(exposure, config)

        call = call_initiate(to="+15550001111", message="Your table is ready.", mode="notify")
        create = fake.requests_to("POST", r"/Calls\.json$")[0]
        assert create.form["StatusCallback"][0].startswith(f"{TUNNEL}/voice/webhook?")
        sid = Call.objects.get(pk=call.pk).provider_call_id
        fake.answer(sid)
        fake.wait_idle()
        assert [said["text"] for said in fake.call(sid).said] == ["Your table is ready."]
        call.refresh_from_db()
        assert (call.state, call.end_reason) == ("completed", "completed")
        # Every status callback was signed for the tunnel's URL and accepted.
        assert fake.deliveries and all(d.status == 200 and d.url.startswith(TUNNEL) for d in fake.deliveries)

        inbound = fake.ring_inbound(CALLER, FROM, f"{TUNNEL}/voice/webhook")
        wait_until(lambda: Call.objects.filter(provider_call_id=inbound.sid).exists())
        assert [said["text"] for said in inbound.said] == ["Thanks for calling the clinic."]

        # A request signed for the local URL is not what the carrier called while the tunnel is up: refused.
        local = fake.ring_inbound(CALLER, FROM, f"{live_gateway}/voice/webhook")
        assert fake.deliveries[-1].url.startswith(live_gateway) and fake.deliveries[-1].status == 401
        assert not Call.objects.filter(provider_call_id=local.sid).exists()
        assert not fake.errors


def test_an_inbound_call_through_tailscale_funnel_and_the_handler_removed_at_stop(
        live_gateway, configure, exposure, tmp_path, monkeypatch):
    tailscale = FakeTailscale(tmp_path / "tailscale")
    monkeypatch.setenv("PATH", tailscale.path_with_it())
    port = urlsplit(live_gateway).port
    with FakeTwilio() as fake:
        config = configure(twilio_config(fake, serve={"port": port}, tailscale={"mode": "funnel"})).config
        public = start(exposure, config)
        assert public == f"https://{DNS_NAME}/voice/webhook" == webhook_url(config)
        # The handler tailscale serves: the public path to the gateway's own listener.
        assert tailscale.handlers() == {"/voice/webhook": f"http://127.0.0.1:{port}/voice/webhook"}
        fake.reroute[f"https://{DNS_NAME}/voice/webhook"] = tailscale.handlers()["/voice/webhook"]

        inbound = fake.ring_inbound(CALLER, FROM, public)
        wait_until(lambda: Call.objects.filter(provider_call_id=inbound.sid).exists())
        assert [said["text"] for said in inbound.said] == ["Thanks for calling the clinic."]
        assert all(d.status == 200 for d in fake.deliveries)
        assert not fake.errors
    exposure.stop()
    assert tailscale.handlers() == {}


@pytest.mark.parametrize("server", ["daphne", "uvicorn"])
def test_the_gateway_process_adds_the_handler_at_start_and_removes_it_at_exit(server, tmp_path):
    """A real `manage.py gateway`: the funnel is up once it serves, /readyz and the CLI say so, the CLI cannot
    take it from the gateway, and a clean stop (SIGTERM) removes the handler."""
    import json
    import signal
    import subprocess
    import sys

    import httpx

    from tests.calls.test_gateway_servers import free_port, serve
    from tests.paths import ROOT

    tailscale = FakeTailscale(tmp_path / "tailscale")
    port = free_port()
    config = {"provider": "twilio", "fromNumber": "+15550100000", "serve": {"port": port},
              "twilio": {"accountSid": "AC" + "6" * 32, "authToken": "d" * 32}, "tailscale": {"mode": "funnel"}}
    env = {"PATH": tailscale.path_with_it()}
    process = serve(server, tmp_path, config, env=env)
    try:
        def exposure():
            body = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).json()
            return body if body.get("exposure", {}).get("state") == "up" else None

        body = wait_until(exposure, "the gateway's funnel to be up", timeout=20)
        assert body["ready"] is True
        assert body["exposure"]["publicUrl"] == f"https://{DNS_NAME}/voice/webhook"
        assert tailscale.handlers() == {"/voice/webhook": f"http://127.0.0.1:{port}/voice/webhook"}

        cli_env = {**os.environ, "DJANGO_SETTINGS_MODULE": "voicecall_project.settings",
                   "VOICECALL_DATA_DIR": str(tmp_path), "VOICECALL_CONFIG": str(tmp_path / "voicecall.json"), **env}
        for name in ("DATABASE_URL", "REDIS_URL"):
            cli_env.pop(name, None)

        def cli(*args):
            return subprocess.run([sys.executable, "manage.py", "voicecall", *args], cwd=ROOT, env=cli_env,
                                  capture_output=True, text=True, timeout=60)

        shown = cli("expose", "--json")
        assert shown.returncode == 0, shown.stderr
        status = json.loads(shown.stdout)
        assert (status["state"], status["startedBy"], status["pid"]) == ("up", "gateway", process.pid)
        taken = cli("expose", "--mode", "off")
        assert taken.returncode == 1
        assert taken.stderr.startswith(f"a running gateway on this host owns the exposure (tailscale-funnel, up, pid {process.pid})")
        assert tailscale.handlers() != {}
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    assert tailscale.handlers() == {}
    assert tailscale.changes()[-1] == ["funnel", "--https=443", "--set-path=/voice/webhook", "off"]
    assert json.loads((tmp_path / "exposure.json").read_text())["state"] == "stopped"
