"""Local fakes of the cloud speech AI services, speaking each provider's real WebSocket protocol on a loopback port."""
from __future__ import annotations

from .stt import FakeDeepgram, FakeElevenLabs, FakeMistral, FakeOpenAITranscription, FakeStt, FakeXai, Frame, SttConnection

__all__ = [
    "FakeDeepgram",
    "FakeElevenLabs",
    "FakeMistral",
    "FakeOpenAITranscription",
    "FakeStt",
    "FakeXai",
    "Frame",
    "SttConnection",
]
