"""Rate-limited warnings: the first line of a kind is written, repeats within the window counted, then summed up."""
from __future__ import annotations

import logging
import re
import threading

import pytest

from calls import log_limit
from calls.log_limit import warn_limited
from tests.logs import records_of

LOGGER = "calls.test_log_limit"


@pytest.fixture
def clock(monkeypatch):
    """Monotonic time under the test's control."""
    now = [1000.0]
    monkeypatch.setattr(log_limit.time, "monotonic", lambda: now[0])
    return now


def lines(caplog) -> list[str]:
    return [record.getMessage() for record in records_of(caplog, LOGGER)]


def test_repeats_within_the_window_are_counted_and_summed_up_after_it(caplog, clock):
    log = logging.getLogger(LOGGER)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert warn_limited(log, "k", "hang-up of %s failed", "call-1", every=60) is True
        for index in range(2, 6):
            clock[0] += 10
            assert warn_limited(log, "k", "hang-up of %s failed", f"call-{index}", every=60) is False
        clock[0] += 30  # 70 s after the first line
        assert warn_limited(log, "k", "hang-up of %s failed", "call-6", every=60) is True
    first, second = lines(caplog)
    assert first == "hang-up of call-1 failed"
    assert re.fullmatch(r"hang-up of call-6 failed \(4 more like this since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\)", second)


def test_a_window_with_no_repeats_adds_nothing(caplog, clock):
    log = logging.getLogger(LOGGER)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        warn_limited(log, "k", "down", every=5)
        clock[0] += 6
        warn_limited(log, "k", "down", every=5)
    assert lines(caplog) == ["down", "down"]


def test_keys_are_limited_separately(caplog, clock):
    log = logging.getLogger(LOGGER)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        warn_limited(log, ("hangup", "ConnectError"), "a")
        warn_limited(log, ("hangup", "ReadTimeout"), "b")
        warn_limited(log, ("hangup", "ConnectError"), "a again")
    assert lines(caplog) == ["a", "b"]


def test_a_literal_percent_sign_survives_the_summary(caplog, clock):
    log = logging.getLogger(LOGGER)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        warn_limited(log, "k", "100% failed", every=1)
        warn_limited(log, "k", "100% failed", every=1)
        clock[0] += 2
        warn_limited(log, "k", "100% failed", every=1)
    assert lines(caplog)[1].startswith("100% failed (1 more like this since ")


def test_the_record_points_at_the_caller(caplog):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        warn_limited(logging.getLogger(LOGGER), "k", "here")
    assert records_of(caplog, LOGGER)[0].funcName == "test_the_record_points_at_the_caller"


def test_memory_is_bounded(monkeypatch, caplog):
    monkeypatch.setattr(log_limit, "MAX_KEYS", 10)
    log = logging.getLogger(LOGGER)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for index in range(100):
            warn_limited(log, index, "x")
    assert len(log_limit._windows) == 10
    assert 99 in log_limit._windows and 0 not in log_limit._windows


def test_many_threads_write_one_line(caplog):
    log = logging.getLogger(LOGGER)
    written = []
    start = threading.Barrier(16)

    def warn() -> None:
        start.wait()
        for _ in range(50):
            written.append(warn_limited(log, "shared", "carrier down"))

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        threads = [threading.Thread(target=warn) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert written.count(True) == 1 and len(written) == 800
    assert lines(caplog) == ["carrier down"]
    assert log_limit._windows["shared"].repeats == 799
