"""Media streams ride out an outage of the channel layer (Redis): what counts as one, and the calls' groups joined again once it is back.

A stream's audio never touches the channel layer; only commands to it (speak, clear, close) do.
So when Redis goes away the streams go on, commands fail (calls/streams/commands.py says so), and
when it comes back every stream of this process must be in its call's group again: a restarted
Redis has lost the groups, and a stream that is in none is out of reach of every command.
"""
from __future__ import annotations

import asyncio
import logging
import sys
import time

log = logging.getLogger(__name__)

# A group operation of the channel layer that takes longer than this is treated as an outage: the
# stream it was for goes on without it (Redis answers in milliseconds when it is there).
LAYER_TIMEOUT = 2.0
# How often the layer is tried again while it is down (doubling up to the maximum): the most a
# command waits, once Redis is back, before it reaches the streams again.
RETRY_FIRST, RETRY_MAX = 0.25, 1.0
# A stream whose command reader failed reads again when the probe finds the layer back, or after this.
CONSUMER_RETRY = 10.0
PROBE_GROUP = "voicecall.layer-probe"


def layer_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean the channel layer is unreachable, not that the code using it is wrong.

    OSError covers refused connections and TimeoutError (a stalled server); Redis's own errors are
    added once redis-py is loaded (channels-redis loads it). Nothing is imported here: this runs on
    the event loop whenever an exception, a cancellation included, leaves a stream's reader.
    """
    redis_exceptions = sys.modules.get("redis.exceptions")
    if redis_exceptions is None:  # not loaded: no Redis error can have been raised
        return (OSError,)
    return (OSError, redis_exceptions.RedisError)


def describe(exc: BaseException) -> str:
    """An outage as one line: the layer, then what the client said."""
    if isinstance(exc, TimeoutError) and not str(exc):
        return "the channel layer (Redis) did not answer"
    return f"the channel layer (Redis) is unreachable: {type(exc).__name__}: {exc}"


class GroupKeeper:
    """The call groups this process's streams are in, and the task that joins them again after an outage."""

    def __init__(self) -> None:
        self.members: dict[str, str] = {}  # the stream's channel -> its call's group
        self.down_since: float | None = None
        self.task: asyncio.Task | None = None
        self.back: asyncio.Event | None = None  # set when the layer answers again

    def joined(self, channel: str, group: str) -> None:
        self.members[channel] = group

    def left(self, channel: str) -> None:
        self.members.pop(channel, None)

    def noticed(self, layer, exc: BaseException) -> None:
        """The layer failed a stream's operation: say so once per outage, and keep trying to join the groups again.

        Called on the event loop that runs the streams.
        """
        if self.down_since is None:
            self.down_since = time.monotonic()
            self.back = asyncio.Event()
            log.warning("%s; media streams go on, commands to them fail until it is back", describe(exc))
        loop = asyncio.get_running_loop()
        if self.task is None or self.task.done() or self.task.get_loop() is not loop:
            self.task = asyncio.ensure_future(self._rejoin(layer))

    async def wait(self, seconds: float) -> None:
        """After a failed operation: wait until the layer answers again, or `seconds` at most."""
        back = self.back
        if back is None:  # back already
            await asyncio.sleep(RETRY_FIRST)
            return
        try:
            await asyncio.wait_for(back.wait(), seconds)
        except TimeoutError:
            pass

    async def _rejoin(self, layer) -> None:
        delay = RETRY_FIRST
        while True:
            await asyncio.sleep(delay)
            try:
                async with asyncio.timeout(LAYER_TIMEOUT):
                    # A round trip even when no stream is left, so "back" is only said when it is.
                    await layer.group_discard(PROBE_GROUP, f"{PROBE_GROUP}.none")
                    members = list(self.members.items())
                    for channel, group in members:
                        await layer.group_add(group, channel)
                    for channel, group in members:
                        if channel not in self.members:  # it closed meanwhile: not left behind in the group
                            await layer.group_discard(group, channel)
            except layer_errors():
                delay = min(delay * 2, RETRY_MAX)
                continue
            down = time.monotonic() - (self.down_since or time.monotonic())
            self.down_since = None
            if self.back is not None:
                self.back.set()
                self.back = None
            log.warning("the channel layer (Redis) answers again after %.1f s; %d media stream(s) joined their "
                        "calls' groups again", down, len(members))
            return


def retrieve_failures(layer) -> None:
    """channels-redis removes each received message from its backup queue in a task nobody awaits; when Redis
    goes away under it, asyncio logs "Task exception was never retrieved" with a traceback. It is expected
    in an outage (the noticed warning says so): mark those failures as seen."""
    loop = asyncio.get_running_loop()
    for cleaner in list(getattr(layer, "receive_cleaners", ())):
        if cleaner.get_loop() is loop:  # the layer is shared by threads, each with its own loop
            cleaner.add_done_callback(_seen)


def _seen(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()


groups = GroupKeeper()
