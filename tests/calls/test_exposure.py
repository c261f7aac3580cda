"""Public exposure: the gateway's ngrok tunnel (an SDK stand-in, no network here) and Tailscale serve/funnel
(a fake `tailscale` executable first on PATH); the URL carriers are given, setup, /readyz, the owner lock."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import threading

import pytest

from calls import exposure as exposure_module
from calls.cli.setup import setup_checks
from calls.exposure import Exposure, ExposureState, exposure_status, read_state, write_state
from calls.gateway import get_gateway
from core.urls import media_stream_url, public_webhook_url, webhook_url
from providers.tunnels.base import TunnelError
from tests.fakes.tailscale import DNS_NAME, FakeTailscale
from tests.waiting import wait_until

AUTHTOKEN = "2fAkEnGrOkToKeN0123456789abcdefGHIJ_0123456789abcdef"
TUNNEL = "https://7f3a-fake-tunnel.ngrok-free.app"
TWILIO = {"provider": "twilio", "fromNumber": "+15550009999",
          "twilio": {"accountSid": "AC" + "5" * 32, "authToken": "f" * 32}}


class StandInNgrok:
    """The ngrok interface (start/stop) without the network: answers a made-up URL, or raises as told."""

    def __init__(self, url: str = TUNNEL, errors: list[str] | None = None) -> None:
        self.url = url
        self.errors = list(errors or [])
        self.started: list[dict] = []
        self.stopped = 0

    def __call__(self) -> StandInNgrok:  # used as the factory
        return self

    def start(self, port, authtoken, domain=None, *, host="127.0.0.1"):
        self.started.append({"port": port, "authtoken": authtoken, "domain": domain, "host": host})
        if self.errors:
            raise TunnelError(self.errors.pop(0))
        return f"https://{domain}" if domain else self.url

    def stop(self):
        self.stopped += 1


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path):
    settings.DATA_DIR = tmp_path / "data"
    return settings.DATA_DIR


@pytest.fixture
def exposure(monkeypatch):
    """The gateway's Exposure (the one core.urls asks), stopped and forgotten after the test."""
    gateway_exposure = get_gateway().exposure
    # A failed start is retried only where a test says so (a retry must not race a test's assertions).
    monkeypatch.setattr(exposure_module, "RETRY_S", 60)
    monkeypatch.setattr(exposure_module, "OWNER_RETRY_S", 0.05)
    yield gateway_exposure
    gateway_exposure.stop()
    gateway_exposure.state = None
    gateway_exposure.ngrok_factory = exposure_module.SdkNgrok


@pytest.fixture
def ngrok(exposure):
    stand_in = StandInNgrok()
    exposure.ngrok_factory = stand_in
    return stand_in


@pytest.fixture
def tailscale(tmp_path, monkeypatch):
    fake = FakeTailscale(tmp_path / "tailscale")
    monkeypatch.setenv("PATH", fake.path_with_it())
    return fake


def up(exposure: Exposure):
    return exposure.wait(lambda state: state is not None and state.state in ("up", "failed"), 10) and exposure.state


def ngrok_config(**tunnel) -> dict:
    return {**TWILIO, "tunnel": {"provider": "ngrok", "ngrokAuthToken": AUTHTOKEN, **tunnel}}


# --- ngrok ---------------------------------------------------------------------------------------


def test_ngrok_tunnel_is_the_url_given_to_carriers_while_it_is_up(configure, exposure, ngrok):
    config = configure(ngrok_config(), env={}).config
    assert webhook_url(config) == "http://127.0.0.1:3334/voice/webhook"
    assert exposure.start(config) is True
    state = up(exposure)
    assert (state.state, state.public_url) == ("up", TUNNEL)
    assert ngrok.started == [{"port": 3334, "authtoken": AUTHTOKEN, "domain": None, "host": "127.0.0.1"}]
    assert webhook_url(config) == f"{TUNNEL}/voice/webhook"
    assert public_webhook_url(config) == f"{TUNNEL}/voice/webhook"  # the URL the signature check expects
    # Written for the other processes of the host, with this process as the owner.
    written = read_state()
    assert (written.provider, written.state, written.public_url, written.pid) == ("ngrok", "up", TUNNEL, os.getpid())

    exposure.stop()
    assert ngrok.stopped == 1
    assert read_state().state == "stopped"
    assert webhook_url(config) == "http://127.0.0.1:3334/voice/webhook"


def test_ngrok_domain_and_stream_urls(configure, exposure, ngrok):
    config = configure({**ngrok_config(ngrokDomain="voice-gw.example.ngrok.app"),
                        "streaming": {"enabled": True}}).config
    exposure.start(config)
    assert up(exposure).public_url == "https://voice-gw.example.ngrok.app"
    assert ngrok.started[0]["domain"] == "voice-gw.example.ngrok.app"
    assert media_stream_url(config) == "wss://voice-gw.example.ngrok.app/voice/stream"


def test_public_url_wins_and_no_tunnel_is_started(configure, exposure, ngrok):
    config = configure({**ngrok_config(), "publicUrl": "https://voice.example.com"}).config
    assert exposure.start(config) is False
    assert ngrok.started == []
    assert webhook_url(config) == "https://voice.example.com/voice/webhook"
    assert exposure_status(config, exposure)["configured"] == "publicUrl"


def test_no_authtoken_is_named_and_nothing_is_started(configure, exposure, ngrok):
    config = configure({**TWILIO, "tunnel": {"provider": "ngrok"}}, env={}).config
    exposure.start(config)
    state = up(exposure)
    assert state.state == "failed"
    assert state.error == "no ngrok authtoken: set tunnel.ngrokAuthToken or the environment variable NGROK_AUTHTOKEN"
    assert ngrok.started == []
    assert webhook_url(config) == "http://127.0.0.1:3334/voice/webhook"


def test_the_authtoken_may_come_from_the_environment(configure, exposure, ngrok):
    config = configure({**TWILIO, "tunnel": {"provider": "ngrok"}}, env={"NGROK_AUTHTOKEN": AUTHTOKEN}).config
    exposure.start(config)
    assert up(exposure).state == "up"
    assert ngrok.started[0]["authtoken"] == AUTHTOKEN


def test_a_failed_start_is_reported_then_retried(configure, exposure, ngrok, monkeypatch):
    monkeypatch.setattr(exposure_module, "RETRY_S", 0.2)
    ngrok.errors = ["ngrok did not open the tunnel: failed to connect session: dial tcp: lookup connect.ngrok-agent.com: no such host"]
    retry = threading.Event()
    first_start = ngrok.start

    def start(*args, **kwargs):
        if ngrok.started:  # the retry waits until the test has looked at the failure
            retry.wait(10)
        return first_start(*args, **kwargs)

    monkeypatch.setattr(ngrok, "start", start)
    config = configure(ngrok_config()).config
    exposure.start(config)
    state = up(exposure)
    assert state.state == "failed" and "no such host" in state.error
    assert webhook_url(config) == "http://127.0.0.1:3334/voice/webhook"  # never a dead tunnel's URL
    retry.set()
    assert exposure.wait(lambda s: s is not None and s.state == "up", 10)
    assert len(ngrok.started) == 2
    assert webhook_url(config) == f"{TUNNEL}/voice/webhook"


def test_sdk_errors_become_a_named_problem(monkeypatch):
    """The real driver: what ngrok.forward raises is reported in one line, the authtoken never in it."""
    import ngrok

    from providers.tunnels.ngrok import SdkNgrok

    seen = {}

    def forward(addr, **options):
        seen.update(addr=addr, **options)
        raise ValueError("failed to start tunnel: The authtoken you specified is not valid.\n\nERR_NGROK_105\n")

    monkeypatch.setattr(ngrok, "forward", forward)
    with pytest.raises(TunnelError) as exc:
        SdkNgrok().start(3334, AUTHTOKEN, "gw.ngrok.app")
    assert str(exc.value) == "ngrok did not open the tunnel: failed to start tunnel: The authtoken you specified is not valid."
    assert seen == {"addr": "127.0.0.1:3334", "authtoken": AUTHTOKEN, "domain": "gw.ngrok.app"}


def test_sdk_listener_url_and_disconnect(monkeypatch):
    import ngrok

    from providers.tunnels.ngrok import SdkNgrok

    class Listener:
        def url(self):
            return TUNNEL

    closed = []
    monkeypatch.setattr(ngrok, "forward", lambda addr, **options: Listener())
    monkeypatch.setattr(ngrok, "disconnect", lambda url=None: closed.append(url))
    driver = SdkNgrok()
    assert driver.start(4000, AUTHTOKEN, host="::1") == TUNNEL
    driver.stop()
    driver.stop()  # a second stop does nothing
    assert closed == [TUNNEL]


# --- what other processes see --------------------------------------------------------------------


def test_another_process_reads_the_owners_url_and_drops_it_when_the_owner_is_gone(configure):
    config = configure(ngrok_config()).config
    reader = Exposure()  # not the owner: reads the state file
    assert reader.public_url(config) is None
    write_state(ExposureState("ngrok", "up", public_url=TUNNEL, pid=os.getpid()))
    assert reader.public_url(config) == TUNNEL
    dead = subprocess.Popen(["true"])
    dead.wait()
    write_state(ExposureState("ngrok", "up", public_url=TUNNEL, pid=dead.pid))
    assert reader.public_url(config) is None
    status = exposure_status(config)
    assert status["state"] == "down" and f"pid {dead.pid}" in status["error"]
    # Another host's owner cannot be checked from here and is trusted.
    write_state(ExposureState("ngrok", "up", public_url=TUNNEL, pid=dead.pid, host="other-" + socket.gethostname()))
    assert reader.public_url(config) == TUNNEL


def test_a_tunnel_of_another_provider_is_not_used(configure):
    config = configure({**TWILIO, "tailscale": {"mode": "funnel"}}).config
    write_state(ExposureState("ngrok", "up", public_url=TUNNEL, pid=os.getpid()))
    assert Exposure().public_url(config) is None


def test_one_owner_per_host_and_the_other_takes_over_when_it_stops(configure, exposure, monkeypatch):
    monkeypatch.setattr(exposure_module, "OWNER_RETRY_S", 0.05)
    config = configure(ngrok_config()).config
    first, second = StandInNgrok(url="https://first.ngrok-free.app"), StandInNgrok(url="https://second.ngrok-free.app")
    owner, other = Exposure(), Exposure()
    owner.ngrok_factory, other.ngrok_factory = first, second
    try:
        owner.start(config)
        assert up(owner).state == "up"
        other.start(config)
        wait_until(lambda: other._thread is not None and other._thread.is_alive())
        assert not other.owner and second.started == []
        assert other.public_url(config) == "https://first.ngrok-free.app"
        owner.stop()
        assert up(other).public_url == "https://second.ngrok-free.app"
        assert other.owner and read_state().public_url == "https://second.ngrok-free.app"
    finally:
        owner.stop()
        other.stop()


# --- Tailscale -----------------------------------------------------------------------------------


def test_tailscale_funnel_is_added_at_start_and_removed_at_stop(configure, exposure, tailscale):
    config = configure({**TWILIO, "tailscale": {"mode": "funnel"}}).config
    exposure.start(config)
    state = up(exposure)
    assert (state.state, state.public_url) == ("up", f"https://{DNS_NAME}/voice/webhook")
    assert tailscale.calls()[0] == ["status", "--json"]
    assert tailscale.changes() == [
        ["funnel", "--bg", "--yes", "--https=443", "--set-path=/voice/webhook", "http://127.0.0.1:3334/voice/webhook"],
    ]
    assert tailscale.handlers() == {"/voice/webhook": "http://127.0.0.1:3334/voice/webhook"}
    assert tailscale.serve_config()["AllowFunnel"] == {f"{DNS_NAME}:443": True}
    assert webhook_url(config) == f"https://{DNS_NAME}/voice/webhook"

    exposure.stop()
    assert tailscale.changes()[-1] == ["funnel", "--https=443", "--set-path=/voice/webhook", "off"]
    assert tailscale.handlers() == {}
    assert webhook_url(config) == "http://127.0.0.1:3334/voice/webhook"


def test_tailscale_serve_on_another_port_with_a_path_and_streams(configure, exposure, tailscale):
    config = configure({**TWILIO, "tunnel": {"provider": "tailscale-serve"}, "serve": {"port": 4010, "path": "/hooks"},
                        "tailscale": {"port": 8443, "path": "/voice/webhook"}, "streaming": {"enabled": True}}).config
    exposure.start(config)
    assert up(exposure).public_url == f"https://{DNS_NAME}:8443/voice/webhook"
    assert tailscale.handlers(8443) == {"/voice/webhook": "http://127.0.0.1:4010/hooks",
                                        "/voice/stream": "http://127.0.0.1:4010/voice/stream"}
    assert webhook_url(config) == f"https://{DNS_NAME}:8443/voice/webhook"
    assert media_stream_url(config) == f"wss://{DNS_NAME}:8443/voice/stream"
    exposure.stop()
    assert tailscale.handlers(8443) == {}


def test_a_half_added_exposure_is_taken_back(configure, exposure, tailscale):
    tailscale.fail("--set-path=/voice/stream http://127.0.0.1:3334/voice/stream", "error: failed apply web serve")
    config = configure({**TWILIO, "tailscale": {"mode": "funnel"}, "streaming": {"enabled": True}}).config
    exposure.start(config)
    state = up(exposure)
    assert state.state == "failed" and "failed apply web serve" in state.error
    assert tailscale.handlers() == {}  # the webhook's handler was removed again
    assert tailscale.changes()[-1] == ["funnel", "--https=443", "--set-path=/voice/webhook", "off"]
    assert webhook_url(config) == "http://127.0.0.1:3334/voice/webhook"


def test_no_tailscale_binary_is_named(configure, exposure, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    config = configure({**TWILIO, "tailscale": {"mode": "serve"}}).config
    exposure.start(config)
    state = up(exposure)
    assert state.state == "failed"
    assert state.error == "no tailscale binary on PATH: install Tailscale (1.52 or later) and run `tailscale up`"


def test_tailscale_errors_and_a_logged_out_device_are_named(configure, exposure, tailscale):
    tailscale.fail("funnel --bg", "error: Funnel not available; \"funnel\" node attribute not set")
    config = configure({**TWILIO, "tailscale": {"mode": "funnel"}}).config
    exposure.start(config)
    state = up(exposure)
    assert state.state == "failed"
    assert "failed with exit code 1: error: Funnel not available" in state.error
    exposure.stop()

    tailscale.log_out()
    exposure.start(config)
    assert "is it logged in (`tailscale up`)?" in up(exposure).error


def test_a_hung_tailscale_times_out(configure, exposure, tailscale, monkeypatch):
    monkeypatch.setattr("providers.tunnels.tailscale.STATUS_TIMEOUT_S", 0.5)
    tailscale.hang()
    config = configure({**TWILIO, "tailscale": {"mode": "serve"}}).config
    exposure.start(config)
    state = up(exposure)
    assert state.state == "failed"
    assert state.error == "`tailscale status --json` did not finish within 0.5 s (is tailscaled running?)"


# --- setup, /readyz ------------------------------------------------------------------------------


def exposure_check(loaded):
    return {check.id: check for check in setup_checks(loaded)}["webhook-exposure"]


def test_setup_is_ok_only_while_the_tunnel_is_up(configure, exposure, ngrok):
    loaded = configure(ngrok_config())
    check = exposure_check(loaded)
    assert not check.ok
    assert check.message.startswith("Webhooks not exposed: ngrok is down: not running: the ngrok tunnel lives inside "
                                    "the gateway process")
    assert check.fixes == ("Start the gateway (python manage.py gateway): the ngrok tunnel runs inside it.",)
    exposure.start(loaded.config)
    up(exposure)
    check = exposure_check(loaded)
    assert check.ok and check.message == f"Webhooks exposed through ngrok at {TUNNEL}/voice/webhook"


def test_setup_names_a_missing_authtoken_and_a_failed_tunnel(configure, exposure, ngrok):
    loaded = configure({**TWILIO, "tunnel": {"provider": "ngrok"}}, env={})
    check = exposure_check(loaded)
    assert not check.ok and "no ngrok authtoken" in check.message
    assert "tunnel.ngrokAuthToken" in check.fixes[0] and "NGROK_AUTHTOKEN" in check.fixes[0]

    ngrok.errors = ["ngrok did not open the tunnel: ERR_NGROK_105 authentication failed"]
    loaded = configure(ngrok_config())
    exposure.start(loaded.config)
    assert up(exposure).state == "failed"
    check = exposure_check(loaded)
    assert not check.ok
    assert check.message == "Webhooks not exposed: ngrok is failed: ngrok did not open the tunnel: ERR_NGROK_105 authentication failed"


def test_setup_asks_tailscale_whether_the_handler_is_still_there(configure, exposure, tailscale):
    loaded = configure({**TWILIO, "tailscale": {"mode": "serve"}})
    exposure.start(loaded.config)
    up(exposure)
    check = exposure_check(loaded)
    assert check.ok and check.message == (f"Webhooks exposed through tailscale-serve at https://{DNS_NAME}/voice/webhook; "
                                          "tailnet only: a carrier on the internet needs funnel")
    subprocess.run(["tailscale", "serve", "--https=443", "--set-path=/voice/webhook", "off"], check=True,
                   env={**os.environ})
    check = exposure_check(loaded)
    assert not check.ok
    assert "tailscale no longer serves /voice/webhook on port 443" in check.message


def test_setup_without_a_tailscale_binary(configure, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    check = exposure_check(configure({**TWILIO, "tailscale": {"mode": "funnel"}}))
    assert not check.ok and "no tailscale binary on PATH" in check.message
    assert check.fixes[0].startswith("Install Tailscale 1.52 or later")


@pytest.mark.django_db
def test_readyz_reports_the_exposure(client, configure, exposure, ngrok):
    loaded = configure({**TWILIO, "tunnel": {"provider": "ngrok"}}, env={})
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["exposure"]["configured"] == "ngrok" and body["exposure"]["state"] == "down"
    assert any(problem.startswith("exposure: ngrok is down: no ngrok authtoken") for problem in body["errors"])

    loaded = configure(ngrok_config())
    exposure.start(loaded.config)
    up(exposure)
    response = client.get("/readyz")
    assert response.status_code == 200, response.json()
    assert response.json()["exposure"] == {"configured": "ngrok", "state": "up", "publicUrl": TUNNEL,
                                           "webhookUrl": f"{TUNNEL}/voice/webhook"}


@pytest.mark.django_db
def test_readyz_without_any_tunnel_says_nothing_of_it(client, configure):
    configure({"provider": "mock"})
    assert "exposure" not in client.get("/readyz").json()
    configure({"provider": "mock", "publicUrl": "https://voice.example.com"})
    assert client.get("/readyz").json()["exposure"] == {
        "configured": "publicUrl", "state": "up", "publicUrl": "https://voice.example.com",
        "webhookUrl": "https://voice.example.com/voice/webhook"}


def test_the_state_file_is_json_a_person_can_read(configure, exposure, ngrok, data_dir):
    exposure.start(configure(ngrok_config()).config)
    up(exposure)
    data = json.loads((data_dir / "exposure.json").read_text())
    assert data["provider"] == "ngrok" and data["state"] == "up" and data["public_url"] == TUNNEL
    assert AUTHTOKEN not in (data_dir / "exposure.json").read_text()


@pytest.mark.django_db(transaction=True)
def test_a_dial_is_refused_while_the_configured_tunnel_is_down(configure, exposure, ngrok, carrier_rest):
    from calls.models import Call
    from calls.services import call_initiate
    from core.errors import SetupIncomplete

    configure({**ngrok_config(), "enabled": True})
    with pytest.raises(SetupIncomplete) as exc:
        call_initiate(to="+15550001111", message="Hello", mode="notify")
    assert str(exc.value) == ("Voice call setup incomplete: webhooks are not exposed (ngrok is down: not running: the "
                              "ngrok tunnel lives inside the gateway process; start the gateway (manage.py gateway) "
                              "and it opens the tunnel)")
    assert not Call.objects.exists() and carrier_rest == []


@pytest.fixture
def carrier_rest(monkeypatch):
    """No carrier REST request leaves the process: each is recorded."""
    import httpx

    from providers.carriers.http import CarrierHttp

    sent = []

    def fake_request(self, method, path, **kwargs):
        sent.append((method, path))
        return httpx.Response(500, json={}, request=httpx.Request(method, self.base_url + path))

    monkeypatch.setattr(CarrierHttp, "request", fake_request)
    return sent


@pytest.mark.django_db
def test_the_console_setup_page_says_the_same(client, django_user_model, configure, exposure, ngrok):
    from html import unescape

    client.force_login(django_user_model.objects.create_superuser("operator", "operator@example.com", "pw-expose-5521"))
    loaded = configure(ngrok_config())
    page = unescape(client.get("/admin/console/setup/").content.decode())
    assert "Webhooks not exposed: ngrok is down: not running" in page
    assert "Start the gateway (python manage.py gateway): the ngrok tunnel runs inside it." in page
    assert 'id="exposure">ngrok: down' in page

    exposure.start(loaded.config)
    up(exposure)
    page = unescape(client.get("/admin/console/setup/").content.decode())
    assert f"Webhooks exposed through ngrok at {TUNNEL}/voice/webhook" in page
    assert f'id="exposure">ngrok: up at {TUNNEL}; carriers are given {TUNNEL}/voice/webhook' in page


def test_an_error_echoing_the_authtoken_is_published_redacted(configure, exposure, ngrok, data_dir):
    ngrok.errors = [f"ngrok did not open the tunnel: authtoken {AUTHTOKEN} is not valid"]
    exposure.start(configure(ngrok_config()).config)
    state = up(exposure)
    assert state.state == "failed" and AUTHTOKEN not in state.error and "[redacted]" in state.error
    assert AUTHTOKEN not in (data_dir / "exposure.json").read_text()
