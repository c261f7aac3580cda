"""glibc malloc settings for the serving process (core/malloc.py)."""
from __future__ import annotations

import pytest

from core import malloc


class FakeLibc:
    def __init__(self, answer: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.answer = answer

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return self.answer


@pytest.fixture
def libc(monkeypatch):
    fake = FakeLibc()
    monkeypatch.setattr(malloc.ctypes, "CDLL", lambda name: fake)
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    return fake


def test_caps_arenas_and_fixes_the_mmap_threshold(libc):
    assert malloc.tune() is True
    assert libc.calls == [(malloc.M_ARENA_MAX, 2), (malloc.M_MMAP_THRESHOLD, 128 * 1024)]


def test_the_environment_wins(libc, monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert malloc.tune() is True
    assert libc.calls == [(malloc.M_MMAP_THRESHOLD, 128 * 1024)]


def test_a_refused_setting_is_reported(libc):
    libc.answer = 0
    assert malloc.tune() is False


def test_without_glibc_nothing_happens(monkeypatch):
    monkeypatch.setattr(malloc.ctypes.util, "find_library", lambda name: None)
    assert malloc.tune() is False

    class NoMallopt:
        pass

    monkeypatch.setattr(malloc.ctypes.util, "find_library", lambda name: "libc.so")
    monkeypatch.setattr(malloc.ctypes, "CDLL", lambda name: NoMallopt())
    assert malloc.tune() is False


def test_the_real_libc_accepts_them():
    assert malloc.tune() is True  # glibc (Linux) is where the gateway runs
