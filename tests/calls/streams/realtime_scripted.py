"""A scripted in-process realtime provider: records what the bridge sends and emits model events on command."""
from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import numpy as np

from core.audio import samples_to_ulaw
from providers.realtime.base import RealtimeError, RealtimeProvider, RealtimeSession, SessionSetup, ToolCall


class ScriptedRealtime(RealtimeProvider):
    """Settings: `connect` ("ok", "fail", "hang"), `bargeIn` (the provider interrupts by itself),
    `speaks` (answer each respond() with `speaksMs` of tone and the transcript "Spoken <n>")."""

    name = "scripted"
    api_key_env = None
    sessions: ClassVar[list[ScriptedSession]] = []

    def __init__(self, settings: dict[str, Any] | None = None, **kwargs) -> None:
        super().__init__(settings, **kwargs)
        self.handles_barge_in = bool(self.setting("bargeIn", True))

    def create_session(self, listener, setup: SessionSetup) -> ScriptedSession:
        session = ScriptedSession(self, listener, setup)
        ScriptedRealtime.sessions.append(session)
        return session


class ScriptedSession(RealtimeSession):
    def __init__(self, provider, listener, setup) -> None:
        super().__init__(provider, listener, setup)
        self.audio = bytearray()
        self.responds: list[str] = []
        self.truncates: list[tuple[str, int]] = []
        self.tool_results: list[tuple[str, dict]] = []
        self.cancels = 0
        self.connected = False
        self.closed = False

    async def connect(self) -> None:
        mode = self.provider.setting("connect", "ok")
        if mode == "fail":
            raise RealtimeError("scripted: refused")
        if mode == "hang":
            await asyncio.Event().wait()
        self.connected = True

    def send_audio(self, ulaw: bytes) -> None:
        self.audio += ulaw

    async def respond(self, instructions: str) -> None:
        self.responds.append(instructions)
        if self.provider.setting("speaks"):
            item = f"item-{len(self.responds)}"
            ms = int(self.provider.setting("speaksMs", 400))
            self.listener.on_audio(tone(ms), item)
            self.listener.on_output_transcript(item, f"Spoken {len(self.responds)}")
            self.listener.on_response_done(item, "completed")

    async def send_tool_result(self, call: ToolCall, output: dict[str, Any]) -> None:
        self.tool_results.append((call.name, output))

    async def truncate(self, item_id: str, played_ms: int) -> None:
        self.truncates.append((item_id, played_ms))

    async def cancel_response(self) -> None:
        self.cancels += 1

    async def close(self) -> None:
        self.closed = True


def tone(ms: int, amplitude: float = 0.3) -> bytes:
    t = np.arange(ms * 8) / 8000
    return samples_to_ulaw((np.sin(2 * np.pi * 440 * t) * amplitude * 32767).astype(np.int16))
