"""Gateway nodes: heartbeats, the sweep that declares a silent node dead and closes its media streams, restore and stop."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from datetime import timedelta

import pytest

from calls.gateway import get_gateway
from calls.models import Call, CallEvent, GatewayNode, MediaStream
from calls.nodes import NodeHeartbeat
from calls.restoring import DONE, Restore
from calls.services import (
    dead_nodes_sweep, deadlines_sweep, node_heartbeat, node_register, node_stop, nodes_gone, stream_open,
)
from calls.documents import stream_token
from tests.calls.test_sweeps import make_call
from tests.fake_clock import fake_clock
from tests.paths import ROOT
from tests.waiting import stays, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

HEARTBEAT, TIMEOUT = 5.0, 15.0


@pytest.fixture(autouse=True)
def timings(settings):
    settings.VOICECALL_NODE_HEARTBEAT_SECONDS = HEARTBEAT
    settings.VOICECALL_NODE_TIMEOUT_SECONDS = TIMEOUT


def streamed_call(node: GatewayNode | None, name: str, **extra) -> tuple[Call, MediaStream]:
    call = make_call(provider_call_id=f"mock-{name}", state="listening", age_seconds=40, answered_ago=30,
                     max_duration_deadline=extra.pop("deadline", None), **extra)
    stream = MediaStream.objects.create(call=call, stream_id=f"MZ{name}", carrier="mock", node=node,
                                        stats={"framesIn": 500})
    return call, stream


def refreshed(*rows):
    for row in rows:
        row.refresh_from_db()
    return rows


def open_streams() -> set[str]:
    return set(MediaStream.objects.open().values_list("stream_id", flat=True))


def test_a_node_silent_past_the_timeout_is_suspected_then_declared_dead_and_its_streams_closed(caplog):
    caplog.set_level(logging.INFO, logger="calls")
    with fake_clock() as clock:
        dying, alive = node_register(host="web-1", pid=101), node_register(host="web-2", pid=202)
        call, stream = streamed_call(dying, "dying", deadline=clock() + timedelta(hours=1))
        other_call, other_stream = streamed_call(alive, "alive", deadline=clock() + timedelta(hours=1))

        clock.advance(TIMEOUT)  # exactly at the bound: still alive
        assert node_heartbeat(node_id=alive.pk)
        assert dead_nodes_sweep() == 0
        assert GatewayNode.objects.get(pk=dying.pk).suspected_at is None

        clock.advance(1)
        assert dead_nodes_sweep() == 0  # suspected only: one late heartbeat is not a death
        dying.refresh_from_db()
        assert dying.suspected_at == clock() and dying.stopped_at is None
        assert open_streams() == {"MZdying", "MZalive"}

        clock.advance(HEARTBEAT / 2)
        assert node_heartbeat(node_id=alive.pk)
        assert dead_nodes_sweep() == 2  # one node declared dead, one stream closed
        dying.refresh_from_db()
        assert dying.stopped_at == clock() and dying.stop_reason.startswith("died: no heartbeat since")
        assert open_streams() == {"MZalive"}
        stream.refresh_from_db()
        assert (stream.close_reason, stream.stats) == ("gateway node died", {"framesIn": 500})
        event = CallEvent.objects.get(call=call, type="stream.node_lost")
        assert event.payload == {"streamId": "MZdying", "node": str(dying.pk), "host": "web-1", "pid": 101,
                                 "nodeState": dying.stop_reason}
        assert f"gateway node {dying.pk} (web-1 pid 101) declared dead" in caplog.text

        # The disconnect grace runs as for any dropped stream; then the call ends and holds nothing.
        call.refresh_from_db()
        assert call.stream_grace_deadline == clock() + timedelta(seconds=2)
        assert deadlines_sweep(at=call.stream_grace_deadline) == 1
        call.refresh_from_db()
        assert (call.state, call.end_reason) == ("hangup-bot", "hangup-bot")
        assert not Call.objects.live().filter(pk=call.pk).exists()
        assert open_streams() == {"MZalive"}  # what puts a new inbound call on hold counts only live streams

        assert dead_nodes_sweep() == 0  # acted on once
        assert CallEvent.objects.filter(type="stream.node_lost").count() == 1
        other_call.refresh_from_db()
        assert other_call.state == "listening" and other_call.stream_grace_deadline is None


def test_a_heartbeat_after_the_suspicion_keeps_the_node_alive():
    """A database outage stops every heartbeat at once: a node that beats again once it is back is not dead."""
    with fake_clock() as clock:
        first, second = node_register(host="web-1", pid=1), node_register(host="web-2", pid=2)
        streamed_call(first, "first")
        streamed_call(second, "second")
        clock.advance(60)  # nothing reached the database for a minute
        assert dead_nodes_sweep() == 0
        assert GatewayNode.objects.filter(suspected_at__isnull=False).count() == 2
        clock.advance(1)
        assert node_heartbeat(node_id=first.pk) and node_heartbeat(node_id=second.pk)
        clock.advance(HEARTBEAT)
        assert dead_nodes_sweep() == 0
        assert open_streams() == {"MZfirst", "MZsecond"}
        assert GatewayNode.objects.filter(suspected_at__isnull=False, stopped_at__isnull=False).count() == 0


def test_a_sweep_never_declares_its_own_node_dead():
    with fake_clock() as clock:
        own = node_register(host="web-1", pid=1)
        streamed_call(own, "own")
        clock.advance(TIMEOUT * 4)
        assert dead_nodes_sweep(exclude=own.pk) == 0
        clock.advance(HEARTBEAT)
        assert dead_nodes_sweep(exclude=own.pk) == 0
        own.refresh_from_db()
        assert own.stopped_at is None and own.suspected_at is None and open_streams() == {"MZown"}


def test_streams_with_no_node_are_left_alone():
    """Opened outside a serving gateway (or before nodes were recorded): nothing says their process died."""
    with fake_clock() as clock:
        streamed_call(None, "unknown")
        clock.advance(TIMEOUT * 10)
        assert dead_nodes_sweep() == 0
        assert open_streams() == {"MZunknown"}


def test_the_streams_of_a_node_that_stopped_cleanly_are_closed_by_the_next_sweep_without_waiting():
    with fake_clock():
        node = node_register(host="web-1", pid=1)
        call, stream = streamed_call(node, "left")
        assert dead_nodes_sweep() == 0
        assert node_stop(node_id=node.pk)
        assert not node_heartbeat(node_id=node.pk)
        assert dead_nodes_sweep() == 1
        stream.refresh_from_db()
        call.refresh_from_db()
        assert stream.close_reason == "gateway node stopped" and call.stream_grace_deadline is not None


def test_a_stream_reopened_on_another_node_within_the_grace_keeps_the_call():
    with fake_clock():
        dead, alive = node_register(host="web-1", pid=1), node_register(host="web-2", pid=2)
        call, _ = streamed_call(dead, "first")
        node_stop(node_id=dead.pk)
        assert dead_nodes_sweep() == 1
        call.refresh_from_db()
        assert call.stream_grace_deadline is not None
        gateway = get_gateway()
        held, gateway.node.node_id = gateway.node.node_id, alive.pk
        try:
            opened = stream_open(provider_call_id=call.provider_call_id, stream_id="MZagain", token=stream_token(str(call.pk)))
        finally:
            gateway.node.node_id = held
        assert MediaStream.objects.get(pk=opened.stream_pk).node_id == alive.pk
        call.refresh_from_db()
        assert call.stream_grace_deadline is None and call.state == "listening"


def test_a_node_declared_dead_registers_again_as_a_new_node_when_its_heartbeat_comes_back(caplog):
    heartbeat = NodeHeartbeat()
    with fake_clock() as clock:
        assert heartbeat.beat()
        first = heartbeat.node_id
        node = GatewayNode.objects.get(pk=first)
        assert (node.pid, node.stopped_at) == (os.getpid(), None)
        clock.advance(TIMEOUT + 1)
        dead_nodes_sweep()
        clock.advance(HEARTBEAT)
        dead_nodes_sweep()
        assert GatewayNode.objects.get(pk=first).stopped_at is not None
        assert heartbeat.beat()
    assert heartbeat.node_id != first
    assert GatewayNode.objects.get(pk=heartbeat.node_id).stopped_at is None
    assert f"this gateway (node {first}) was declared dead by a sweep" in caplog.text


def test_a_heartbeat_that_fails_is_retried_and_registers_once_the_database_answers(monkeypatch, caplog):
    def refused(**_):
        raise ConnectionError("database down")

    monkeypatch.setattr("calls.services.nodes.GatewayNode.objects.create", refused)
    heartbeat = NodeHeartbeat()
    assert not heartbeat.beat() and heartbeat.node_id is None
    assert "gateway heartbeat failed (retried in 1 s): database down" in caplog.text
    monkeypatch.undo()
    assert heartbeat.beat() and heartbeat.node_id is not None


def test_the_gateway_registers_its_node_heartbeats_and_marks_it_stopped(settings, monkeypatch):
    settings.VOICECALL_NODE_HEARTBEAT_SECONDS = 0.05
    settings.VOICECALL_NODE_TIMEOUT_SECONDS = 0.1
    gateway = get_gateway()
    monkeypatch.setattr(gateway, "started", False)
    try:
        assert gateway.start()
        node_id = gateway.node.node_id
        node = GatewayNode.objects.get(pk=node_id)
        assert node.pid == os.getpid() and node.stopped_at is None
        wait_until(lambda: GatewayNode.objects.get(pk=node_id).heartbeat_at > node.heartbeat_at, "a heartbeat")
        assert gateway.restore.wait(10)
    finally:
        gateway.stop()
    node.refresh_from_db()
    assert node.stopped_at is not None and node.stop_reason == "stopped"
    assert gateway.node.node_id is None  # a later start registers a new node
    beat = GatewayNode.objects.get(pk=node_id).heartbeat_at
    stays(lambda: GatewayNode.objects.get(pk=node_id).heartbeat_at == beat, "no heartbeat after the stop", seconds=0.2)


def run_restore(settings, mode: str, node_id, started) -> Restore:
    settings.VOICECALL_MODE = mode
    restore = Restore()
    restore.start(process_started_at=started, replies_upto=0, node_id=node_id)
    assert restore.wait(10)
    assert restore.state == DONE, restore.detail
    return restore


def test_restore_in_the_distributed_mode_never_closes_the_streams_of_live_nodes(settings):
    own, live, stopped = (node_register(host=f"web-{n}", pid=n) for n in (1, 2, 3))
    streamed_call(live, "live")
    streamed_call(stopped, "stopped")
    streamed_call(None, "unknown")
    node_stop(node_id=stopped.pk)
    started = Call.objects.order_by("-started_at").first().started_at + timedelta(seconds=60)  # every stream is older
    restore = run_restore(settings, "distributed", own.pk, started)
    assert open_streams() == {"MZlive", "MZunknown"}
    assert "resumed 1" in restore.detail
    live.refresh_from_db()
    assert live.stopped_at is None


def test_restore_in_the_embedded_mode_closes_every_older_stream_and_marks_other_nodes_gone(settings):
    own, before = node_register(host="web-1", pid=1), node_register(host="web-1", pid=2)
    streamed_call(before, "before")
    started = Call.objects.get().started_at + timedelta(seconds=60)
    run_restore(settings, "embedded", own.pk, started)
    assert open_streams() == set()
    assert MediaStream.objects.get().close_reason == "gateway restarted"
    own, before = refreshed(own, before)
    assert own.stopped_at is None
    assert before.stopped_at is not None and before.stop_reason == "gone: the gateway restarted (embedded mode)"


def test_nodes_gone_spares_the_node_named():
    own, other = node_register(host="a", pid=1), node_register(host="b", pid=2)
    assert nodes_gone(except_node=own.pk) == 1
    assert GatewayNode.objects.get(pk=other.pk).stopped_at is not None
    assert list(GatewayNode.objects.filter(stopped_at__isnull=True).values_list("pk", flat=True)) == [own.pk]


@pytest.mark.parametrize("heartbeat, timeout, problem", [
    ("0", "15", "VOICECALL_NODE_HEARTBEAT_SECONDS: expected a finite number of seconds above 0, got '0'"),
    ("nan", "15", "VOICECALL_NODE_HEARTBEAT_SECONDS: expected a finite number of seconds above 0, got 'nan'"),
    ("5s", "15", "VOICECALL_NODE_HEARTBEAT_SECONDS: expected a number of seconds, got '5s'"),
    ("5", "inf", "VOICECALL_NODE_TIMEOUT_SECONDS: expected a finite number of seconds above 0, got 'inf'"),
    ("5", "9", "VOICECALL_NODE_TIMEOUT_SECONDS (9) must be at least twice VOICECALL_NODE_HEARTBEAT_SECONDS (5)"),
])
def test_node_timings_that_cannot_work_stop_the_process_naming_them(tmp_path, heartbeat, timeout, problem):
    env = {key: value for key, value in os.environ.items() if key not in ("REDIS_URL", "DATABASE_URL")}
    env.update(DJANGO_SETTINGS_MODULE="voicecall_project.settings", VOICECALL_DATA_DIR=str(tmp_path),
               VOICECALL_NODE_HEARTBEAT_SECONDS=heartbeat, VOICECALL_NODE_TIMEOUT_SECONDS=timeout)
    done = subprocess.run([sys.executable, "-c", "import django; django.setup()"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and problem in done.stderr


def test_the_admin_lists_nodes_read_only_with_their_open_streams(client, django_user_model):
    django_user_model.objects.create_superuser("ops", "ops@example.com", "pw-for-tests")
    client.login(username="ops", password="pw-for-tests")
    node = node_register(host="web-7.internal", pid=4242)
    streamed_call(node, "held")
    page = client.get("/admin/calls/gatewaynode/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "web-7.internal" in text and "4242" in text
    assert client.get("/admin/calls/gatewaynode/add/").status_code == 403
    assert client.post(f"/admin/calls/gatewaynode/{node.pk}/change/", {"host": "x"}).status_code == 403


def test_the_embedded_sweeper_and_the_beat_task_close_the_streams_of_stopped_nodes(settings):
    from calls.scheduler import Sweeper
    from calls.tasks import sweep_dead_nodes_task
    from voicecall_project.celery import app

    assert app.conf.beat_schedule["sweep-dead-nodes"] == {"task": "calls.sweep_dead_nodes",
                                                          "schedule": settings.VOICECALL_NODE_HEARTBEAT_SECONDS}
    first, second = node_register(host="web-1", pid=1), node_register(host="web-2", pid=2)
    streamed_call(first, "first")
    streamed_call(second, "second")
    node_stop(node_id=first.pk)
    Sweeper().tick()
    assert open_streams() == {"MZsecond"}
    node_stop(node_id=second.pk)
    assert sweep_dead_nodes_task() == 1
    assert open_streams() == set()
