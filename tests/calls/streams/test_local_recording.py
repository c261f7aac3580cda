"""Local recording of streamed calls (calls/streams/recording.py): a two-channel WAV the gateway writes itself.

Through the real server: a fake carrier speaks Twilio's Media Streams protocol, sending 20 ms
frames on a real-time clock (a loud tone where the caller "talks", silence elsewhere), and reads
what the gateway sends back. The WAV is then read with the `wave` module and judged per 20 ms
window: the caller's channel must be exactly what the carrier sent, in place; the gateway's
channel must hold exactly the audio the carrier received, starting where the carrier's clock
was when it arrived.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import time
import wave
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from asgiref.sync import sync_to_async

from calls.models import Call, Recording
from calls.services import call_speak
from calls.streams import recording as recording_module
from calls.streams.recording import MAX_LEAD_BYTES, StreamRecording, WavFile, interleave, wav_header
from core.audio import FRAME_BYTES, SILENCE_FRAME, Pacer, samples_to_ulaw, ulaw_to_samples
from tests.calls.streams.test_media_stream import (
    ACCOUNT,
    TOKEN,
    Listener,
    closed_row,
    media_frame,
    open_stream,
    stop_frame,
)
from tests.calls.streams.test_media_stream import gateway, rest_stub  # noqa: F401  (fixtures)
from tests.logs import records_of
from tests.waiting import await_until

live = pytest.mark.django_db(transaction=True)
LOUD = 1000.0  # RMS above this is a tone or speech; μ-law silence decodes to exact zeros


def tone(ms: int, amplitude: float = 0.3, hz: float = 440.0) -> bytes:
    t = np.arange(ms * 8) / 8000
    return samples_to_ulaw((np.sin(2 * np.pi * hz * t) * amplitude * 32767).astype(np.int16))


def recording_config(gw, directory: Path | str, **recording) -> None:
    loaded = gw.configure({
        "provider": "twilio",
        "twilio": {"accountSid": ACCOUNT, "authToken": TOKEN, "baseUrl": gw.rest_stub.base_url},
        "fromNumber": "+15550100000",
        "publicUrl": gw.live_gateway,
        "streaming": {"enabled": True, "provider": "local"},
        # Piper on a busy 2-core machine: a first synthesis may take longer than the default 8 s.
        "tts": {"provider": "local", "timeoutMs": 30000},
        "recording": {"local": True, "directory": str(directory), **recording},
    })
    assert not loaded.errors, loaded.errors


@sync_to_async
def new_call(*, record_local: bool = True, mode: str = "notify") -> Call:
    # A notify call: what the caller's tone sounds like to the recognizer never starts a reply.
    import secrets

    return Call.objects.create(
        provider="twilio", provider_call_id="CA" + secrets.token_hex(16), direction="inbound", state="answered",
        from_number="+15550100001", to_number="+15550100000", mode=mode, record_local=record_local,
    )


@sync_to_async
def recordings_of(call: Call) -> list[Recording]:
    return list(Recording.objects.filter(call=call).order_by("started_at"))


async def settled_recordings(call: Call, count: int = 1) -> list[Recording]:
    async def settled():
        rows = await recordings_of(call)
        return rows if len(rows) >= count and all(r.status != "in-progress" for r in rows) else None

    return await await_until(settled, f"{count} recording(s) of the call settled", timeout=15)


class PacedCaller:
    """The carrier's side of the stream: one frame every 20 ms, `talk` (frame index → payload) or silence."""

    def __init__(self, ws, sid: str, talk: dict[int, bytes] | None = None, *, frame=media_frame) -> None:
        self.ws, self.sid = ws, sid
        self.talk = talk or {}
        self.frame = frame  # (stream id, payload, sequence) → the carrier's media message
        self.sent: list[bytes] = []
        self.times: list[float] = []  # monotonic time each frame was sent
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        pacer = Pacer()
        pacer.start()
        self.started_at = time.monotonic()
        while True:
            await pacer.wait()
            index = len(self.sent)
            payload = self.talk.get(index, SILENCE_FRAME)
            await self.ws.send(self.frame(self.sid, payload, sequence=index + 2))
            self.sent.append(payload)
            self.times.append(time.monotonic())

    async def until(self, frames: int) -> None:
        await await_until(lambda: len(self.sent) >= frames or self.task.done(), f"{frames} frames sent", timeout=30)
        if self.task.done():
            self.task.result()

    def clock_at(self, moment: float) -> float:
        """The carrier's clock at `moment`, in frames (frame n is due n × 20 ms after the start)."""
        return (moment - self.started_at) / 0.02

    async def stop(self) -> None:
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass


def talking(start: int, frames: int, **kwargs) -> dict[int, bytes]:
    audio = tone(frames * 20, **kwargs)
    return {start + n: audio[n * FRAME_BYTES:(n + 1) * FRAME_BYTES] for n in range(frames)}


def read_wav(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The caller's and the gateway's channel, checking the format on the way."""
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate(), wav.getcomptype()) == (2, 2, 8000, "NONE")
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)
    return samples[:, 0], samples[:, 1]


def windows_rms(channel: np.ndarray) -> np.ndarray:
    """RMS of each 20 ms window."""
    usable = channel[: len(channel) // FRAME_BYTES * FRAME_BYTES].astype(np.float64).reshape(-1, FRAME_BYTES)
    return np.sqrt((usable ** 2).mean(axis=1))


def decoded(frames: list[bytes]) -> np.ndarray:
    return ulaw_to_samples(b"".join(frames)) if frames else np.zeros(0, dtype=np.int16)


def energy(samples: np.ndarray) -> int:
    return int((samples.astype(np.int64) ** 2).sum())


def assert_caller_channel(left: np.ndarray, caller: PacedCaller, *, all_frames: bool = True) -> None:
    """The caller's channel is every frame the carrier sent, in place, and silence after them.

    Without `all_frames` (a connection dropped with frames still in flight) it may end early.
    """
    expected = decoded(caller.sent)
    if not all_frames:
        assert len(left) >= len(expected) * 0.8
        expected = expected[: len(left)]
    assert len(left) >= len(expected)
    assert np.array_equal(left[: len(expected)], expected)
    assert not left[len(expected):].any()


def played_at(listener: Listener, caller: PacedCaller) -> list[tuple[float, bytes]]:
    """When the carrier plays each frame it received (its clock, in frames): on arrival, or once the
    frame before it has played (a carrier plays its buffer in order), and what it is."""
    played, free = [], 0.0
    for arrived, message in listener.frames:
        if message["event"] == "media":
            at = max(caller.clock_at(arrived), free)
            played.append((at, base64.b64decode(message["media"]["payload"])))
            free = at + 1
    return played


def assert_gateway_channel(right: np.ndarray, listener: Listener, caller: PacedCaller, *, slack: int = 10) -> int:
    """The gateway's channel holds exactly the audio the carrier received, starting where the carrier
    played its first loud frame (less the trip from the gateway, at most `slack` frames)."""
    assert energy(right) == energy(decoded(listener.payloads()))
    loud = [at for at, payload in played_at(listener, caller) if np.sqrt(np.mean(ulaw_to_samples(payload).astype(float) ** 2)) > LOUD]
    assert loud, "the carrier heard nothing from the gateway"
    first = int(np.argmax(windows_rms(right) > LOUD))
    assert loud[0] - slack <= first <= loud[0] + 2, (first, loud[0])
    return first


# --- the file -----------------------------------------------------------------------------------


def test_a_partly_written_file_is_a_valid_wav_of_every_chunk_written(tmp_path):
    path = tmp_path / "call" / "rec.wav"
    wav = WavFile(path)
    assert wav.open() == ""
    left, right = tone(1000), bytes(SILENCE_FRAME * 50)
    wav.append(left, right)
    wav.append(right, left)
    with wave.open(str(path), "rb") as partial:  # still open for writing: what a crash would leave
        assert partial.getnframes() == 16000 and partial.getnchannels() == 2
        samples = np.frombuffer(partial.readframes(16000), dtype="<i2").reshape(-1, 2)
    assert np.array_equal(samples[:8000, 0], ulaw_to_samples(left)) and not samples[:8000, 1].any()
    assert np.array_equal(samples[8000:, 1], ulaw_to_samples(left)) and not samples[8000:, 0].any()
    result = wav.close()
    assert result.error == "" and result.size_bytes == 44 + 16000 * 4 == path.stat().st_size
    assert result.duration_seconds == 2.0
    assert wav_header(0)[:4] == b"RIFF" and len(interleave(b"\xff" * 3, b"\x00" * 3)) == 12


def test_an_unwritable_place_fails_the_file_with_the_reason(tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x")
    wav = WavFile(blocker / "call" / "rec.wav")
    error = wav.open()
    assert "not-a-directory" in error and "Not a directory" in error
    wav.append(b"\xff" * 160, b"\xff" * 160)  # nothing happens: the recording has failed
    assert wav.close().error == error


# --- the timeline (on the loop, the writer thread for real, the rows left out) ----------------------


@pytest.fixture
def rowless(monkeypatch):
    calls = []

    async def services_call(func, **kwargs):
        calls.append((func.__name__, kwargs))

    monkeypatch.setattr(recording_module, "services_call", services_call)
    return calls


async def finished(rec: StreamRecording) -> tuple[np.ndarray, np.ndarray]:
    await rec.close()
    return read_wav(rec.file.path)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def recorder(tmp_path, name: str) -> tuple[StreamRecording, Clock]:
    config = SimpleNamespace(recording=SimpleNamespace(directory=str(tmp_path)))
    clock = Clock()
    return StreamRecording(config=config, call_id=name, stream_id=name, clock=clock), clock


async def test_timestamps_fill_lost_frames_with_silence_and_the_gateway_lines_up(tmp_path, rowless):
    rec, clock = recorder(tmp_path, "c1")
    voice = tone(20)
    rec.inbound(voice, 1000)
    clock.now += 0.02
    rec.inbound(voice, 1020)
    clock.now += 0.06
    rec.inbound(voice, 1080)  # two frames lost: 40 ms of silence before it
    rec.outbound(voice)  # sent now: at 100 ms, where the carrier's clock stands
    rec.outbound(voice)  # still due: after the previous one (the carrier plays its buffer in order)
    clock.now += 0.02
    rec.inbound(SILENCE_FRAME, 1100)
    clock.now += 0.02
    rec.inbound(SILENCE_FRAME, None)  # no timestamp: right after the previous frame
    left, right = await finished(rec)
    rms_left, rms_right = windows_rms(left) > LOUD, windows_rms(right) > LOUD
    assert rms_left.tolist() == [True, True, False, False, True, False, False]
    assert rms_right.tolist() == [False, False, False, False, False, True, True]
    assert [name for name, _ in rowless] == ["local_recording_start", "local_recording_finish"]
    assert rowless[1][1]["duration_seconds"] == 0.14 and rowless[1][1]["error"] == ""


async def test_frames_the_gateway_handles_late_do_not_move_the_gateway_audio(tmp_path, rowless):
    rec, clock = recorder(tmp_path, "c4")
    for n in range(5):  # on time: the carrier's clock is known
        clock.now += 0.02
        rec.inbound(SILENCE_FRAME, n * 20)
    clock.now += 0.2  # the loop was busy: 10 frames wait in the socket
    rec.outbound(tone(20))  # sent at 300 ms of the carrier's clock, though only 100 ms were handled
    for n in range(5, 15):
        rec.inbound(SILENCE_FRAME, n * 20)
    left, right = await finished(rec)
    assert (windows_rms(right) > LOUD).tolist() == [False] * 15 + [True]


async def test_a_clear_drops_what_the_carrier_had_not_played_and_a_silent_carrier_lets_the_gateway_keep_time(tmp_path, rowless):
    rec, clock = recorder(tmp_path, "c2")
    clock.now += 0.02
    rec.inbound(SILENCE_FRAME, 0)
    for _ in range(10):
        rec.outbound(tone(20))
    clock.now += 0.02
    rec.inbound(SILENCE_FRAME, 20)
    rec.cleared()  # the first of the 10 frames was due by now; the other 9 never played
    rec.inbound(SILENCE_FRAME, 40)
    left, right = await finished(rec)
    assert (windows_rms(right) > LOUD).tolist() == [False, True, False]
    rec, clock = recorder(tmp_path, "c3")
    for _ in range(8 * 50):  # eight seconds of gateway audio, no caller frame at all
        rec.outbound(tone(20))
        clock.now += 0.02
    assert rec.position >= MAX_LEAD_BYTES  # handed to the writer as it goes, not held until the end
    left, right = await finished(rec)
    assert len(right) == 8 * 8000 and (windows_rms(right) > LOUD).all() and not left.any()


# --- through the live gateway ---------------------------------------------------------------------


@live
async def test_a_streamed_call_is_recorded_as_a_two_channel_wav_with_both_sides_in_place(gateway, tmp_path):
    recording_config(gateway, tmp_path, retentionDays=7)
    call = await new_call()
    ws, sid = await open_stream(gateway, call)
    listener = Listener(ws, echo=True)
    caller = PacedCaller(ws, sid, talk=talking(25, 50))  # the caller talks from 0.5 s to 1.5 s
    await caller.until(100)
    rows = await recordings_of(call)
    assert len(rows) == 1 and rows[0].status == "in-progress" and rows[0].source == "local"
    speak = sync_to_async(call_speak, thread_sensitive=False)
    # Not interruptible: what the recognizer makes of the caller's tone, and when (on a loaded machine,
    # after this starts), would otherwise barge in and cut the message this test records.
    outcome = await asyncio.wait_for(speak(call_id=str(call.pk), text="Hello there, this is the gateway.",
                                           interruptible=False), 30)
    assert outcome == "played", outcome
    await caller.until(len(caller.sent) + 10)
    await caller.stop()
    await ws.send(stop_frame(sid, call))
    await closed_row(sid)
    (row,) = await settled_recordings(call)
    assert (row.status, row.source, row.content_type, row.channels, row.error) == ("completed", "local", "audio/wav", 2, "")
    assert row.file == f"{call.pk}/{row.pk}.wav"
    path = tmp_path / row.file
    assert row.size_bytes == path.stat().st_size
    left, right = read_wav(path)
    assert row.duration_seconds == pytest.approx(len(left) / 8000)
    assert row.completed_at is not None and (row.expires_at - row.completed_at).days == 7
    assert_caller_channel(left, caller)
    first = assert_gateway_channel(right, listener, caller)
    assert first >= 100  # spoken after the caller's tone, which the gateway's channel does not hold
    assert not right[: 100 * FRAME_BYTES].any()
    await listener.stop()


@live
async def test_a_call_not_recording_locally_writes_nothing(gateway, tmp_path):
    recording_config(gateway, tmp_path)
    call = await new_call(record_local=False)
    ws, sid = await open_stream(gateway, call)
    for n in range(5):
        await ws.send(media_frame(sid, sequence=n + 2))
    await ws.send(stop_frame(sid, call))
    await closed_row(sid)
    assert await recordings_of(call) == [] and not any(tmp_path.iterdir())


@live
async def test_an_unwritable_directory_fails_the_recording_not_the_call(gateway, tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    recording_config(gateway, blocker)
    call = await new_call()
    caplog.set_level(logging.INFO, logger="calls")
    ws, sid = await open_stream(gateway, call)
    listener = Listener(ws, echo=True)
    caller = PacedCaller(ws, sid)
    (row,) = await settled_recordings(call)
    assert row.status == "failed" and "Not a directory" in row.error and str(blocker) in row.error
    outcome = await asyncio.wait_for(
        sync_to_async(call_speak, thread_sensitive=False)(call_id=str(call.pk), text="Still talking."), 30)
    assert outcome == "played" and listener.audio()  # the call goes on
    await caller.stop()
    await ws.send(stop_frame(sid, call))
    stream = await closed_row(sid)
    assert stream.close_reason == "stop"
    (row,) = await recordings_of(call)
    assert row.status == "failed" and row.completed_at is not None  # the stream's end changed nothing
    warnings = [r.getMessage() for r in records_of(caplog, "calls.streams.recording", logging.WARNING)]
    assert any("local recording failed" in line and "Not a directory" in line for line in warnings), warnings
    await listener.stop()


@live
async def test_a_reconnect_starts_a_second_recording_and_an_abrupt_close_still_completes_it(gateway, tmp_path):
    recording_config(gateway, tmp_path)
    call = await new_call()
    ws, sid = await open_stream(gateway, call)
    caller = PacedCaller(ws, sid, talk=talking(0, 10))
    await caller.until(50)
    await caller.stop()
    ws2, sid2 = await open_stream(gateway, call)  # the carrier reconnects: the first stream is replaced
    caller2 = PacedCaller(ws2, sid2, talk=talking(5, 10, hz=880.0))
    await caller2.until(30)
    await caller2.stop()
    ws2.transport.abort()  # no stop, no close frame: the connection just drops
    await closed_row(sid)
    await closed_row(sid2)
    first, second = await settled_recordings(call, 2)
    assert first.status == second.status == "completed" and first.file != second.file
    for row, sender in ((first, caller), (second, caller2)):
        left, right = read_wav(tmp_path / row.file)
        assert_caller_channel(left, sender, all_frames=False)
        assert not right.any() and row.duration_seconds == len(left) / 8000



# --- a process that died while recording ----------------------------------------------------------


@pytest.mark.django_db
def test_recordings_a_dead_process_left_in_progress_are_settled_from_their_files(configure, tmp_path):
    import uuid
    from datetime import timedelta

    from calls.clock import now
    from calls.models import MediaStream
    from calls.services import local_recordings_reap

    configure({"provider": "mock", "recording": {"local": True, "directory": str(tmp_path), "retentionDays": 3}})
    at = now()

    def recording(*, stream_closed, written: bool) -> Recording:
        call = Call.objects.create(provider="mock", direction="inbound", state="completed", from_number="+15550100001",
                                   to_number="+15550100000", record_local=True)
        MediaStream.objects.create(call=call, stream_id=uuid.uuid4().hex, carrier="mock",
                                   opened_at=at - timedelta(minutes=5), closed_at=stream_closed)
        row = Recording.objects.create(call=call, source="local", file=f"{call.pk}/{uuid.uuid4()}.wav",
                                       content_type="audio/wav", channels=2, started_at=at - timedelta(minutes=5))
        if written:  # as the writer leaves it when the process dies: two chunks, never closed
            wav = WavFile(tmp_path / row.file)
            wav.open()
            wav.append(tone(1000), tone(1000))
            wav.append(tone(1000), tone(1000))
        return row

    kept = recording(stream_closed=at - timedelta(minutes=2), written=True)
    lost = recording(stream_closed=at - timedelta(minutes=2), written=False)
    live_stream = recording(stream_closed=None, written=True)  # its stream is open: still recording
    just_ended = recording(stream_closed=at - timedelta(seconds=5), written=True)  # finishing in its process
    assert local_recordings_reap(at=at) == 2
    kept.refresh_from_db()
    assert (kept.status, kept.duration_seconds, kept.size_bytes) == ("completed", 2.0, 44 + 16000 * 4)
    assert "stopped while recording" in kept.error and (kept.expires_at - kept.completed_at).days == 3
    lost.refresh_from_db()
    assert lost.status == "failed" and "cannot be read" in lost.error
    for row in (live_stream, just_ended):
        row.refresh_from_db()
        assert row.status == "in-progress"
    assert local_recordings_reap(at=at) == 0  # settled once
