"""A stream's lag and pacing histograms handed to Prometheus in bulk: each frame counted once, in the bucket observe() would pick."""
from __future__ import annotations

import json

import httpx
import pytest
from prometheus_client import CollectorRegistry, Histogram
from websockets.exceptions import InvalidStatus

from calls.streams.limits import limits
from calls.metrics.recorders import INBOUND_LAG, PACING, stream_metrics_flush
from calls.streams.stats import EXPORT_BOUNDS_MS, LatencyHistogram, StreamStats
from core.audio import FRAME_BYTES
from tests.calls.streams import test_media_stream
from tests.calls.streams.test_media_stream import (
    closed_row,
    close_code,
    live,
    media_frame,
    new_call,
    open_stream,
    spec_code,
    stop_frame,
)
from tests.metrics_scrape import parse, value
from tests.waiting import await_until

# The media-stream tests' fixtures: the live gateway under a Twilio streaming config, and its REST stub.
gateway = test_media_stream.gateway
rest_stub = test_media_stream.rest_stub

VALUES_MS = [0.0, 0.4, 1.0, 1.0000001, 2.5, 7.0, 20.0, 59.9, 60.0, 999.0, 2000.0, 2000.5, 5000.0, -3.0]


def samples_of(metric, carrier: str) -> dict[str, float]:
    """The metric's samples for one carrier, by name and `le`."""
    found = {}
    for family in metric.collect():
        for sample in family.samples:
            if sample.labels.get("carrier") == carrier:
                found[sample.name + sample.labels.get("le", "")] = sample.value
    return found


def observed_one_by_one(values_ms: list[float]) -> dict[str, float]:
    """What Prometheus shows when each value is observed alone, in seconds (the reference)."""
    reference = Histogram("reference_seconds", "reference", ["carrier"], registry=CollectorRegistry(),
                          buckets=[bound / 1000 for bound in EXPORT_BOUNDS_MS])
    for ms in values_ms:
        reference.labels("c").observe(max(ms, 0.0) / 1000)
    return {name.replace("reference_seconds", ""): number for name, number in samples_of(reference, "c").items()
            if not name.startswith("reference_seconds_created")}


def flushed(metric, carrier: str) -> dict[str, float]:
    prefix = metric._name
    return {name.replace(prefix, ""): number for name, number in samples_of(metric, carrier).items()
            if "_created" not in name}


def test_export_buckets_count_each_value_where_prometheus_would():
    histogram = LatencyHistogram(EXPORT_BOUNDS_MS)
    for ms in VALUES_MS:
        histogram.add(ms)
    assert sum(histogram.export_counts) == len(VALUES_MS)
    assert histogram.export_counts[0] == 4  # -3, 0, 0.4 and exactly 1.0 are all <= 1 ms
    assert histogram.export_counts[-1] == 2  # 2000.5 and 5000 are above every bound
    assert LatencyHistogram().export_counts == []  # histograms not exported count nothing extra


def test_a_flush_adds_what_observing_each_value_would(monkeypatch):
    stats = StreamStats()
    for ms in VALUES_MS:
        stats.inbound_lag.add(ms)
    stats.pacing.add(3.0)
    stream_metrics_flush(stats, "unit-a")
    got, want = flushed(INBOUND_LAG, "unit-a"), observed_one_by_one(VALUES_MS)
    assert got.keys() == want.keys()
    for name in want:
        assert got[name] == pytest.approx(want[name]), name
    assert flushed(PACING, "unit-a")["_count"] == 1


def test_flushing_twice_counts_nothing_twice_and_later_frames_once():
    stats = StreamStats()
    for ms in (5.0, 15.0):
        stats.inbound_lag.add(ms)
    stream_metrics_flush(stats, "unit-b")
    stream_metrics_flush(stats, "unit-b")  # nothing new
    first = flushed(INBOUND_LAG, "unit-b")
    assert first["_count"] == 2 and first["_sum"] == pytest.approx(0.020)
    stats.inbound_lag.add(150.0)
    stream_metrics_flush(stats, "unit-b")
    stream_metrics_flush(stats, "unit-b")
    later = flushed(INBOUND_LAG, "unit-b")
    assert later["_count"] == 3 and later["_sum"] == pytest.approx(0.170)
    assert later["_bucket0.1"] == 2 and later["_bucket0.25"] == 3  # cumulative, as exposed
    assert flushed(PACING, "unit-b").get("_count", 0) == 0  # nothing paced, nothing added


def test_two_streams_of_one_carrier_add_up():
    one, two = StreamStats(), StreamStats()
    one.pacing.add(1.5)
    two.pacing.add(30.0)
    two.pacing.add(30.0)
    for stats in (one, two, one, two):
        stream_metrics_flush(stats, "unit-c")
    assert flushed(PACING, "unit-c")["_count"] == 3


@live
async def test_a_streams_frames_reach_the_scrape_once(gateway):
    before = parse((await _get(gateway, "/metrics")).text)
    call = await new_call()
    ws, sid = await open_stream(gateway, call)
    for sequence in range(2, 8):  # six frames: the first sets the clock, five lags are measured
        await ws.send(media_frame(sid, b"\x10" * FRAME_BYTES, sequence=sequence))
    await ws.send(stop_frame(sid, call))
    assert await close_code(ws) == 1000
    row = await closed_row(sid)
    measured = json.loads(json.dumps(row.stats))["inboundLagMs"]["n"]
    assert measured == 5
    after = parse((await _get(gateway, "/metrics")).text)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("voicecall_stream_inbound_lag_seconds_count", carrier="twilio") == measured
    assert delta("voicecall_stream_inbound_lag_seconds_bucket", carrier="twilio", le="+Inf") == measured
    assert delta("voicecall_webhook_requests_total", carrier="twilio", status="200") == 0


@live
async def test_refused_media_sockets_are_counted_by_reason(gateway):
    gateway.config(maxConnections=2, maxPendingConnectionsPerIp=1)
    before = parse((await _get(gateway, "/metrics")).text)
    first = await gateway.dial()
    second = await gateway.dial()  # accepted, then closed: one pending socket per address
    assert await close_code(second) in spec_code(1013)
    call = await new_call()
    await first.close()
    await await_until(lambda: limits.total == 0, "the first socket's slot to be free", timeout=2)
    await open_stream(gateway, call)
    await gateway.dial()  # pending, within the caps
    with pytest.raises(InvalidStatus):
        await gateway.dial()  # over maxConnections: refused at the handshake
    after = parse((await _get(gateway, "/metrics")).text)

    def delta(reason):
        return (value(after, "voicecall_refused_requests_total", reason=reason)
                - value(before, "voicecall_refused_requests_total", reason=reason))

    assert (delta("stream_pending"), delta("stream_connections")) == (1, 1)


async def _get(gw, path: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=gw.live_gateway, timeout=10) as client:
        response = await client.get(path)
    assert response.status_code == 200
    return response
