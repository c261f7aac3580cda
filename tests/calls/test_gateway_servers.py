"""`manage.py gateway --server daphne|uvicorn`: the same application serves a whole streamed call under either server."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest

from calls.free_ports import free_port
from calls.simulator.call import Gateway, Line
from calls.simulator.rest import TwilioRestStub
from calls.simulator.run import simulate
from tests.fakes.ai.stt import FakeDeepgram
from tests.fakes.ai.tts import FakeTts
from tests.paths import ROOT
from tests.waiting import wait_until

ACCOUNT = "AC" + "5" * 32
TOKEN = "servers-token"
STT_KEY, TTS_KEY = "dg-servers", "sk-servers"
REPLY = "Your appointment is booked for Monday."


def start(server: str, tmp_path, stt: FakeDeepgram, tts: FakeTts, rest: TwilioRestStub) -> tuple[subprocess.Popen, int]:
    port = free_port()
    config = {
        "provider": "twilio",
        "twilio": {"accountSid": ACCOUNT, "authToken": TOKEN, "baseUrl": rest.base_url},
        "fromNumber": "+15550100000", "publicUrl": f"http://127.0.0.1:{port}", "serve": {"port": port},
        "inboundPolicy": "open", "inboundGreeting": "Hello, clinic.",
        "streaming": {"enabled": True, "provider": "deepgram", "providers": {"deepgram": {
            "apiKey": STT_KEY, "baseUrl": stt.url.replace("ws://", "http://"), "endpointingMs": 300}}},
        "tts": {"provider": "openai", "providers": {"openai": {"apiKey": TTS_KEY, "baseUrl": f"{tts.url}/v1"}}},
        "agents": {"main": {"responder": {"type": "scripted", "replies": [REPLY]}}},
    }
    return serve(server, tmp_path, config), port


def serve(server: str, tmp_path, config: dict, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`manage.py gateway --server SERVER` with `config` (its serve.port set) and SQLite in `tmp_path`, once /healthz answers."""
    port = config["serve"]["port"]
    (tmp_path / "voicecall.json").write_text(json.dumps(config))
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "voicecall_project.settings", "VOICECALL_DATA_DIR": str(tmp_path),
           "VOICECALL_CONFIG": str(tmp_path / "voicecall.json"), "PYTHONUNBUFFERED": "1", **(env or {})}
    for name in ("DATABASE_URL", "REDIS_URL", "VOICECALL_BACKGROUND"):
        env.pop(name, None)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    log = open(tmp_path / "gateway.log", "w")
    process = subprocess.Popen([sys.executable, "manage.py", "gateway", "--server", server], cwd=ROOT, env=env,
                               stdout=log, stderr=subprocess.STDOUT)

    def healthy() -> bool:
        if process.poll() is not None:
            raise AssertionError("the gateway exited:\n" + (tmp_path / "gateway.log").read_text())
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, f"the gateway under {server} to answer /healthz", timeout=30, interval=0.1)
    return process


@pytest.mark.parametrize("server", ["daphne", "uvicorn"])
async def test_a_streamed_call_with_a_turn_under_each_server(server, tmp_path):
    rest = TwilioRestStub(on_hangup=lambda sid: None).start()
    stt = await FakeDeepgram(api_key=STT_KEY, script=["i would like an appointment"]).start()
    with FakeTts(openai_key=TTS_KEY, chunk_gap=0.0) as tts:
        process, port = start(server, tmp_path, stt, tts, rest)
        try:
            gateway = Gateway(base_url=f"http://127.0.0.1:{port}", webhook_url=f"http://127.0.0.1:{port}/voice/webhook",
                              account_sid=ACCOUNT, auth_token=TOKEN)
            report = await simulate(gateway, [Line("I would like to book an appointment please.")], rest=rest,
                                    listen=False, max_seconds=60)
        finally:
            process.terminate()
            process.wait(15)
            await stt.stop()
            rest.stop()
        call = report.calls[0]
        assert call.outcome == "completed", (call, (tmp_path / "gateway.log").read_text())
        # The greeting and the reply reached the caller: the line was answered. (Whether its reply
        # started after the line's last frame or during a pause in it is the recognizer's timing.)
        assert call.unanswered_turns == 0 and call.speech_frames_played > 0, call
        assert [r.json["input"] for r in tts.requests] == ["Hello, clinic.", REPLY]
        # Frames the caller sent before the recognizer was connected are not transcribed (the greeting
        # waits for it, so none is a reply); from the greeting on, every frame reaches it.
        assert call.frames_sent_before_gateway_audio is not None, call
        assert stt.connections and stt.connections[0].audio_frames >= call.frames_sent - call.frames_sent_before_gateway_audio
