"""Per-stream counters and a fixed-size latency histogram (no per-frame allocation)."""
from __future__ import annotations

from bisect import bisect_left
from collections import Counter

BUCKET_MS = 0.5
MAX_MS = 2000.0
# Upper bounds (ms) of the Prometheus buckets the inbound lag and the outbound pacing are also
# counted in (calls/metrics): one bisect on a dozen numbers per frame, handed to Prometheus in
# bulk (stream_metrics_flush), never a Prometheus call per frame.
EXPORT_BOUNDS_MS = (1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 100.0, 250.0, 500.0, 1000.0, 2000.0)


class LatencyHistogram:
    """Milliseconds in 0.5 ms buckets up to 2 s (anything above lands in the last bucket)."""

    def __init__(self, export_bounds: tuple[float, ...] = ()) -> None:
        self.counts = [0] * (int(MAX_MS / BUCKET_MS) + 1)
        self.total = 0
        self.max_ms = 0.0
        # Counts per export bucket (value <= bound; the last one is above every bound) and their sum;
        # what the last flush handed over is the exporter's to keep (calls/metrics).
        self.export_bounds = export_bounds
        self.export_counts = [0] * (len(export_bounds) + 1) if export_bounds else []
        self.export_sum_ms = 0.0

    def add(self, ms: float) -> None:
        index = int(ms / BUCKET_MS) if ms > 0 else 0
        self.counts[min(index, len(self.counts) - 1)] += 1
        self.total += 1
        if ms > self.max_ms:
            self.max_ms = ms
        if self.export_bounds:
            self.export_counts[bisect_left(self.export_bounds, ms)] += 1
            if ms > 0:
                self.export_sum_ms += ms

    def percentile(self, p: float) -> float:
        """Upper edge of the bucket holding the p-th percentile (0 when empty)."""
        if not self.total:
            return 0.0
        rank = max(1, round(self.total * p / 100))
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                return min((index + 1) * BUCKET_MS, self.max_ms)
        return self.max_ms

    def summary(self) -> dict[str, float]:
        return {"n": self.total, "p50": self.percentile(50), "p99": self.percentile(99), "max": round(self.max_ms, 2)}


class StreamStats:
    """What one media stream did: frames in and out, drops by cause, and timing."""

    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()
        self.inbound_lag = LatencyHistogram(EXPORT_BOUNDS_MS)  # how far behind real time inbound audio was handled
        self.pacing = LatencyHistogram(EXPORT_BOUNDS_MS)  # how late each outbound frame left, against its 20 ms slot
        # A turn as the gateway sees it: final transcript to the first reply audio frame sent; and
        # the same less the time spent waiting for the speech service's first audio (the
        # gateway's own share, whatever the TTS service's speed).
        self.turn_latency = LatencyHistogram()
        self.turn_own_latency = LatencyHistogram()
        self._turn_heard_at: float | None = None
        self._tts_wait = 0.0

    def turn_heard(self, at: float) -> None:
        """A final transcript arrived (monotonic time): the next reply audio frame ends the turn."""
        self._turn_heard_at = at
        self._tts_wait = 0.0

    def tts_waited(self, seconds: float) -> None:
        """A playback waited this long for its synthesis's first audio."""
        if self._turn_heard_at is not None:
            self._tts_wait += seconds

    def reply_audio_sent(self, at: float) -> None:
        if self._turn_heard_at is not None:
            total = at - self._turn_heard_at
            self.turn_latency.add(total * 1000)
            self.turn_own_latency.add(max(0.0, total - self._tts_wait) * 1000)
            self._turn_heard_at = None

    def drop(self, cause: str) -> None:
        self.counters[f"dropped_{cause}"] += 1
        self.counters["dropped"] += 1

    def as_dict(self) -> dict:
        return {
            **dict(self.counters),
            "inboundLagMs": self.inbound_lag.summary(),
            "pacingLateMs": self.pacing.summary(),
            "turnLatencyMs": self.turn_latency.summary(),
            "turnOwnLatencyMs": self.turn_own_latency.summary(),
        }
