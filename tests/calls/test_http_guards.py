"""The HTTP limits through a real server's socket, under Daphne (the live gateway, in this process) and uvicorn
(a `manage.py gateway --server uvicorn` process): refusals before a body is read, stalled and idle
connections closed, the per-address connection cap, descriptors given back."""
from __future__ import annotations

import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import pytest

from calls import daphne_guards
from tests.calls.test_gateway_servers import free_port, serve
from tests.raw_http import (answered_yet, connect, head, open_fds, peer_closed, raise_fd_limit, read_answer,
                            server_side_sockets, timed)
from tests.waiting import wait_until

TWILIO = {"enabled": True, "provider": "twilio", "fromNumber": "+15550000001",
          "publicUrl": "https://gateway.example.com/voice/webhook", "inboundPolicy": "open",
          "twilio": {"accountSid": "AC" + "1" * 32, "authToken": "guards-token"}}
SIGNED = {"X-Twilio-Signature": "not-checked-before-the-body", "Content-Type": "application/x-www-form-urlencoded"}
# Short deadlines, so a test waits a fraction of the documented ones. A webhook body's is long enough
# for a third request to arrive while two stall, on a busy machine.
WEBHOOK_BODY_TIMEOUT = 3.0
FAST = {"VOICECALL_WEBHOOK_BODY_TIMEOUT": str(WEBHOOK_BODY_TIMEOUT), "VOICECALL_HTTP_BODY_TIMEOUT": str(WEBHOOK_BODY_TIMEOUT),
        "VOICECALL_HTTP_HEAD_TIMEOUT": "0.5"}
CAP = 100  # connections per address in the test of the cap (the uvicorn process has it throughout)
# The address of the 1,000 connections: one loopback address of their own, so the local ports they take
# are never the port another test's server is about to listen on at 127.0.0.1, and no connection
# another test left counts against their cap.
CROWD = "127.0.0.2"
SLACK = 20  # descriptors other work of the process may hold meanwhile (database files, a worker thread's socket)
IN_FLIGHT = 2
# A plain answer that is not Django's (whose first request in a process takes its time on the live
# gateway's loop, which that fixture reports).
HOLD_MUSIC = "/voice/hold-music"


@dataclass
class Served:
    server: str
    port: int
    pid: int | str  # "self" for the live gateway


@pytest.fixture(scope="module")
def uvicorn_gateway(tmp_path_factory):
    port = free_port()
    config = {**TWILIO, "serve": {"port": port, "maxConnectionsPerIp": CAP, "maxInFlightPerIp": IN_FLIGHT}}
    process = serve("uvicorn", tmp_path_factory.mktemp("uvicorn"), config, env=FAST)
    yield Served("uvicorn", port, process.pid)
    process.terminate()
    process.wait(15)


@pytest.fixture(params=["daphne", "uvicorn"])
def gateway(request, settings, configure) -> Served:
    if request.param == "uvicorn":
        return request.getfixturevalue("uvicorn_gateway")
    live = request.getfixturevalue("live_gateway")
    # The cap itself only in its own test: connections other tests left idle count until they time out.
    configure({**TWILIO, "serve": {"maxInFlightPerIp": IN_FLIGHT}})
    for name, value in FAST.items():
        setattr(settings, name, float(value))
    return Served("daphne", urlsplit(live).port, "self")


@pytest.fixture
def port(gateway) -> int:
    return gateway.port


def test_unsigned_webhook_with_a_stalled_body_is_401_at_once(port):
    with connect(port) as sock:
        sock.sendall(head("POST", "/voice/webhook", {"Content-Length": "1000"}) + b"CallSid=CA1")
        (status, body, closed), seconds = timed(lambda: read_answer(sock))
    assert (status, body, closed) == (401, b"Unauthorized", True)
    assert seconds < 2  # not after the body's 5 s, nor Twisted's 60 s idle timeout


def test_signed_webhook_with_a_stalled_body_is_408_after_the_body_timeout(port):
    with connect(port) as sock:
        sock.sendall(head("POST", "/voice/webhook", {**SIGNED, "Content-Length": "1000"}) + b"CallSid=CA1")
        (status, body, closed), seconds = timed(lambda: read_answer(sock))
    assert (status, body, closed) == (408, b"Request Timeout", True)
    assert WEBHOOK_BODY_TIMEOUT - 0.1 <= seconds < WEBHOOK_BODY_TIMEOUT + 3


def test_the_documented_limits_are_the_defaults():
    from django.conf import settings

    from calls.config import get_config
    from calls.http_limits import body_limits, head_timeout, webhook_body_limits

    assert (webhook_body_limits().max_bytes, webhook_body_limits().timeout) == (64 * 1024, 5.0)
    assert (body_limits("/voice/rpc").max_bytes, body_limits("/admin/").timeout) == (2 * 1024 * 1024, 30.0)
    assert head_timeout() == settings.VOICECALL_HTTP_HEAD_TIMEOUT == 10.0
    assert get_config().config.serve.max_connections_per_ip == 512


def test_a_declared_100_mb_body_is_413_before_any_of_it_is_sent(port):
    with connect(port) as sock:
        sock.sendall(head("POST", "/voice/webhook", {**SIGNED, "Content-Length": str(100 * 1024 * 1024)}))
        (status, body, closed), seconds = timed(lambda: read_answer(sock))
    assert (status, body, closed) == (413, b"Payload Too Large", True)
    assert seconds < 2


def test_a_declared_body_over_the_cap_of_other_paths_is_413_at_once(port):
    with connect(port) as sock:
        sock.sendall(head("POST", "/voice/rpc", {"Content-Length": str(3 * 1024 * 1024)}))
        assert read_answer(sock)[0::2] == (413, True)


@pytest.mark.parametrize("path, cap", [("/voice/webhook", 64 * 1024), ("/voice/rpc", 2 * 1024 * 1024)])
def test_a_chunked_body_is_413_as_soon_as_it_passes_the_cap(port, path, cap):
    chunk = 16 * 1024
    with connect(port) as sock:
        sock.sendall(head("POST", path, {**SIGNED, "Transfer-Encoding": "chunked"}))
        sent = 0
        while sent <= cap:
            assert not answered_yet(sock), f"answered after {sent} bytes, before the cap"
            sock.sendall(b"%x\r\n%s\r\n" % (chunk, b"x" * chunk))
            sent += chunk
        status, body, closed = read_answer(sock)
    assert (status, body, closed) == (413, b"Payload Too Large", True)


def test_a_stalled_request_head_is_408(port):
    with connect(port) as sock:
        sock.sendall(b"POST /voice/webhook HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        (status, _, closed), seconds = timed(lambda: read_answer(sock))
    assert (status, closed) == (408, True) and seconds < 3


def test_an_idle_connection_is_closed_after_the_head_timeout(port):
    with connect(port) as sock:
        (closed, seconds) = timed(lambda: peer_closed(sock))
    assert closed and 0.4 <= seconds < 3


def test_requests_on_a_kept_alive_connection_are_served_then_it_closes_when_idle(port):
    with connect(port) as sock:
        for _ in range(3):
            sock.sendall(head("GET", HOLD_MUSIC, {}))
            status, body, _ = read_answer(sock)
            assert status == 200 and b"<Response>" in body
        assert peer_closed(sock)


def test_a_webhook_within_the_limits_is_still_served(port):
    response = httpx.post(f"http://127.0.0.1:{port}/voice/webhook", content=b"CallSid=CA1", headers=SIGNED)
    assert response.status_code == 401 and response.text == "Unauthorized"  # read whole, then the signature check


def in_flight_seen(gateway: Served, count: int) -> None:
    """Wait until the gateway counts `count` webhooks in flight from 127.0.0.1."""
    if gateway.server == "daphne":
        wait_until(lambda: daphne_guards.webhooks_in_flight.counts.get("127.0.0.1") == count, f"{count} webhooks in flight")
    else:
        # uvicorn counts a webhook in flight as its task starts, at the end of its head, before any
        # request taken through Django later: one answered /healthz is past that point.
        assert httpx.get(f"http://127.0.0.1:{gateway.port}/healthz").status_code == 200


def test_stalled_webhook_bodies_count_against_the_in_flight_cap(gateway):
    stalled = [connect(gateway.port) for _ in range(IN_FLIGHT)]
    try:
        for sock in stalled:
            sock.sendall(head("POST", "/voice/webhook", {**SIGNED, "Content-Length": "1000"}) + b"Call")
        in_flight_seen(gateway, IN_FLIGHT)
        with connect(gateway.port) as third:
            third.sendall(head("POST", "/voice/webhook", {**SIGNED, "Content-Length": "1000"}))
            (status, _, closed), seconds = timed(lambda: read_answer(third))
            assert (status, closed) == (429, True) and seconds < WEBHOOK_BODY_TIMEOUT  # not after a body timeout
        for sock in stalled:
            assert read_answer(sock)[0] == 408
    finally:
        for sock in stalled:
            sock.close()
    if gateway.server == "daphne":
        wait_until(lambda: "127.0.0.1" not in daphne_guards.webhooks_in_flight.counts, "the in-flight count to drain")


def test_a_thousand_idle_connections_are_capped_and_closed_and_the_fds_come_back(gateway, configure):
    raise_fd_limit(2 * 1000 + 200)  # the clients' sockets, and the server's when it runs in this process
    port, pid = gateway.port, gateway.pid
    if gateway.server == "daphne":
        configure({**TWILIO, "serve": {"maxConnectionsPerIp": CAP}})
    # Connections earlier tests left idle close within the (default 10 s) head timeout they were given.
    wait_until(lambda: server_side_sockets(port, pid) == 0, "the gateway to hold no connection", timeout=20)
    server_baseline, own_baseline = open_fds(pid), open_fds()
    clients: list[socket.socket] = []
    try:
        for _ in range(1000):
            clients.append(connect(port, source=CROWD))
        # Past the cap each is closed as soon as it is accepted (the last one's close may still be under way).
        wait_until(lambda: server_side_sockets(port, pid) <= CAP, "the gateway to hold at most the cap", timeout=2)
        refused = sum(peer_closed(sock, timeout=0.001) for sock in clients)
        assert refused >= 1000 - CAP - 5
        # The rest are closed after the head timeout: every server-side descriptor is given back.
        wait_until(lambda: server_side_sockets(port, pid) == 0, "the idle connections to be closed", timeout=5)
        if gateway.server == "uvicorn":
            wait_until(lambda: open_fds(pid) <= server_baseline + SLACK, "the gateway's descriptors to come back")
        else:
            assert open_fds() <= own_baseline + len(clients) + SLACK  # only the clients' own sockets remain
    finally:
        for sock in clients:
            sock.close()
    wait_until(lambda: open_fds() <= own_baseline + SLACK, "this process's descriptors to come back")
    with connect(port, source=CROWD) as sock:  # and the address is served again
        sock.sendall(head("GET", HOLD_MUSIC, {"Connection": "close"}))
        assert read_answer(sock)[0] == 200


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_a_deadline_that_is_not_a_positive_number_stops_the_process(value):
    import os
    import subprocess
    import sys

    from tests.paths import ROOT

    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "voicecall_project.settings", "VOICECALL_HTTP_HEAD_TIMEOUT": value}
    result = subprocess.run([sys.executable, "-c", "import django; django.setup()"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "VOICECALL_HTTP_HEAD_TIMEOUT" in result.stderr or "could not convert string to float" in result.stderr


def test_a_webhook_head_is_checked_without_building_the_runtime(configure):
    """The first request after a config change is checked on the server's loop: only the config and
    the carrier's class are needed there; the runtime (its HTTP client, a TLS context) is built off it."""
    from calls.gateway import get_gateway
    from calls.runtime import webhook_gate

    configure(TWILIO)
    config, carrier = webhook_gate()
    assert (config.provider, carrier.name) == ("twilio", "twilio")
    assert not carrier.has_signature_headers({}) and carrier.has_signature_headers({"x-twilio-signature": "x"})
    assert get_gateway().current_runtime() is None
    configure({**TWILIO, "enabled": False})
    assert webhook_gate() is None  # the application answers 503 with the reason
