"""Benchmark: what recording the Prometheus metrics costs in-process, per webhook and per media frame.

Times (best of 7 rounds, microseconds) `webhook_answered` (one counter and one histogram), a
stream histogram's `add` with and without the export buckets, one second of one stream (50 inbound
and 50 outbound frames, then `stream_metrics_flush`), and a flush with nothing new. Run it once as
it is and once with PROMETHEUS_MULTIPROC_DIR set to an empty directory (the multiprocess mode writes
to memory-mapped files). Pin it to a core: `taskset -c 0 .venv/bin/python bench/metrics_overhead.py`.
"""
from __future__ import annotations

import os
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from calls.metrics import recorders  # noqa: E402
from calls.streams.stats import LatencyHistogram, StreamStats  # noqa: E402


def best(func, number: int) -> float:
    return min(timeit.repeat(func, number=number, repeat=7)) / number * 1e6


def main() -> None:
    stats, plain = StreamStats(), LatencyHistogram()

    def one_second() -> None:
        for _ in range(50):
            stats.inbound_lag.add(3.7)
            stats.pacing.add(1.2)
        recorders.stream_metrics_flush(stats, "twilio")

    rows = [
        ("webhook_answered (per webhook)", best(lambda: recorders.webhook_answered("twilio", 200, 0.012), 20_000)),
        ("LatencyHistogram.add, exported (per frame)", best(lambda: stats.inbound_lag.add(3.7), 20_000)),
        ("LatencyHistogram.add, not exported", best(lambda: plain.add(3.7), 20_000)),
        ("one second of one stream: 100 adds + flush", best(one_second, 200)),
        ("stream_metrics_flush, nothing new", best(lambda: recorders.stream_metrics_flush(stats, "twilio"), 20_000)),
    ]
    mode = "multiprocess" if os.environ.get("PROMETHEUS_MULTIPROC_DIR") else "single process"
    print(f"mode: {mode}; load average {os.getloadavg()[0]:.1f}")
    print("| operation | µs |\n|---|---:|")
    for name, micros in rows:
        print(f"| {name} | {micros:.2f} |")


if __name__ == "__main__":
    main()
