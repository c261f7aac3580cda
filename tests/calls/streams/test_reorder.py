"""The inbound reorder window: shuffled, duplicated and missing sequence numbers (Telnyx's media frames)."""
from __future__ import annotations

import random

import pytest

from calls.streams.reorder import RESTART_BEHIND, Reorder
from calls.streams.stats import StreamStats
from providers.carriers.media import StreamMedia
from providers.carriers.telnyx.media import TelnyxMediaCodec
from providers.carriers.twilio.media import TwilioMediaCodec


def frame(sequence: int | None) -> StreamMedia:
    return StreamMedia(b"\xff" * 160, sequence=sequence)


class Sink:
    def __init__(self, window: int = 4) -> None:
        self.stats = StreamStats()
        self.out: list[int | None] = []
        self.reorder = Reorder(window, lambda f: self.out.append(f.sequence), self.stats)

    def push(self, *sequences: int | None) -> list[int | None]:
        for sequence in sequences:
            self.reorder.push(frame(sequence))
        return self.out


def test_in_order_frames_pass_at_once():
    sink = Sink()
    for n in range(2, 200):
        sink.push(n)
        assert sink.out[-1] == n  # delivered by its own push: no latency added
    assert sink.stats.counters["reordered"] == sink.stats.counters["dropped"] == 0


def test_a_swapped_pair_comes_out_in_order():
    sink = Sink()
    assert sink.push(2, 4) == [2]  # 4 waits for 3
    assert sink.push(3) == [2, 3, 4]
    assert sink.stats.counters["reordered"] == 1
    assert sink.stats.counters["frames_missing"] == 0


def test_frames_shuffled_within_the_window_are_restored():
    rng = random.Random(17)
    sequences = list(range(2, 402))
    shuffled: list[int] = []
    for start in range(0, len(sequences), 4):  # every group of 4 in any order: never more than the window apart
        group = sequences[start:start + 4]
        rng.shuffle(group)
        shuffled += group
    sink = Sink(window=4)
    sink.push(*shuffled)
    sink.reorder.flush()
    assert sink.out == sequences
    assert sink.stats.counters["frames_missing"] == 0 and sink.stats.counters["dropped"] == 0


def test_duplicates_are_dropped_whether_delivered_or_waiting():
    sink = Sink()
    sink.push(2, 3, 3, 2, 5, 5)  # 3 and 2 again after delivery; 5 again while it waits for 4
    assert sink.push(4) == [2, 3, 4, 5]
    assert sink.stats.counters["dropped_duplicate"] == 3
    assert sink.stats.counters["dropped"] == 3


def test_a_gap_is_skipped_once_the_window_is_full():
    sink = Sink(window=4)
    sink.push(2)  # 3 never comes
    assert sink.push(4, 5, 6, 7) == [2]  # 4 frames held: the window is full, 3 may still come
    assert sink.push(8) == [2, 4, 5, 6, 7, 8]  # one more: 3 is given up
    assert sink.stats.counters["frames_missing"] == 1
    assert sink.push(3) == [2, 4, 5, 6, 7, 8]  # too late now: dropped, not played out of order
    assert sink.stats.counters["dropped_late"] == 1


def test_a_long_gap_is_skipped_in_one_step():
    sink = Sink(window=3)
    sink.push(2, 3)
    assert sink.push(10_000) == [2, 3]
    assert sink.reorder.next == 10_000 - 3
    assert sink.push(9_997, 9_998, 9_999) == [2, 3, 9_997, 9_998, 9_999, 10_000]
    assert sink.stats.counters["frames_missing"] == 10_000 - 3 - 4


def test_a_restarted_count_starts_a_new_order():
    sink = Sink()
    sink.push(1000, 1002)
    sink.push(1)  # far behind: the carrier counts again from 1
    sink.push(2)
    assert sink.out == [1000, 1002, 1, 2]
    assert 1000 - 1 > RESTART_BEHIND


def test_flush_delivers_what_waits_in_order():
    sink = Sink()
    sink.push(2, 5, 4)
    sink.reorder.flush()
    assert sink.out == [2, 4, 5]
    assert sink.stats.counters["frames_missing"] == 1  # 3


def test_frames_without_a_number_pass_as_they_come():
    sink = Sink()
    assert sink.push(None, 7, None) == [None, 7, None]


def test_the_window_is_at_least_one_frame():
    with pytest.raises(ValueError):
        Reorder(0, lambda f: None, StreamStats())


def test_telnyx_streams_reorder_and_twilio_streams_do_not():
    assert 3 <= TelnyxMediaCodec.reorder_window <= 5
    assert TwilioMediaCodec.reorder_window == 0


def test_numbers_other_messages_used_are_not_gaps():
    sink = Sink()
    sink.push(2, 3)
    sink.reorder.skip(4)  # a mark echo took 4
    assert sink.push(5) == [2, 3, 5]  # passed at once: nothing waits for 4
    sink.push(7)
    sink.reorder.skip(6)  # a DTMF message took 6, after 7 came
    assert sink.out == [2, 3, 5, 7]
    assert sink.stats.counters["frames_missing"] == 0 and sink.stats.counters["dropped"] == 0
    sink.reorder.skip(3)  # a number already behind: nothing to do
    sink.reorder.skip(10)  # ahead of the media: held, never delivered
    assert sink.push(8, 9, 11) == [2, 3, 5, 7, 8, 9, 11]


def test_a_telnyx_stream_skips_the_numbers_of_its_marks():
    from calls.streams.consumer import CarrierStreamConsumer

    consumer = CarrierStreamConsumer()
    consumer.codec = TelnyxMediaCodec()
    sink = Sink()
    consumer.reorder = sink.reorder
    sink.push(1)
    consumer._sequence_used({"event": "mark", "sequence_number": "2", "mark": {"name": "m"}})
    consumer._sequence_used({"event": "mark", "sequence_number": 99999999999999999999})  # out of range: ignored
    consumer._sequence_used({"event": "dtmf", "dtmf": {"digit": "1"}})  # no number: nothing
    assert sink.reorder.next == 3
    assert sink.push(3) == [1, 3]
