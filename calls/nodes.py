"""This process's gateway node: registered when the gateway starts, a heartbeat on a thread of its own, stopped when it stops.

The sweep that acts on nodes whose heartbeat stopped is in calls/services/nodes.py.
"""
from __future__ import annotations

import logging
import os
import socket
import threading

from django.conf import settings
from django.db import connections

from .log_limit import warn_limited

log = logging.getLogger(__name__)

# After a failed heartbeat (the database did not answer) the next try comes this soon: once the
# database is back, the node beats before a sweep can confirm a suspicion the outage raised.
RETRY_SECONDS = 1.0
STOP_WAIT_SECONDS = 5.0


class NodeHeartbeat:
    """Registers this process as a GatewayNode, renews its heartbeat every VOICECALL_NODE_HEARTBEAT_SECONDS."""

    def __init__(self) -> None:
        self.node_id = None  # known once the row is written; media streams opened before carry no node
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Register now (a failure is retried by the thread) and start the heartbeat thread."""
        self.beat()
        self._thread = threading.Thread(target=self._run, name="voicecall-heartbeat", daemon=True)
        self._thread.start()

    def beat(self) -> bool:
        """One heartbeat (or the registration still missing); False when the database did not take it."""
        from .services.nodes import node_heartbeat, node_register

        try:
            if self.node_id is not None and node_heartbeat(node_id=self.node_id):
                return True
            if self.node_id is not None:
                # Another process's sweep found no heartbeat from us for longer than the timeout (a
                # stall, or the database unreachable from here) and closed our media streams.
                log.error("this gateway (node %s) was declared dead by a sweep (no heartbeat for more than %g s); "
                          "the media streams it held were closed; registering again as a new node",
                          self.node_id, settings.VOICECALL_NODE_TIMEOUT_SECONDS)
            node = node_register(host=socket.gethostname(), pid=os.getpid())
            self.node_id = node.pk
            log.info("gateway node %s registered (%s), heartbeat every %g s", node.pk, node,
                     settings.VOICECALL_NODE_HEARTBEAT_SECONDS)
            return True
        except Exception as exc:
            warn_limited(log, ("heartbeat", type(exc).__name__), "gateway heartbeat failed (retried in %g s): %s",
                         RETRY_SECONDS, exc)
            return False

    def stop(self) -> None:
        """Stop the heartbeat and mark the node stopped, so a sweep closes what it still holds without waiting."""
        from .services.nodes import node_stop

        self._stopping.set()
        if self._thread is not None:
            self._thread.join(STOP_WAIT_SECONDS)
        if self.node_id is None:
            return
        try:
            node_stop(node_id=self.node_id)
        except Exception as exc:
            log.warning("could not mark gateway node %s stopped (its heartbeat will time out): %s", self.node_id, exc)

    def _run(self) -> None:
        ok = True
        while not self._stopping.wait(settings.VOICECALL_NODE_HEARTBEAT_SECONDS if ok else RETRY_SECONDS):
            ok = self.beat()
            connections.close_all()  # this thread's own: it sleeps for seconds between beats
