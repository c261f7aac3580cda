"""Redis going away under the channel layer and the Celery broker: commands fail within their bounds and say so; streams rejoin their groups.

Each test runs its own redis-server (tests/private_redis.py), stopped (SIGKILL: connections refused)
or paused (SIGSTOP: connections accepted, nothing answered) around the operation, so they run in
every mode and never touch the machine's Redis.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.test import override_settings

from calls.streams import commands, outage
from tests.logs import records_of
from tests.private_redis import PrivateRedis
from tests.waiting import await_until

# A failed command is answered within its own bound plus this much (a busy machine, a thread hop).
SLACK = 5.0


@pytest.fixture
def redis_server(tmp_path):
    with PrivateRedis(tmp_path) as server:
        yield server


@pytest.fixture
def redis_layer(redis_server):
    """The project's channel-layer settings, pointed at the private server."""
    layers = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                         "CONFIG": {"hosts": [{"address": redis_server.url, "socket_timeout": 30,
                                               "socket_connect_timeout": 2}]}}}
    with override_settings(CHANNEL_LAYERS=layers):
        yield redis_server


def timed(func, *args, **kwargs):
    """(seconds, result or the exception raised); run on a thread so a hang fails the test instead of stalling it."""
    box: dict = {}

    def run() -> None:
        started = time.monotonic()
        try:
            box["result"] = func(*args, **kwargs)
        except Exception as exc:
            box["result"] = exc
        box["took"] = time.monotonic() - started

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), f"{func.__name__} still waiting after 60 s"
    return box["took"], box["result"]


# --- commands to streams -----------------------------------------------------------------------------


@pytest.mark.parametrize("outage_kind", ["stopped", "paused"])
def test_speaking_to_a_stream_fails_within_its_bound_naming_redis(redis_layer, outage_kind):
    commands.stream_send("warm-up", {"type": "stream.clear"})  # a connection made while Redis was up
    redis_layer.stop() if outage_kind == "stopped" else redis_layer.pause()
    took, error = timed(commands.stream_enqueue, "call-1", "Hello", None)
    assert isinstance(error, commands.ChannelLayerUnavailable), error
    assert isinstance(error, commands.StreamUnavailable)  # callers that handle a missing stream handle this too
    assert "channel layer (Redis)" in str(error)
    assert took < commands.ACCEPT_TIMEOUT + 1 + SLACK
    if outage_kind == "stopped":
        assert "unreachable" in str(error) and took < SLACK  # a refused connection fails at once
    else:
        assert "did not answer within" in str(error)
    redis_layer.resume()


@pytest.mark.parametrize("outage_kind", ["stopped", "paused"])
def test_a_fire_and_forget_command_is_not_sent_and_says_why(redis_layer, outage_kind, caplog):
    redis_layer.stop() if outage_kind == "stopped" else redis_layer.pause()
    with caplog.at_level(logging.WARNING, logger="calls.streams.commands"):
        took, sent = timed(commands.stream_send, "call-2", {"type": "stream.close", "reason": "call ended"})
    assert sent is False and took < commands.ACCEPT_TIMEOUT + SLACK
    [line] = records_of(caplog, "calls.streams.commands")
    assert "stream.close" in line.getMessage() and "channel layer (Redis)" in line.getMessage()
    redis_layer.resume()


def test_a_playback_outcome_lost_with_redis_is_a_failure_naming_it(redis_layer):
    redis_layer.stop()
    took, result = timed(commands.stream_outcome, "voicecall.reply.lost", timeout=30)
    assert result["outcome"] == "failed" and "channel layer (Redis)" in result["error"], result
    assert took < SLACK


def test_commands_reach_streams_again_once_redis_is_back(redis_layer):
    redis_layer.restart()
    # No stream: the command goes out and nobody accepts it (not a layer failure).
    took, error = timed(commands.stream_enqueue, "call-3", "Hello", None)
    assert type(error) is commands.StreamUnavailable and "no media stream accepted" in str(error)


# --- streams rejoin their calls' groups ------------------------------------------------------------


async def group_members(server: PrivateRedis, layer, group: str) -> set[str]:
    import redis.asyncio as aioredis

    client = aioredis.Redis(port=server.port, socket_connect_timeout=1, socket_timeout=1)
    try:
        return {member.decode() for member in await client.zrange(layer._group_key(group), 0, -1)}
    except aioredis.RedisError:
        return set()
    finally:
        await client.aclose()


async def test_a_restarted_redis_gets_every_streams_group_back(redis_server, caplog):
    from channels_redis.core import RedisChannelLayer

    layer = RedisChannelLayer(hosts=[{"address": redis_server.url, "socket_connect_timeout": 2}])
    keeper = outage.GroupKeeper()
    kept, gone = await layer.new_channel(), await layer.new_channel()
    for channel, group in ((kept, "voicecall.call.kept"), (gone, "voicecall.call.gone")):
        keeper.joined(channel, group)
        await layer.group_add(group, channel)

    redis_server.stop()
    with caplog.at_level(logging.WARNING, logger="calls.streams.outage"):
        with pytest.raises(outage.layer_errors()) as failure:
            await layer.receive(kept)
        keeper.noticed(layer, failure.value)
        keeper.noticed(layer, failure.value)  # every stream notices: said once, one probe
        keeper.left(gone)  # a stream that ends during the outage is not put back
        await sync_to_async(redis_server.start)()  # empty: a restarted Redis keeps nothing
        await await_until(lambda: group_members(redis_server, layer, "voicecall.call.kept"), "the group joined again",
                          timeout=10)
        await keeper.wait(10)  # returns once the layer is back
    assert await group_members(redis_server, layer, "voicecall.call.gone") == set()
    lines = [r.getMessage() for r in records_of(caplog, "calls.streams.outage")]
    assert len(lines) == 2, lines
    assert "unreachable" in lines[0] and "media streams go on" in lines[0]
    assert "answers again" in lines[1] and "1 media stream(s)" in lines[1]
    await layer.close_pools()


# --- Celery publishes ------------------------------------------------------------------------------


def project_celery(broker_url: str):
    """A Celery app with the project's broker settings, on the given broker."""
    from celery import Celery

    app = Celery("outage-test", broker=broker_url, set_as_current=False)
    app.conf.update(
        broker_connection_timeout=settings.CELERY_BROKER_CONNECTION_TIMEOUT,
        broker_transport_options=settings.CELERY_BROKER_TRANSPORT_OPTIONS,
        task_publish_retry_policy=settings.CELERY_TASK_PUBLISH_RETRY_POLICY,
    )
    return app


@pytest.mark.parametrize("outage_kind", ["stopped", "paused"])
def test_a_publish_to_a_lost_broker_fails_within_a_bound(redis_server, outage_kind):
    """kombu's defaults wait forever for a stalled Redis to answer a publish; the settings bound it."""
    from calls.background import broker_errors

    app = project_celery(redis_server.url)
    app.send_task("calls.run_job", args=("calls.replay_trim", {}))  # the connection is up and pooled
    redis_server.stop() if outage_kind == "stopped" else redis_server.pause()
    took, error = timed(app.send_task, "calls.run_job", args=("calls.replay_trim", {}))
    assert isinstance(error, broker_errors()), error
    options = settings.CELERY_BROKER_TRANSPORT_OPTIONS
    tries = settings.CELERY_TASK_PUBLISH_RETRY_POLICY["max_retries"] + 1
    assert took < tries * (options["socket_timeout"] + options["socket_connect_timeout"]) + SLACK
    redis_server.resume()
    app.close()


@pytest.mark.django_db(transaction=True)
def test_a_job_the_broker_refuses_is_logged_and_the_callers_work_stands(monkeypatch, caplog):
    from django.db import transaction
    from kombu.exceptions import OperationalError

    from calls import background
    from calls.clock import now
    from calls.tasks import run_job_task, sweep_deadlines_task

    def refused(*args, **kwargs):
        raise OperationalError("Error 111 connecting to 127.0.0.1:6399. Connection refused.")

    monkeypatch.setattr(run_job_task, "delay", refused)
    monkeypatch.setattr(sweep_deadlines_task, "apply_async", refused)
    background.set_mode("celery")
    try:
        with caplog.at_level(logging.WARNING, logger="calls.background"), transaction.atomic():
            background.submit("calls.replay_trim")
            background.deadline_set(now())
        # The commit's hooks raised nothing into the service that committed (its rows stand).
    finally:
        background.set_mode(None)
    lines = [r.getMessage() for r in records_of(caplog, "calls.background")]
    assert any("calls.replay_trim" in line and "not queued" in line and "Redis" in line and "resume sweep" in line
               for line in lines), lines
    assert any("periodic sweep" in line for line in lines), lines
