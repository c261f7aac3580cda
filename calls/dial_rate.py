"""Outbound dials per second per carrier account: each dial reserves the next free slot before it asks the carrier.

A slot is a moment: the first dial of an idle account goes at once, each next one 1/callsPerSecond
after the one before. Reserving is atomic, so dials in many processes never share a slot: through
Redis when the distributed mode has it (one Lua script on Redis's own clock, so the machines' clocks
need not agree), in this process otherwise (embedded mode: one gateway per database).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from django.conf import settings

if TYPE_CHECKING:
    from core.config import VoiceCallConfig
    from providers.carriers.base import CarrierBackend

# The reservation: the key holds the next free moment (microseconds, Redis TIME); a caller takes
# max(now, next) and moves next on by one interval. Returns how long the caller waits (microseconds).
RESERVE_SCRIPT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local interval = tonumber(ARGV[1])
local free = tonumber(redis.call('GET', KEYS[1]) or '0')
local slot = math.max(now, free)
redis.call('SET', KEYS[1], string.format('%d', slot + interval), 'PX', math.floor((slot + interval - now) / 1000) + 1000)
return slot - now
"""
KEY_PREFIX = "voicecall:dial-rate:"


def calls_per_second(config: VoiceCallConfig, carrier: str) -> float | None:
    """The configured limit of this carrier (its section's callsPerSecond or the default); None: unlimited."""
    section = getattr(config, carrier, None)
    if section is not None:
        return section.calls_per_second
    defaults = {"twilio": 1.0, "telnyx": 1.0, "plivo": 2.0}
    return defaults.get(carrier)


def account_key(carrier: CarrierBackend) -> str:
    """Which limit a dial counts against: the carrier and its account (SID, connection id, auth id)."""
    return f"{carrier.name}:{carrier.dial_account() or '-'}"


class LocalSlots:
    """Slots of this process only (embedded mode: the one process that dials)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._next: dict[str, float] = {}
        self._lock = threading.Lock()

    def reserve(self, key: str, interval: float) -> float:
        """Seconds to wait before the reserved slot."""
        with self._lock:
            now = self._clock()
            slot = max(now, self._next.get(key, 0.0))
            self._next[key] = slot + interval
            return slot - now


class RedisSlots:
    """Slots shared by every process on the same Redis."""

    def __init__(self, url: str) -> None:
        import redis

        # Bounded: a dial waiting on a Redis that is away fails its try instead of hanging.
        self._client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._script = self._client.register_script(RESERVE_SCRIPT)

    def reserve(self, key: str, interval: float) -> float:
        waited = self._script(keys=[KEY_PREFIX + key], args=[int(interval * 1_000_000)])
        return int(waited) / 1_000_000


_slots: LocalSlots | RedisSlots | None = None
_slots_url: str | None = None
_slots_lock = threading.Lock()


def slots() -> LocalSlots | RedisSlots:
    """This process's slot book: Redis when settings.REDIS_URL is set, else local."""
    global _slots, _slots_url
    url = settings.REDIS_URL or ""
    with _slots_lock:
        if _slots is None or _slots_url != url:
            _slots = RedisSlots(url) if url else LocalSlots()
            _slots_url = url
        return _slots


def reset() -> None:
    """Forget this process's slot book (tests: each starts with idle accounts)."""
    global _slots, _slots_url
    with _slots_lock:
        _slots, _slots_url = None, None


def slot_wait(config: VoiceCallConfig, carrier: CarrierBackend, *, sleep: Callable[[float], None] = time.sleep) -> float:
    """Reserve this dial's slot and sleep until it comes; returns the seconds waited (0 when unlimited)."""
    limit = calls_per_second(config, carrier.name)
    if not limit:
        return 0.0
    delay = slots().reserve(account_key(carrier), 1.0 / limit)
    if delay > 0:
        sleep(delay)
    return max(0.0, delay)
