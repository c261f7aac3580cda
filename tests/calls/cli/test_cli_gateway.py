"""`manage.py voicecall` delegating to the running gateway's RPC (POST /voice/rpc).

The gateway is the real ASGI application served by Daphne on a loopback port in this process
(tests/live_gateway.py), so a monkeypatch of calls.rpc is seen by both sides. The CLI runs on
the test thread; the gateway serves requests on worker threads, which is how a test tells a
command that ran over HTTP from one that ran standalone.
"""
from __future__ import annotations

import http.server
import io
import json
import socket
import threading
import time
from contextlib import contextmanager

import pytest
from django.core.management import call_command

from calls import rpc, services
from calls.cli import gateway
from calls.free_ports import free_port
from calls.models import Call, CallTurn, TurnStatus
from calls.selectors import call_metadata
from calls.services import call_requests
from calls.services import event_process
from core.events import CallAnswered, CallEnded, CallSpeech
from tests.calls.cli.test_cli import CommandThread, _listening_turn
from tests.waiting import wait_until
from voicecall_project.rpc_tokens import parse_rpc_tokens

TO = "+15550001111"
TO_2 = "+15550002222"
BAD_TOKEN = "x" * 20
READ_TOKEN = "read-only-token-0123456789"


# --- helpers -----------------------------------------------------------------------------


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("voicecall", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def run_fail(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(SystemExit) as exc:
        call_command("voicecall", *args, stdout=out, stderr=err)
    assert exc.value.code == 1
    return out.getvalue(), err.getvalue()


def pretty(data) -> str:
    return json.dumps(data, indent=2) + "\n"


def actions(outbox) -> list[str]:
    return [request.action for request in outbox]


class Recorder:
    """RPC methods the gateway ran, and call requests run on the CLI's own (test) thread."""

    def __init__(self) -> None:
        self.methods: list[str] = []
        self.standalone: list[str] = []
        self.over_rpc: list[str] = []
        self.cli_thread = threading.get_ident()


@pytest.fixture
def recorder(monkeypatch) -> Recorder:
    record = Recorder()
    real_call_method = rpc.call_method

    def call_method(name, raw_params, token):
        record.methods.append(name)
        return real_call_method(name, raw_params, token)

    monkeypatch.setattr(rpc, "call_method", call_method)

    requests = {
        "call_initiate_request": "initiate", "call_speak_request": "speak", "call_send_dtmf_request": "send_dtmf",
        "call_end_request": "end", "call_continue_request": "continue_call",
    }
    for function, name in requests.items():
        real = getattr(call_requests, function)

        def wrapper(*args, __real=real, __name=name, **kwargs):
            if threading.get_ident() == record.cli_thread:
                record.standalone.append(__name)
            else:
                record.over_rpc.append(__name)
            return __real(*args, **kwargs)

        # Surfaces call the package's names; continue operations call the module's.
        monkeypatch.setattr(services, function, wrapper)
        monkeypatch.setattr(call_requests, function, wrapper)
    return record


@pytest.fixture
def via_gateway(live_gateway, settings):
    """The CLI pointed at the live gateway; base URL returned."""
    settings.VOICECALL_GATEWAY_URL = live_gateway
    return live_gateway


@pytest.fixture
def fast_poll(monkeypatch):
    monkeypatch.setattr(gateway, "POLL_INTERVAL_S", 0.05)


@pytest.fixture(autouse=True)
def _operations_finish():
    yield
    services.continue_operations_wait(timeout=10)


def start_call(to: str = TO) -> str:
    out, _ = run("start", "--to", to)
    return json.loads(out)["callId"]


@contextmanager
def html_server(status: int = 200, body: bytes = b"<html><body>Welcome</body></html>", content_type: str = "text/html"):
    """A loopback HTTP server that answers every request, but not in JSON-RPC."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# --- gateway_url / placement_timeout_s ----------------------------------------------------


@pytest.mark.parametrize("value", ["off", "OFF", " Off "])
def test_gateway_url_off_is_none(settings, value):
    settings.VOICECALL_GATEWAY_URL = value
    assert gateway.gateway_url() is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("http://gw.example:8080", "http://gw.example:8080/voice/rpc"),
        ("http://gw.example:8080/", "http://gw.example:8080/voice/rpc"),
        ("http://gw.example:8080/voice/rpc", "http://gw.example:8080/voice/rpc"),
        ("http://gw.example:8080/voice/rpc/", "http://gw.example:8080/voice/rpc"),
        ("  https://gw.example/base  ", "https://gw.example/base/voice/rpc"),
    ],
)
def test_gateway_url_explicit(settings, value, expected):
    settings.VOICECALL_GATEWAY_URL = value
    assert gateway.gateway_url() == expected


def test_gateway_url_default_is_serve_bind_and_port(settings, configure):
    settings.VOICECALL_GATEWAY_URL = ""
    assert gateway.gateway_url() == "http://127.0.0.1:3334/voice/rpc"
    configure({"serve": {"bind": "10.1.2.3", "port": 4555}})
    assert gateway.gateway_url() == "http://10.1.2.3:4555/voice/rpc"


@pytest.mark.parametrize(
    ("bind", "expected"),
    [("0.0.0.0", "http://127.0.0.1:4444/voice/rpc"), ("::", "http://127.0.0.1:4444/voice/rpc"),
     ("::1", "http://[::1]:4444/voice/rpc")],
)
def test_gateway_url_wildcard_bind_means_loopback(settings, configure, bind, expected):
    settings.VOICECALL_GATEWAY_URL = ""
    configure({"serve": {"bind": bind, "port": 4444}})
    assert gateway.gateway_url() == expected


@pytest.mark.parametrize(("ring_ms", "expected"), [(None, 35.0), (1000, 30.0), (25000, 30.0), (60000, 65.0)])
def test_placement_timeout(configure, ring_ms, expected):
    configure({} if ring_ms is None else {"ringTimeoutMs": ring_ms})
    assert gateway.placement_timeout_s() == expected


def test_rpc_call_with_delegation_off_is_quietly_unreachable(settings):
    settings.VOICECALL_GATEWAY_URL = "off"
    with pytest.raises(gateway.GatewayUnreachable) as exc:
        gateway.rpc_call("voicecall.status", {})
    assert exc.value.quiet is True


# --- through the gateway -------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_start_goes_through_the_gateway(via_gateway, recorder, outbox):
    out, err = run("start", "--to", TO, "--message", "Hello", "--mode", "notify")
    call = Call.objects.get()
    assert out == pretty({"callId": str(call.pk)})  # same shape as standalone (no "initiated")
    assert err == ""
    assert recorder.methods == ["voicecall.start"]
    assert recorder.over_rpc == ["initiate"] and recorder.standalone == []
    assert call.to_number == TO
    assert call_metadata(call) == {"mode": "notify", "initialMessage": "Hello"}
    assert actions(outbox) == ["initiate_call"]


@pytest.mark.django_db(transaction=True)
def test_call_goes_through_the_gateway_with_voicecall_initiate(via_gateway, recorder, outbox, configure):
    configure({"toNumber": TO_2})
    out, err = run("call", "-m", "Hi there")
    call = Call.objects.get()
    assert out == pretty({"callId": str(call.pk)})
    assert err == ""
    assert recorder.methods == ["voicecall.initiate"]
    assert recorder.standalone == []
    assert call.to_number == TO_2  # the CLI filled in toNumber before delegating
    assert call_metadata(call) == {"mode": "conversation", "initialMessage": "Hi there"}


@pytest.mark.django_db(transaction=True)
def test_unknown_mode_is_left_to_the_gateway_default(via_gateway, recorder):
    out, _ = run("start", "--to", TO, "--mode", "shout")
    assert Call.objects.get(pk=json.loads(out)["callId"]).mode == "notify"
    assert recorder.methods == ["voicecall.start"]


@pytest.mark.django_db(transaction=True)
def test_speak_dtmf_end_go_through_the_gateway(via_gateway, recorder, outbox):
    call_id = start_call()
    event_process(event=CallAnswered(call_id=call_id))
    outbox.clear()

    out, err = run("speak", "--call-id", call_id, "--message", "Your order shipped")
    assert (out, err) == (pretty({"success": True}), "")
    out, err = run("dtmf", "--call-id", call_id, "--digits", "12#")
    assert (out, err) == (pretty({"success": True}), "")
    out, err = run("end", "--call-id", call_id)
    assert (out, err) == (pretty({"success": True}), "")

    assert recorder.methods == ["voicecall.start", "voicecall.speak", "voicecall.dtmf", "voicecall.end"]
    assert recorder.over_rpc == ["initiate", "speak", "send_dtmf", "end"]
    assert recorder.standalone == []
    assert actions(outbox) == ["play_tts", "send_dtmf", "hangup_call"]
    assert outbox[0].params["text"] == "Your order shipped"
    call = Call.objects.get(pk=call_id)
    assert call.state == "hangup-bot"
    assert list(call.transcript_entries.values_list("speaker", "text")) == [("bot", "Your order shipped")]


@pytest.mark.django_db(transaction=True)
def test_transfer_goes_through_the_gateway(via_gateway, recorder, outbox):
    call_id = start_call()
    event_process(event=CallAnswered(call_id=call_id))
    outbox.clear()
    out, err = run("transfer", "--call-id", call_id, "--to", "sip:desk@pbx.example.com", "--warm", "--summary", "Billing")
    result = json.loads(out)
    assert err == "" and (result["mode"], result["to"], result["status"]) == ("warm", "sip:desk@pbx.example.com", "dialing")
    assert recorder.methods == ["voicecall.start", "voicecall.transfer"]
    assert actions(outbox) == ["warm_transfer"]
    assert Call.objects.get(pk=call_id).transfers.get().requested_by == "rpc"
    out, err = run_fail("transfer", "--call-id", call_id, "--to", "+15550002222")
    assert out == "" and "has already ended (transferred)" in err


@pytest.mark.django_db(transaction=True)
def test_default_url_from_serve_config_reaches_the_gateway(live_gateway, settings, configure, recorder):
    settings.VOICECALL_GATEWAY_URL = ""
    port = int(live_gateway.rsplit(":", 1)[1])
    configure({"serve": {"bind": "0.0.0.0", "port": port}})
    out, err = run("start", "--to", TO)
    assert set(json.loads(out)) == {"callId"}
    assert err == ""
    assert recorder.methods == ["voicecall.start"]
    assert recorder.standalone == []


@pytest.mark.django_db(transaction=True)
def test_smoke_yes_places_the_call_through_the_gateway(via_gateway, recorder, outbox):
    out, _ = run("smoke", "--to", TO, "--yes", "--json")
    data = json.loads(out)
    call = Call.objects.get()
    assert data["ok"] is True and data["liveCall"] is True
    assert data["callId"] == str(call.pk)
    assert recorder.methods == ["voicecall.start"]
    assert recorder.standalone == []
    assert call_metadata(call) == {"mode": "notify", "initialMessage": "Voice call smoke test."}
    assert actions(outbox) == ["initiate_call"]


@pytest.mark.django_db(transaction=True)
def test_smoke_without_yes_asks_the_gateway_nothing(via_gateway, recorder, outbox):
    out, _ = run("smoke", "--to", TO, "--json")
    assert json.loads(out)["wouldCall"] == TO
    assert recorder.methods == []
    assert Call.objects.count() == 0


# --- continue through the gateway ------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_continue_starts_an_operation_and_polls_its_result(via_gateway, recorder, fast_poll, outbox):
    call_id = start_call()
    event_process(event=CallAnswered(call_id=call_id))
    outbox.clear()
    worker = CommandThread("continue", "--call-id", call_id, "--message", "What is your order number?")
    worker.start()
    wait_until(lambda: _listening_turn(call_id))
    wait_until(lambda: recorder.methods.count("voicecall.continue.result") >= 2)
    assert worker.is_alive()
    event_process(event=CallSpeech(call_id=call_id, transcript="  It is 4 2 7  "))
    worker.join(timeout=10)
    assert not worker.is_alive()
    assert worker.error is None and worker.exit_code is None, worker.err.getvalue()
    assert worker.out.getvalue() == pretty({"success": True, "transcript": "It is 4 2 7"})
    assert worker.err.getvalue() == ""

    methods = recorder.methods
    assert methods[:2] == ["voicecall.start", "voicecall.continue.start"]
    assert set(methods[2:]) == {"voicecall.continue.result"}
    assert "voicecall.continue" not in methods
    assert recorder.over_rpc == ["initiate", "continue_call"]
    assert recorder.standalone == []
    assert actions(outbox) == ["play_tts", "start_listening", "stop_listening"]
    assert CallTurn.objects.get(call_id=call_id).status == TurnStatus.COMPLETED


@pytest.mark.django_db(transaction=True)
def test_continue_failure_when_the_call_ends_exits_1(via_gateway, recorder, fast_poll):
    call_id = start_call()
    worker = CommandThread("continue", "--call-id", call_id, "--message", "Still there?")
    worker.start()
    wait_until(lambda: _listening_turn(call_id))
    event_process(event=CallEnded(call_id=call_id, reason="hangup-user"))
    worker.join(timeout=10)
    assert not worker.is_alive()
    assert worker.exit_code == 1
    assert worker.err.getvalue().strip() == "Call ended: hangup-user"
    assert worker.out.getvalue() == ""
    assert "voicecall.continue.result" in recorder.methods
    assert recorder.standalone == []


@pytest.mark.django_db(transaction=True)
def test_continue_transcript_timeout_exits_1(via_gateway, recorder, fast_poll, configure, outbox):
    configure({"transcriptTimeoutMs": 300})
    call_id = start_call()
    outbox.clear()
    started = time.monotonic()
    out, err = run_fail("continue", "--call-id", call_id, "--message", "Hello?")
    assert time.monotonic() - started >= 0.3
    assert out == ""
    assert err.strip() == "Timed out waiting for transcript after 300ms"
    assert recorder.methods[:2] == ["voicecall.start", "voicecall.continue.start"]
    assert recorder.standalone == []
    assert CallTurn.objects.get(call_id=call_id).status == TurnStatus.TIMEOUT


@pytest.mark.django_db(transaction=True)
def test_continue_refused_at_start_is_reported_without_polling(via_gateway, recorder, outbox):
    out, err = run_fail("continue", "--call-id", "no-such-call", "--message", "Hi")
    assert (out, err.strip()) == ("", "Call not found: no-such-call")
    assert recorder.methods == ["voicecall.continue.start"]
    assert recorder.standalone == []
    assert outbox == []


@pytest.mark.django_db(transaction=True)
def test_continue_falls_back_to_blocking_continue_on_an_older_gateway(via_gateway, recorder, monkeypatch, outbox):
    monkeypatch.delitem(rpc.METHODS, "voicecall.continue.start")
    call_id = start_call()
    event_process(event=CallAnswered(call_id=call_id))
    worker = CommandThread("continue", "--call-id", call_id, "--message", "Order number?")
    worker.start()
    wait_until(lambda: _listening_turn(call_id))
    assert worker.is_alive()
    event_process(event=CallSpeech(call_id=call_id, transcript="Seven"))
    worker.join(timeout=10)
    assert not worker.is_alive()
    assert worker.error is None and worker.exit_code is None, worker.err.getvalue()
    assert worker.out.getvalue() == pretty({"success": True, "transcript": "Seven"})
    assert recorder.methods == ["voicecall.start", "voicecall.continue.start", "voicecall.continue"]
    assert recorder.over_rpc == ["initiate", "continue_call"]
    assert recorder.standalone == []


# --- gateway errors are final ----------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_gateway_error_is_final_no_standalone_retry(via_gateway, recorder, outbox):
    out, err = run_fail("speak", "--call-id", "no-such-call", "--message", "Hi")
    assert out == ""
    assert err.strip() == "Call not found: no-such-call"
    assert recorder.methods == ["voicecall.speak"]
    assert recorder.over_rpc == ["speak"]
    assert recorder.standalone == []
    assert outbox == []


@pytest.mark.django_db(transaction=True)
def test_ended_call_error_comes_from_the_gateway(via_gateway, recorder, outbox):
    call_id = start_call()
    run("end", "--call-id", call_id)
    outbox.clear()
    out, err = run_fail("dtmf", "--call-id", call_id, "--digits", "1")
    assert (out, err.strip()) == ("", "Call has ended")
    assert recorder.standalone == []
    assert outbox == []


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "args",
    [("start", "--to", TO), ("speak", "--call-id", "1", "--message", "Hi"), ("end", "--call-id", "1")],
    ids=["start", "speak", "end"],
)
def test_bad_token_is_unauthorized_and_never_falls_back(via_gateway, recorder, settings, outbox, args):
    settings.VOICECALL_RPC_TOKEN = BAD_TOKEN
    out, err = run_fail(*args)
    assert out == ""
    assert "Unauthorized: invalid token" in err
    assert "VOICECALL_RPC_TOKEN" in err
    assert BAD_TOKEN not in err
    assert recorder.methods == []  # refused before any method ran
    assert recorder.standalone == []
    assert outbox == []
    assert Call.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_configured_write_token_is_used_by_the_cli(via_gateway, recorder, settings):
    write_token = "write-token-abcdefghijklmnop"
    settings.VOICECALL_RPC_TOKENS = parse_rpc_tokens(f"read:{READ_TOKEN}, write:{write_token}")
    out, _ = run("start", "--to", TO)
    assert set(json.loads(out)) == {"callId"}
    assert recorder.methods == ["voicecall.start"]


@pytest.mark.django_db(transaction=True)
def test_read_token_cannot_place_a_call(via_gateway, recorder, settings, outbox):
    settings.VOICECALL_RPC_TOKENS = parse_rpc_tokens(f"read:{READ_TOKEN}")
    settings.VOICECALL_RPC_TOKEN = READ_TOKEN
    out, err = run_fail("start", "--to", TO)
    assert out == ""
    assert err.strip() == "voicecall.start needs a token with the write scope"
    assert recorder.standalone == []
    assert outbox == []
    assert Call.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_html_answer_is_not_the_gateway(settings, recorder, outbox):
    with html_server() as base:
        settings.VOICECALL_GATEWAY_URL = base
        out, err = run_fail("start", "--to", TO)
    assert out == ""
    assert err.strip() == (
        f"{base}/voice/rpc answered HTTP 200 without JSON-RPC: is it the voice-call gateway?"
    )
    assert "running standalone" not in err
    assert recorder.standalone == []
    assert outbox == []
    assert Call.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_json_that_is_not_json_rpc_is_not_the_gateway(settings, recorder, outbox):
    with html_server(body=b'{"ok": true}', content_type="application/json") as base:
        settings.VOICECALL_GATEWAY_URL = base + "/voice/rpc"
        out, err = run_fail("speak", "--call-id", "1", "--message", "Hi")
    assert err.strip() == f"{base}/voice/rpc answered HTTP 200 without JSON-RPC: is it the voice-call gateway?"
    assert recorder.standalone == []


@pytest.mark.django_db(transaction=True)
def test_wrong_path_on_the_gateway_host_is_an_error_not_a_fallback(live_gateway, settings, recorder, outbox):
    settings.VOICECALL_GATEWAY_URL = live_gateway + "/healthz"
    out, err = run_fail("start", "--to", TO)
    assert out == ""
    assert err.strip() == (
        f"{live_gateway}/healthz/voice/rpc answered HTTP 404 without JSON-RPC: is it the voice-call gateway?"
    )
    assert recorder.methods == []
    assert recorder.standalone == []
    assert Call.objects.count() == 0
    assert outbox == []


# --- gateway down: standalone ----------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_gateway_down_runs_standalone_with_a_note(settings, recorder, outbox):
    port = free_port()
    settings.VOICECALL_GATEWAY_URL = f"http://127.0.0.1:{port}"
    out, err = run("start", "--to", TO)
    call = Call.objects.get()
    assert out == pretty({"callId": str(call.pk)})  # stdout is the JSON and nothing else
    assert err.startswith(f"voicecall: no gateway at http://127.0.0.1:{port}/voice/rpc (")
    assert err.rstrip("\n").endswith("; running standalone")
    assert recorder.standalone == ["initiate"]
    assert recorder.methods == []
    assert actions(outbox) == ["initiate_call"]


@pytest.mark.django_db(transaction=True)
def test_delegation_off_runs_standalone_silently(settings, recorder, outbox):
    settings.VOICECALL_GATEWAY_URL = "off"
    out, err = run("start", "--to", TO)
    assert out == pretty({"callId": str(Call.objects.get().pk)})
    assert err == ""
    assert recorder.standalone == ["initiate"]
    assert recorder.methods == []


@pytest.mark.django_db(transaction=True)
def test_standalone_fallback_never_binds_a_socket(settings, monkeypatch, recorder, outbox):
    settings.VOICECALL_GATEWAY_URL = f"http://127.0.0.1:{free_port()}"
    cli_thread = threading.get_ident()
    bound: list[str] = []
    real_bind, real_listen = socket.socket.bind, socket.socket.listen

    def bind(self, address):
        if threading.get_ident() == cli_thread:
            bound.append(f"bind {address!r}")
        return real_bind(self, address)

    def listen(self, *args):
        if threading.get_ident() == cli_thread:
            bound.append("listen")
        return real_listen(self, *args)

    monkeypatch.setattr(socket.socket, "bind", bind)
    monkeypatch.setattr(socket.socket, "listen", listen)
    call_id = start_call()
    event_process(event=CallAnswered(call_id=call_id))
    run("speak", "--call-id", call_id, "--message", "Hi")
    run("end", "--call-id", call_id)
    assert recorder.standalone == ["initiate", "speak", "end"]
    assert bound == []
