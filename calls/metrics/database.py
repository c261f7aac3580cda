"""Gauges read from the database at scrape time: right from whichever process answers the scrape.

A handful of small queries, each on an index: live calls by state (call_state_started), calls that
ended among those started within the last hour (the same index, a range per state), open media
streams of live calls (through the live calls, then media_stream_open), queued dials
(pending_dial_status_due; calls waiting for their first dial request, counted with the live calls), and
gateway processes with a fresh heartbeat (gateway_node_live).
"""
from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db.models import Count
from prometheus_client.core import GaugeMetricFamily

from core.states import FORWARD_ORDER, TERMINAL_STATES

from ..clock import now
from ..models import Call, GatewayNode, MediaStream, PendingDial, PendingDialStatus
from ..services.dial_job import undialed

LIVE_STATES = [state.value for state in FORWARD_ORDER]
ENDED_STATES = sorted(state.value for state in TERMINAL_STATES)
# Outcomes are counted over calls started within this window: a count over every call ever made
# would read the whole table at each scrape (docs/console.md, Metrics).
OUTCOME_WINDOW = timedelta(hours=1)


class DatabaseCollector:
    """A prometheus_client collector: calls, streams, the dial queue and gateway nodes as the database has them now."""

    def collect(self):
        at = now()
        # One pass over the live calls (the state index) gives both their states and how many wait
        # for their first dial request; a filter on the undialed columns instead would let the
        # database pick the carrier-id index and read every call that never had one.
        live = list(
            Call.objects.filter(state__in=LIVE_STATES).order_by().values_list("state")
            .annotate(n=Count("pk"), undialed=Count("pk", filter=undialed()))
        )
        by_state = {state: count for state, count, _ in live}
        calls = GaugeMetricFamily("voicecall_calls", "Calls in progress now, by state.", labels=["state"])
        for state in LIVE_STATES:
            calls.add_metric([state], by_state.get(state, 0))
        yield calls
        yield GaugeMetricFamily("voicecall_calls_active", "Calls in progress now (not in a terminal state).",
                                value=sum(by_state.values()))

        ended = dict(
            Call.objects.filter(state__in=ENDED_STATES, started_at__gte=at - OUTCOME_WINDOW).order_by()
            .values_list("state").annotate(n=Count("pk"))
        )
        outcomes = GaugeMetricFamily(
            "voicecall_calls_ended_last_hour",
            "Calls started within the last hour that have ended, by end reason (the terminal state).",
            labels=["reason"],
        )
        for reason in ENDED_STATES:
            outcomes.add_metric([reason], ended.get(reason, 0))
        yield outcomes

        streams = GaugeMetricFamily("voicecall_media_streams_open", "Open media streams of calls in progress, by carrier.",
                                    labels=["carrier"])
        for carrier, count in (
            MediaStream.objects.filter(call__state__in=LIVE_STATES, closed_at__isnull=True).order_by()
            .values_list("carrier").annotate(n=Count("pk"))
        ):
            streams.add_metric([carrier], count)
        yield streams

        queue = GaugeMetricFamily(
            "voicecall_dial_queue_depth",
            "Dials waiting: scheduled calls and dial-list rows not admitted yet (pending), and calls written "
            "but not dialed yet (undialed: no request to the carrier made).",
            labels=["queue"],
        )
        queue.add_metric(["pending"], PendingDial.objects.filter(status=PendingDialStatus.PENDING).count())
        queue.add_metric(["undialed"], sum(waiting for _, _, waiting in live))
        yield queue

        fresh_after = at - timedelta(seconds=settings.VOICECALL_NODE_TIMEOUT_SECONDS)
        yield GaugeMetricFamily(
            "voicecall_gateway_nodes_live", "Gateway processes serving now (not stopped, heartbeat within the node timeout).",
            value=GatewayNode.objects.filter(stopped_at__isnull=True, heartbeat_at__gte=fresh_after).count(),
        )
