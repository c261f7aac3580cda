"""The forced consult's timing (consultPolicy always): pure bookkeeping, times passed in."""
from __future__ import annotations

from calls.realtime.forced import DEDUPE_WINDOW_S, FORCED_DELAY_S, MAX_ANSWER_CHARS, ForcedConsult, forced_answer_text


def test_due_200_ms_after_a_final_transcript_without_a_consult():
    forced = ForcedConsult()
    assert not forced.due(0.0) and forced.delay_left(0.0) is None
    forced.on_final_transcript("What time do you close?", 10.0)
    assert abs(forced.delay_left(10.05) - 0.15) < 1e-9
    assert not forced.due(10.0 + FORCED_DELAY_S - 0.001)
    assert forced.due(10.0 + FORCED_DELAY_S)
    assert forced.take(10.3) == "What time do you close?"
    assert forced.take(10.4) is None  # once


def test_the_models_own_consult_cancels_it():
    forced = ForcedConsult()
    forced.on_final_transcript("What time do you close?", 10.0)
    forced.on_consult_called(10.1)
    assert not forced.due(10.3) and forced.take(10.3) is None


def test_a_consult_just_before_the_late_transcript_covers_it():
    forced = ForcedConsult()
    forced.on_consult_called(9.0)  # the model acted on the audio before the transcript arrived
    forced.on_final_transcript("What time do you close?", 10.0)
    assert forced.take(10.5) is None
    # outside the window a new utterance is owed a consult again
    forced.on_final_transcript("And on Sunday?", 9.0 + DEDUPE_WINDOW_S + 1)
    assert forced.take(9.0 + DEDUPE_WINDOW_S + 1.2) == "And on Sunday?"


def test_the_same_words_are_not_forced_twice_within_the_window():
    forced = ForcedConsult()
    forced.on_final_transcript("Close?", 10.0)
    assert forced.take(10.2) == "Close?"
    forced.on_final_transcript("Close?", 10.5)
    assert forced.take(10.8) is None
    forced.on_final_transcript("Something else", 11.0)
    assert forced.take(11.2) == "Something else"
    forced.on_final_transcript("Close?", 13.0)
    assert forced.take(13.2) == "Close?"


def test_pieces_before_the_consult_are_joined_and_blank_text_is_ignored():
    forced = ForcedConsult()
    forced.on_final_transcript("   ", 9.0)
    assert forced.delay_left(9.0) is None
    forced.on_final_transcript("What time", 10.0)
    forced.on_final_transcript("do you close?", 10.1)
    assert forced.take(10.2) == "What time do you close?"  # timed from the first piece


def test_forced_answer_text_is_capped():
    assert forced_answer_text("  We   open at ten. ") == "We open at ten."
    long = forced_answer_text("word " * 1000)
    assert len(long) <= MAX_ANSWER_CHARS and long.endswith("word…")
    assert len(forced_answer_text("x" * 5000)) == MAX_ANSWER_CHARS
