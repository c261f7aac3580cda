"""A whole mock call, from placement to hang-up: through the ASGI app in-process, and through a real
gateway process on a real socket driven by the CLI (the README's flow)."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import uuid
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from asgiref.sync import sync_to_async

from calls.free_ports import free_port
from calls.models import Call
from calls.services import call_continue, call_end, call_initiate
from providers.carriers import mock
from tests.conftest import events_body
from tests.paths import ROOT
from tests.waiting import await_until, wait_until


@pytest.mark.django_db(transaction=True)
async def test_complete_call_through_the_asgi_app(asgi):
    call = await sync_to_async(call_initiate)(to="+15550001111", message="Hi, this is the clinic.", mode="conversation")
    cid = str(call.pk)

    async def post(*events):
        response = await asgi.post("/voice/webhook", content=events_body(*events))
        assert response.status_code == 200, response.text

    await post({"type": "call.ringing", "callId": cid, "id": "e1"}, {"type": "call.answered", "callId": cid, "id": "e2"})
    await post({"type": "call.speech", "callId": call.provider_call_id, "transcript": "Hello?", "id": "e3"})

    # An agent turn: speak, then wait for the caller's answer that arrives as a webhook.
    turn = asyncio_thread(lambda: call_continue(call_id=cid, prompt="Can you come on Tuesday?"))
    await await_until(sync_to_async(lambda: Call.objects.get(pk=cid).turns.filter(listen_started_at__isnull=False).exists()),
                      "the turn to listen")
    await post({"type": "call.speech", "callId": cid, "transcript": "Yes, Tuesday works.", "confidence": 0.93, "id": "e4"})
    assert turn.join() == "Yes, Tuesday works."

    await post({"type": "call.dtmf", "callId": cid, "digits": "1", "id": "e5"})
    await post({"type": "call.speech", "callId": cid, "transcript": "Yes, Tuesday works.", "id": "e4"})  # replayed id
    await sync_to_async(call_end)(call_id=cid)
    await post({"type": "call.ended", "callId": cid, "reason": "completed", "id": "e6"})  # carrier confirms later

    call = await sync_to_async(Call.objects.get)(pk=cid)
    assert (call.state, call.end_reason) == ("hangup-bot", "hangup-bot")
    events = await sync_to_async(lambda: list(call.events.values_list("type", "dedupe_key")))()
    assert events == [
        ("call.ringing", "e1"),
        ("call.answered", "e2"),
        ("call.speech", "e3"),
        ("call.speech", "e4"),
        ("call.dtmf", "e5"),
        ("call.ended", "e6"),
    ]
    transcript = await sync_to_async(lambda: list(call.transcript_entries.values_list("speaker", "text")))()
    assert transcript == [
        ("bot", "Hi, this is the clinic."),
        ("user", "Hello?"),
        ("bot", "Can you come on Tuesday?"),
        ("user", "Yes, Tuesday works."),
    ]
    turn_row = await sync_to_async(call.turns.get)()
    assert turn_row.status == "completed" and turn_row.turn_latency_ms is not None
    assert call.turn_count == 1
    assert mock.outbox_actions(call.provider_call_id) == [
        "initiate_call", "play_tts", "start_listening", "play_tts", "start_listening", "stop_listening", "hangup_call",
    ]


class asyncio_thread:
    """Run a blocking service call in a thread; join() returns its result or raises its error."""

    def __init__(self, func):
        self.result = self.error = None

        def run():
            from django.db import connection

            try:
                self.result = func()
            except Exception as exc:
                self.error = exc
            finally:
                connection.close()

        self.thread = threading.Thread(target=run)
        self.thread.start()

    def join(self, timeout=10):
        self.thread.join(timeout)
        if self.error:
            raise self.error
        return self.result


# --- the real thing: a gateway process on a socket, the CLI in other processes ----------------


@dataclass
class Gateway:
    base: str
    env: dict
    dir: Path

    def cli(self, *args: str) -> dict:
        """Run `manage.py voicecall ...` in its own process and parse its JSON output."""
        result = subprocess.run([sys.executable, "manage.py", "voicecall", *args], cwd=ROOT, env=self.env,
                                capture_output=True, text=True, timeout=60)
        if result.returncode:
            raise AssertionError(result.stderr)
        return json.loads(result.stdout)

    def post(self, *events: dict) -> None:
        response = httpx.post(f"{self.base}/voice/webhook", content=events_body(*events))
        assert response.status_code == 200, response.text

    def log(self) -> str:
        return (self.dir / "gateway.log").read_text()

    def listening(self, call_id: str) -> bool:
        """Whether the call's `continue` turn listens now (read from the gateway's own database)."""
        with closing(sqlite3.connect(f"file:{self.dir / 'gateway.sqlite3'}?mode=ro", uri=True)) as db:
            row = db.execute("SELECT 1 FROM calls_callturn WHERE call_id = ? AND listen_started_at IS NOT NULL",
                             (uuid.UUID(call_id).hex,)).fetchone()
        return row is not None

    def wait(self, condition, what: str, timeout: float = 15.0) -> None:
        try:
            wait_until(condition, what, timeout=timeout, interval=0.1)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; gateway log:\n{self.log()}") from None


@pytest.fixture
def gateway(tmp_path):
    """`manage.py gateway` on a free port with its own SQLite file, as the README runs it."""
    yield from serve(tmp_path)


@pytest.fixture
def json_log_gateway(tmp_path):
    """The same, logging JSON lines (LOG_FORMAT=json)."""
    yield from serve(tmp_path, LOG_FORMAT="json")


def serve(tmp_path, **extra_env: str):
    port = free_port()
    config = tmp_path / "voicecall.json5"
    config.write_text(
        "// mock carrier on a test port\n"
        f"{{serve: {{port: {port}}}, outbound: {{notifyHangupDelaySec: 1}}, maxConcurrentCalls: 3,}}\n"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "voicecall_project.settings",
        "VOICECALL_DATA_DIR": str(tmp_path),
        "VOICECALL_CONFIG": str(config),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'gateway.sqlite3'}",
        "PYTHONUNBUFFERED": "1",
        **extra_env,
    }
    env.pop("REDIS_URL", None)
    env.pop("VOICECALL_BACKGROUND", None)
    env.pop("VOICECALL_EMBEDDED_SCHEDULER", None)
    env.pop("VOICECALL_AUTOSTART_SERVICES", None)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    log = open(tmp_path / "gateway.log", "w")
    process = subprocess.Popen([sys.executable, "manage.py", "gateway"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        gw = Gateway(base=base, env=env, dir=tmp_path)

        def healthy() -> bool:
            if process.poll() is not None:
                raise AssertionError("the gateway exited:\n" + gw.log())
            try:
                return httpx.get(f"{base}/healthz", timeout=0.5).status_code == 200
            except httpx.HTTPError:
                return False

        gw.wait(healthy, "the gateway to answer /healthz", timeout=20)
        yield gw
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def test_readme_flow_on_a_real_gateway(gateway):
    gw = gateway
    ready = httpx.get(f"{gw.base}/readyz").json()
    assert ready.pop("restore")["state"] in {"not started", "running", "done"}
    assert ready == {"ready": True, "provider": "mock"}

    call_id = gw.cli("call", "--to", "+15550001111", "--message", "Hello")["callId"]
    status = gw.cli("status", "--call-id", call_id, "--json")
    assert (status["state"], status["to"], status["metadata"]["initialMessage"]) == ("initiated", "+15550001111", "Hello")

    gw.post({"type": "call.answered", "callId": call_id})
    # The greeting is spoken by the gateway's background worker right after the answer.
    gw.wait(lambda: gw.cli("status", "--call-id", call_id, "--json")["transcript"], "the greeting in the transcript")
    assert gw.cli("status", "--call-id", call_id, "--json")["transcript"][0]["text"] == "Hello"

    # `continue` in one process; the caller's answer arrives through the gateway's webhook.
    waiting = subprocess.Popen(
        [sys.executable, "manage.py", "voicecall", "continue", "--call-id", call_id, "--message", "Anything else?"],
        cwd=ROOT, env=gw.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    gw.wait(lambda: gw.listening(call_id), "the turn to listen")
    gw.post({"type": "call.speech", "callId": call_id, "transcript": "No, thank you."})
    out, err = waiting.communicate(timeout=20)
    assert waiting.returncode == 0, err
    assert json.loads(out) == {"success": True, "transcript": "No, thank you."}

    assert gw.cli("end", "--call-id", call_id) == {"success": True}
    final = gw.cli("status", "--call-id", call_id, "--json")
    assert (final["state"], final["endReason"]) == ("hangup-bot", "hangup-bot")
    assert [t["speaker"] for t in final["transcript"]] == ["bot", "bot", "user"]
    latency = gw.cli("latency", "--json")
    assert latency["turnsScanned"] == 1 and latency["turnLatency"]["count"] == 1

    # A notify call: the gateway's embedded sweeper hangs up notifyHangupDelaySec after the message.
    notify_id = gw.cli("call", "--to", "+15550002222", "--message", "Your order shipped", "--mode", "notify")["callId"]
    gw.post({"type": "call.answered", "callId": notify_id})
    gw.wait(lambda: gw.cli("status", "--call-id", notify_id, "--json")["state"] == "hangup-bot", "the notify hang-up")


def test_json_log_lines_of_a_call_name_it(json_log_gateway):
    gw = json_log_gateway
    call_id = gw.cli("call", "--to", "+15550002222", "--message", "Your order shipped", "--mode", "notify")["callId"]
    gw.post({"type": "call.answered", "callId": call_id})
    gw.wait(lambda: gw.cli("status", "--call-id", call_id, "--json")["state"] == "hangup-bot", "the notify hang-up")
    gw.wait(lambda: f"call {call_id} ended" in gw.log(), "the end of the call to be logged")
    # Daphne's access lines go through the same handler: JSON, and redacted.
    assert httpx.get(f"{gw.base}/healthz?token=query-token-123456").status_code == 200
    gw.wait(lambda: "/healthz?token=" in gw.log(), "the access line of the request")
    assert "query-token-123456" not in gw.log()

    records = [json.loads(line) for line in gw.log().splitlines() if line.startswith("{")]
    assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
    ended = [r for r in records if r["message"].startswith(f"call {call_id} ended")]
    assert ended and ended[0]["call_id"] == call_id, ended
    # The lines logged while the call's events and jobs ran name it; no other call's id is seen.
    assert {r["call_id"] for r in records if "call_id" in r} == {call_id}
    access = [r for r in records if r["logger"] == "calls.access"]
    assert any('"GET /healthz?token=[redacted]" 200' in r["message"] for r in access), access
    # Nothing else the server wrote on standard error is a log line that escaped the JSON format.
    others = [line for line in gw.log().splitlines() if line.strip() and not line.startswith("{")]
    assert all(line.startswith("Voice-call gateway on ") for line in others), others
