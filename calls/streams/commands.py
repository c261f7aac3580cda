"""Commands to a call's media stream from any process, through the channel layer (group per call).

Service code runs in worker threads, Celery workers or CLI processes; the stream lives in
whichever gateway process the carrier's WebSocket landed on. Every stream joins the group
`call_group(call_id)`, so a group message reaches it wherever it is. `speak` waits for the
stream to accept (proof that one is alive) and then for the playback's outcome on a reply channel.
When the layer (Redis) fails or stalls, a command fails within its bound with ChannelLayerUnavailable,
which says so; it never waits on Redis longer than that.

The in-memory layer (embedded mode) is bound to the gateway's event loop (`Gateway.loop`), so
from other threads its coroutines run on that loop; with Redis any thread may use the layer directly.
"""
from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer

from ..gateway import get_gateway
from .outage import LAYER_TIMEOUT, describe, layer_errors, retrieve_failures

log = logging.getLogger(__name__)

ACCEPT_TIMEOUT = 3.0


class StreamUnavailable(Exception):
    """No live media stream answered for this call."""


class ChannelLayerUnavailable(StreamUnavailable):
    """The channel layer (Redis) failed or did not answer in time: no command reaches any stream."""


class PlaybackRefused(Exception):
    """The stream answered but would not queue the playback (queue full, closing); says why."""


def call_group(call_id: str) -> str:
    return f"voicecall.call.{call_id}"


def _run(coro_factory, timeout: float | None = None):
    """Run a channel-layer coroutine from a sync thread, on the right loop for the layer in use."""
    layer = get_channel_layer()
    if isinstance(layer, InMemoryChannelLayer):
        loop = get_gateway().loop
        if loop is None or loop.is_closed():
            raise StreamUnavailable("no media streams run in this process")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise RuntimeError("stream commands must not be called on the event loop thread")
        future = asyncio.run_coroutine_threadsafe(coro_factory(layer), loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise
    async def bounded(layer_):
        try:
            async with asyncio.timeout(timeout):
                return await coro_factory(layer_)
        except TimeoutError:
            raise  # the whole command took too long; its caller says what that means
        except layer_errors() as exc:
            raise ChannelLayerUnavailable(describe(exc)) from exc
        finally:
            # channels_redis removes a received message from its backup queue in a task of its own;
            # this loop ends when we return, and a cancelled clean-up hands the same message to the
            # next receive on the channel. Let those tasks finish first (bounded: Redis may be stalled).
            loop = asyncio.get_running_loop()
            # The layer is shared by threads, each with its own loop: only this loop's tasks.
            cleaners = [task for task in list(getattr(layer_, "receive_cleaners", ())) if task.get_loop() is loop]
            if cleaners:
                retrieve_failures(layer_)
                await asyncio.wait(cleaners, timeout=LAYER_TIMEOUT)

    return async_to_sync(bounded)(layer)


def _layer_name() -> str:
    return "the channel layer" if isinstance(get_channel_layer(), InMemoryChannelLayer) else "the channel layer (Redis)"


def stream_send(call_id: str, message: dict[str, Any]) -> bool:
    """Fire-and-forget a command to the call's stream (clear, close); False if it could not be sent."""
    try:
        _run(lambda layer: layer.group_send(call_group(call_id), message), timeout=ACCEPT_TIMEOUT)
        return True
    except ChannelLayerUnavailable as exc:
        log.warning("stream command %s for %s not sent: %s", message.get("type"), call_id, exc)
        return False
    except TimeoutError:
        log.warning("stream command %s for %s not sent: %s did not answer within %g s", message.get("type"), call_id,
                    _layer_name(), ACCEPT_TIMEOUT)
        return False
    except StreamUnavailable:
        return False
    except Exception as exc:
        log.info("stream command %s for %s not sent: %s", message.get("type"), call_id, exc)
        return False


def stream_enqueue(call_id: str, text: str, voice: str | None, *, interruptible: bool = True,
                   group: str | None = None) -> str:
    """Queue `text` on the call's stream; returns the reply channel its outcome will arrive on.

    Returns once the stream accepted it, so several calls from one thread keep their order.
    Raises StreamUnavailable when no stream answers within ACCEPT_TIMEOUT, PlaybackRefused when
    the stream will not queue it.
    """

    async def offer(layer):
        # A plain channel, not a process-local "!" one: the Redis layer lets only one event loop
        # receive its process-local channels, and the stream's consumer loop already does.
        reply = f"voicecall.reply.{uuid.uuid4().hex}"
        await layer.group_send(call_group(call_id), {
            "type": "stream.speak", "text": text, "voice": voice, "interruptible": interruptible, "reply_to": reply,
            "group": group,
        })
        try:
            async with asyncio.timeout(ACCEPT_TIMEOUT):
                accepted = await layer.receive(reply)
        except TimeoutError:
            raise StreamUnavailable("no media stream accepted the playback") from None
        if accepted.get("type") != "stream.accepted":
            raise PlaybackRefused(accepted.get("error") or "the media stream refused the playback")
        return reply

    try:
        return _run(offer, timeout=ACCEPT_TIMEOUT + 1)
    except TimeoutError:
        # The acceptance has its own shorter wait: only the layer itself can have taken this long.
        raise ChannelLayerUnavailable(f"{_layer_name()} did not answer within {ACCEPT_TIMEOUT + 1:g} s") from None


def stream_outcome(reply: str, *, timeout: float) -> dict[str, Any]:
    """Wait for the playback outcome of a stream_enqueue (see Playback results)."""

    async def receive(layer):
        while True:
            message = await layer.receive(reply)
            if message.get("type") != "stream.accepted":  # a redelivered acceptance is not the outcome
                return message

    try:
        return _run(receive, timeout=timeout)
    except TimeoutError:
        return {"type": "stream.result", "outcome": "failed", "error": f"playback did not finish within {timeout:.0f} s"}
    except ChannelLayerUnavailable as exc:
        return {"type": "stream.result", "outcome": "failed", "error": f"playback outcome lost: {exc}"}


def stream_speak(call_id: str, text: str, voice: str | None, *, interruptible: bool = True, timeout: float) -> dict[str, Any]:
    """Play `text` on the call's stream and wait for the outcome message (see Playback results).

    Raises StreamUnavailable when no stream accepts within ACCEPT_TIMEOUT.
    """
    try:
        reply = stream_enqueue(call_id, text, voice, interruptible=interruptible)
    except PlaybackRefused as exc:
        return {"type": "stream.result", "outcome": "failed", "error": str(exc)}
    return stream_outcome(reply, timeout=timeout)


def stream_inject(call_id: str, text: str) -> bool:
    """Have the call's realtime model say `text`; False when no live realtime stream accepted it."""

    async def offer(layer):
        reply = f"voicecall.reply.{uuid.uuid4().hex}"
        await layer.group_send(call_group(call_id), {"type": "stream.inject", "text": text, "reply_to": reply})
        try:
            async with asyncio.timeout(ACCEPT_TIMEOUT):
                accepted = await layer.receive(reply)
        except TimeoutError:
            return False
        return accepted.get("type") == "stream.accepted"

    try:
        return bool(_run(offer, timeout=ACCEPT_TIMEOUT + 1))
    except StreamUnavailable:
        return False
    except Exception as exc:
        log.info("speech injection for %s not sent: %s", call_id, exc)
        return False
