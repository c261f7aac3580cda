"""Gateway processes as nodes: register, heartbeat, stop, and the sweep that closes the media streams of dead ones.

Every serving gateway process keeps a GatewayNode row alive (calls/nodes.py runs its heartbeat)
and records its node on each media stream it opens: the socket lives in that process and dies with
it. A sweep (the embedded sweeper, Celery beat's `calls.sweep_dead_nodes`) finds nodes whose
heartbeat stopped in two steps: a node whose last heartbeat is older than
VOICECALL_NODE_TIMEOUT_SECONDS is suspected; a sweep at least half a heartbeat interval later
declares it dead if no heartbeat came meanwhile. A live node's next heartbeat clears the suspicion,
and after a failed one a node tries again every second, so a database outage (which stops every
heartbeat at once) gets no live node declared dead once the database is back. The streams of nodes
that died or stopped are closed as a disconnect is: the call's grace starts, and unless the
carrier opens a new stream (on any node) the call ends; nothing stays held by a dead process.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings

from ..clock import now
from ..models import GatewayNode, MediaStream
from .common import log
from .events import call_event_record
from .streams import stream_closed

STOPPED = "stopped"
DIED = "died"
GONE = "gone"
# The timeline event a call gets when its stream is closed for its node.
NODE_LOST_EVENT = "stream.node_lost"


def node_register(*, host: str, pid: int) -> GatewayNode:
    """A new node row for this process, heartbeating from now."""
    at = now()
    return GatewayNode.objects.create(host=host[:255], pid=pid, started_at=at, heartbeat_at=at)


def node_heartbeat(*, node_id) -> bool:
    """Renew the node's heartbeat (clearing any suspicion); False when it was stopped or declared dead meanwhile."""
    return bool(GatewayNode.objects.filter(pk=node_id, stopped_at__isnull=True).update(heartbeat_at=now(), suspected_at=None))


def node_stop(*, node_id) -> bool:
    """The node's process stops cleanly: its row says so, and the streams it still holds are closed by the next sweep."""
    at = now()
    return bool(GatewayNode.objects.filter(pk=node_id, stopped_at__isnull=True)
                .update(stopped_at=at, heartbeat_at=at, stop_reason=STOPPED))


def nodes_gone(*, except_node=None) -> int:
    """The embedded mode's restart: one gateway per database, so every other node row is of a process that is gone.

    Their streams were closed by the restore (calls/services/resume.py) as opened before the start.
    """
    others = GatewayNode.objects.filter(stopped_at__isnull=True)
    if except_node is not None:
        others = others.exclude(pk=except_node)
    return others.update(stopped_at=now(), stop_reason=f"{GONE}: the gateway restarted (embedded mode)")


def dead_nodes_sweep(*, at: datetime | None = None, exclude=None) -> int:
    """Suspect nodes with a stale heartbeat, declare dead those suspected long enough, close dead nodes' streams.

    `exclude`: the node of the sweeping process (it never declares itself dead). Concurrent sweeps
    in several processes act once: each change is a conditional UPDATE. Returns how many nodes were
    declared dead plus how many streams were closed.
    """
    at = at or now()
    stale_before = at - timedelta(seconds=settings.VOICECALL_NODE_TIMEOUT_SECONDS)
    confirm_before = at - timedelta(seconds=settings.VOICECALL_NODE_HEARTBEAT_SECONDS / 2)
    stale = GatewayNode.objects.filter(stopped_at__isnull=True, heartbeat_at__lt=stale_before)
    if exclude is not None:
        stale = stale.exclude(pk=exclude)
    declared = 0
    for node in list(stale.filter(suspected_at__lte=confirm_before)):
        reason = f"{DIED}: no heartbeat since {node.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC"
        # On the exact heartbeat read: a node that beat meanwhile is alive after all.
        if GatewayNode.objects.filter(pk=node.pk, stopped_at__isnull=True, heartbeat_at=node.heartbeat_at).update(
            stopped_at=at, stop_reason=reason,
        ):
            log.warning("gateway node %s (%s) declared dead: no heartbeat since %s (timeout %g s)",
                        node.pk, node, node.heartbeat_at.isoformat(), settings.VOICECALL_NODE_TIMEOUT_SECONDS)
            declared += 1
    suspects = stale.filter(suspected_at__isnull=True).update(suspected_at=at)
    if suspects:
        log.info("%d gateway node(s) missed their heartbeat for more than %g s; dead unless one comes",
                 suspects, settings.VOICECALL_NODE_TIMEOUT_SECONDS)
    return declared + orphaned_streams_close()


def orphaned_streams_close() -> int:
    """Close the open streams whose node stopped or died: their sockets are gone with the process.

    The call's disconnect grace starts (calls/services/streams.py); the call's timeline says which
    node it lost. Returns how many streams were closed.
    """
    orphaned = (
        MediaStream.objects.open().filter(node__stopped_at__isnull=False)
        .values_list("pk", "call_id", "stream_id", "stats", "node_id", "node__host", "node__pid", "node__stop_reason")
    )
    count = 0
    for stream_pk, call_id, stream_id, stats, node_id, host, pid, stop_reason in list(orphaned):
        kind = stop_reason.split(":", 1)[0] or DIED
        log.warning("call %s: its media stream %s was held by gateway node %s (%s pid %s), which %s; closing it",
                    call_id, stream_id, node_id, host, pid, stop_reason or DIED)
        stream_closed(stream_pk=stream_pk, reason=f"gateway node {kind}", stats=stats or {})
        call_event_record(
            call_id=str(call_id), type=NODE_LOST_EVENT, key=f"stream-node-lost-{stream_pk}",
            payload={"streamId": stream_id, "node": str(node_id), "host": host, "pid": pid, "nodeState": stop_reason},
        )
        count += 1
    return count
