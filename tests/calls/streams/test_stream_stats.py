"""A stream's turn timing: the whole turn, and the gateway's own share of it without the TTS service's wait."""
from __future__ import annotations

from calls.streams.stats import StreamStats


def test_a_turn_is_timed_from_the_final_transcript_to_the_first_reply_frame():
    stats = StreamStats()
    stats.turn_heard(10.000)
    stats.tts_waited(0.030)  # the speech service took 30 ms to send its first audio
    stats.reply_audio_sent(10.050)
    stats.reply_audio_sent(10.070)  # later frames of the same reply end nothing
    summary = stats.as_dict()
    assert summary["turnLatencyMs"]["n"] == 1 and summary["turnLatencyMs"]["max"] == 50.0
    assert summary["turnOwnLatencyMs"]["n"] == 1 and summary["turnOwnLatencyMs"]["max"] == 20.0


def test_speech_without_a_turn_before_it_is_not_a_turn():
    stats = StreamStats()
    stats.tts_waited(0.5)  # the greeting: no caller speech before it
    stats.reply_audio_sent(3.0)
    assert stats.as_dict()["turnLatencyMs"]["n"] == 0
    stats.turn_heard(4.0)  # a new turn starts with no wait carried over from the greeting
    stats.reply_audio_sent(4.012)
    assert round(stats.as_dict()["turnOwnLatencyMs"]["max"], 3) == 12.0
