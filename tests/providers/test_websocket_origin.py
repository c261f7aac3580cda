"""Provider base URLs for WebSocket sessions: http(s) or ws(s), with or without the /v1 HTTP clients use."""
from __future__ import annotations

import pytest

from providers.realtime.openai import OpenAIRealtime
from providers.transcription.openai import OpenAITranscription
from providers.websocket import websocket_origin


@pytest.mark.parametrize(("configured", "origin"), [
    ("https://api.openai.com", "wss://api.openai.com"),
    ("https://api.openai.com/v1", "wss://api.openai.com"),
    ("http://127.0.0.1:8080/v1/", "ws://127.0.0.1:8080"),
    ("wss://proxy.example.com/openai", "wss://proxy.example.com/openai"),
    ("ws://127.0.0.1:9000/", "ws://127.0.0.1:9000"),
])
def test_websocket_origin(configured, origin):
    assert websocket_origin(configured) == origin


@pytest.mark.parametrize("base", ["http://llm.local:8080", "http://llm.local:8080/v1"])
def test_openai_sockets_take_the_base_url_the_http_clients_take(base):
    # The TTS and chat clients are given .../v1; the sockets add /v1 themselves: one path either way.
    stt = OpenAITranscription({"apiKey": "k", "baseUrl": base}).create_session(listener=None)
    assert stt.url() == "ws://llm.local:8080/v1/realtime?intent=transcription"
    realtime = OpenAIRealtime({"apiKey": "k", "baseUrl": base, "model": "gpt-realtime"})
    session = realtime.create_session(None, setup=None)
    assert session.url() == "ws://llm.local:8080/v1/realtime?model=gpt-realtime"
