"""The cloud speech services as instant local fakes, in their own process, for the media benchmarks.

Runs the test suite's FakeDeepgram (streaming STT over a WebSocket) and FakeTts (OpenAI's
/v1/audio/speech, answered at once with no pause between chunks) on 127.0.0.1 and prints one
JSON line with their base URLs, then serves until stdin closes. The benchmark pins this process to
the core it does not give the gateway, so the services' own cost is never counted as the gateway's.
Run: `.venv/bin/python bench/cloud_fakes.py` (the benchmarks start it themselves).
"""
from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STT_KEY = "bench-deepgram-key"
TTS_KEY = "bench-openai-key"
# What every caller "says": the fake recognizer releases these words as it hears loud audio.
SCRIPT = ["hello i would like to book an appointment please", "thank you goodbye"]


async def serve() -> None:
    from tests.fakes.ai.stt import FakeDeepgram
    from tests.fakes.ai.tts import FakeTts

    stt = await FakeDeepgram(api_key=STT_KEY, script=SCRIPT).start()
    # No record of every frame: the fake serves many calls for a long time.
    stt.keep_frames = False
    tts = FakeTts(openai_key=TTS_KEY, chunk_gap=0.0).start()
    # A gateway stopped between levels drops its kept-alive connections: not worth a traceback.
    tts._httpd.handle_error = lambda request, address: None
    print(json.dumps({"stt": stt.url.replace("ws://", "http://"), "tts": tts.origin, "sttKey": STT_KEY,
                      "ttsKey": TTS_KEY}), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # the benchmark closes our stdin to stop us
    tts.stop()
    await stt.stop()


if __name__ == "__main__":
    asyncio.run(serve())
