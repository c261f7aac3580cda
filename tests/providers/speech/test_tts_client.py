"""The TTS providers' HTTP client: one per event loop, its connections kept alive from reply to reply."""
from __future__ import annotations

import asyncio

import httpx

from providers.tts import http as tts_http
from providers.tts.openai import OpenAITts
from tests.fakes.ai.tts import FakeTts

TEXT = "Your appointment is on Monday."


def provider(fake: FakeTts) -> OpenAITts:
    return OpenAITts({"apiKey": "sk-fake-openai", "baseUrl": f"{fake.url}/v1", "timeoutMs": 2000}, environ={})


async def say(tts: OpenAITts) -> bytes:
    return b"".join([chunk async for chunk in tts.stream(TEXT)])


async def test_replies_reuse_one_client_and_one_connection(monkeypatch):
    built = []
    real = httpx.AsyncClient.__init__

    def counting(self, *args, **kwargs):
        built.append(kwargs)
        real(self, *args, **kwargs)

    monkeypatch.setattr(httpx.AsyncClient, "__init__", counting)
    with FakeTts(chunk_gap=0.0) as fake:
        tts = provider(fake)
        for _ in range(4):
            assert await say(tts)
        assert len(fake.requests) == 4
        # Built once for this loop, and the second reply onwards starts on the open connection.
        assert len(built) == 1
        assert fake.connections == 1
        await tts_http.shared_client().aclose()


async def test_a_closed_client_is_replaced_and_each_loop_has_its_own():
    with FakeTts(chunk_gap=0.0) as fake:
        first = tts_http.shared_client()
        assert tts_http.shared_client() is first
        await first.aclose()
        assert await say(provider(fake))  # a new client, not the closed one
        second = tts_http.shared_client()
        assert second is not first and not second.is_closed

        def other_loop() -> httpx.AsyncClient:
            async def get():
                client = tts_http.shared_client()
                await client.aclose()
                return client
            return asyncio.run(get())

        assert await asyncio.to_thread(other_loop) is not second
        await second.aclose()

