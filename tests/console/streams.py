"""Media stream rows with the stats a stream writes at close (calls/streams/stats.py), for the admin's pages."""
from __future__ import annotations

import random
from datetime import timedelta

from django.utils import timezone

from calls.models import Call, GatewayNode, MediaStream
from calls.streams.stats import StreamStats


def stream_stats(*, seconds: int, dropped: int = 0, seed: int = 1) -> dict:
    """What a stream of `seconds` of two-way audio writes: 50 frames a second each way, lag and pacing samples."""
    rng = random.Random(seed)
    stats = StreamStats()
    frames = seconds * 50
    stats.counters["frames_in"] = frames
    stats.counters["frames_out"] = frames - 40
    stats.counters["marks_acked"] = 6
    stats.counters["stt_ready"] = 1
    for _ in range(dropped):
        stats.drop("late")
    for _ in range(frames):
        stats.inbound_lag.add(rng.gammavariate(2.0, 0.6))
        stats.pacing.add(rng.gammavariate(1.5, 0.4))
    for index in range(3):
        stats.turn_latency.add(640 + 90 * index)
        stats.turn_own_latency.add(180 + 30 * index)
    return stats.as_dict()


def seed_streams() -> dict[str, MediaStream]:
    """A closed Twilio stream with stats, a closed Telnyx one that dropped frames, and an open one."""
    now = timezone.now()
    node = GatewayNode.objects.create(host="gw-1", pid=4242)

    def call(to: str, provider: str) -> Call:
        return Call.objects.create(provider=provider, direction="outbound", from_number="+15550000000", to_number=to,
                                   state="completed", provider_call_id=f"{provider}-{to}")

    twilio = MediaStream.objects.create(
        call=call("+15550001111", "twilio"), stream_id="MZ18ad3ab5a668481ce02b83e7395059f0", carrier="twilio",
        opened_at=now - timedelta(minutes=9), closed_at=now - timedelta(minutes=6, seconds=58), close_reason="stop",
        stats=stream_stats(seconds=122), node=node,
    )
    telnyx = MediaStream.objects.create(
        call=call("+15550002222", "telnyx"), stream_id="v3:7f1c2d5e-stream", carrier="telnyx",
        opened_at=now - timedelta(minutes=4), closed_at=now - timedelta(minutes=3, seconds=20), close_reason="disconnected",
        stats=stream_stats(seconds=40, dropped=12, seed=2), node=node,
    )
    live = Call.objects.create(provider="twilio", direction="inbound", from_number="+15557770000", to_number="+15550000000",
                               state="listening", provider_call_id="CA-live-1")
    open_stream = MediaStream.objects.create(call=live, stream_id="MZopen0000000000000000000000000001", carrier="twilio",
                                             opened_at=now - timedelta(seconds=35), node=node)
    return {"twilio": twilio, "telnyx": telnyx, "open": open_stream}
