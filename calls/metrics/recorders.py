"""The counters and histograms this process records, and the calls that record them.

In prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR set before it is imported) each
process writes its values to files there and a scrape sums them (calls/metrics/view.py); otherwise
they live in this process and a scrape of it shows its own. Label values are from small fixed sets
(carrier names, HTTP statuses, the reasons and kinds below): never numbers, addresses or ids.
"""
from __future__ import annotations

import os

from . import multiproc

multiproc.prepare(os.environ)  # before prometheus_client is imported: it picks its value class then

from prometheus_client import Counter, Histogram  # noqa: E402

from ..streams.stats import EXPORT_BOUNDS_MS  # noqa: E402

# Why the gateway refused a request or a connection before doing its work (docs/console.md, Metrics).
REFUSAL_REASONS = (
    "webhook_signature",  # a carrier webhook without a valid signature (missing, wrong, or too old)
    "webhook_malformed",  # a signed webhook that could not be parsed (400)
    "webhook_in_flight",  # serve.maxInFlightPerIp webhook requests of one address already in flight (429)
    "connections_per_ip",  # serve.maxConnectionsPerIp HTTP connections of one address already open
    "head_timeout",  # a request head not whole in time (408, or the idle connection closed)
    "head_too_large",  # a request head over the cap
    "body_too_large",  # a body over its path's cap (413)
    "body_timeout",  # a body not whole in time (408)
    "bad_request",  # a body that cannot be read: bad Content-Length, the client went away
    "stream_connections",  # streaming.maxConnections media sockets open in this process
    "stream_pending",  # the caps on sockets that have not sent their start yet
    "stream_start_timeout",  # a media socket that sent no start within preStartTimeoutMs
    "rpc_auth",  # POST /voice/rpc without an accepted bearer token (401)
    "admin_lockout",  # an admin login refused: too many failures for that username and address
    "metrics_auth",  # GET /metrics without the configured bearer token (401)
)
TURN_KINDS = ("continue", "reply", "realtime")

WEBHOOK_REQUESTS = Counter(
    "voicecall_webhook_requests", "Carrier webhook requests answered by the application, by carrier and HTTP status.",
    ["carrier", "status"],
)
WEBHOOK_DURATION = Histogram(
    "voicecall_webhook_request_duration_seconds",
    "Time from a carrier webhook request's arrival at the application to its answer sent, by carrier.",
    ["carrier"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
REFUSED = Counter(
    "voicecall_refused_requests", "Requests and connections the gateway refused, by reason (a fixed set).", ["reason"],
)
_STREAM_BUCKETS = tuple(bound / 1000 for bound in EXPORT_BOUNDS_MS)
INBOUND_LAG = Histogram(
    "voicecall_stream_inbound_lag_seconds",
    "How far behind the carrier's clock inbound media frames were handled, per frame, by carrier.",
    ["carrier"], buckets=_STREAM_BUCKETS,
)
PACING = Histogram(
    "voicecall_stream_outbound_pacing_delay_seconds",
    "How late each outbound media frame left against its 20 ms slot, per frame, by carrier.",
    ["carrier"], buckets=_STREAM_BUCKETS,
)
TURN_LATENCY = Histogram(
    "voicecall_turn_latency_seconds",
    "Turn latency by kind: continue (the request to the caller's final words), reply (the caller's "
    "final words to the reply's first audio), realtime (end of the caller's speech to the model's first audio).",
    ["kind"], buckets=(0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 30.0, 60.0),
)

# Children made once: a label lookup takes a lock and builds a tuple, and webhooks come by the hundred a second.
_refused = {reason: REFUSED.labels(reason) for reason in REFUSAL_REASONS}
_turns = {kind: TURN_LATENCY.labels(kind) for kind in TURN_KINDS}
_webhook_children: dict[tuple[str, int], tuple] = {}


def refused(reason: str) -> None:
    """Count one refusal; `reason` is one of REFUSAL_REASONS (anything else is a KeyError: the set is fixed)."""
    _refused[reason].inc()


def webhook_answered(carrier: str, status: int, seconds: float) -> None:
    """One carrier webhook request answered with `status`, `seconds` after it arrived."""
    children = _webhook_children.get((carrier, status))
    if children is None:
        children = _webhook_children.setdefault(
            (carrier, status), (WEBHOOK_REQUESTS.labels(carrier, str(status)), WEBHOOK_DURATION.labels(carrier)))
    children[0].inc()
    children[1].observe(seconds)


def turn_completed(kind: str, seconds: float) -> None:
    """One turn of `kind` (TURN_KINDS) finished with this latency; observed once per turn, where it completes."""
    _turns[kind].observe(max(0.0, seconds))


def stream_metrics_flush(stats, carrier: str) -> None:
    """Hand the stream's inbound-lag and pacing counts to Prometheus: only what is new since the last
    flush of these stats, so calling it every second and again at the close counts each frame once.

    The stream counted each frame into the export buckets itself (calls/streams/stats.py); here each
    bucket's new count is added in one step, as many observations at once would add it.
    """
    for histogram, metric in ((stats.inbound_lag, INBOUND_LAG), (stats.pacing, PACING)):
        _flush(histogram, metric, carrier)


def _flush(histogram, metric: Histogram, carrier: str) -> None:
    counts = histogram.export_counts
    done = getattr(histogram, "exported_counts", None)
    if done is None:
        done = histogram.exported_counts = [0] * len(counts)
        histogram.exported_sum_ms = 0.0
    new = [count - before for count, before in zip(counts, done)]
    if not any(new):
        return
    child = metric.labels(carrier)
    # prometheus_client (pinned) keeps a histogram as one value per bucket, not cumulative, and its
    # sum: what observe() increments one at a time (tests/calls/test_metrics.py checks the layout).
    child._sum.inc((histogram.export_sum_ms - histogram.exported_sum_ms) / 1000)
    for bucket, count in zip(child._buckets, new):
        if count:
            bucket.inc(count)
    done[:] = counts
    histogram.exported_sum_ms = histogram.export_sum_ms
