"""For tests that call the real gateway with the carrier simulator."""
from __future__ import annotations

from asgiref.sync import sync_to_async

from calls.models import MediaStream
from tests.waiting import await_until


def _streams_closed(call_sid: str) -> bool:
    streams = MediaStream.objects.filter(call__provider_call_id=call_sid)
    return streams.exists() and not streams.filter(closed_at__isnull=True).exists()


async def stream_recorded(call_sid: str) -> None:
    """Wait until the gateway recorded the end of the call's media stream (its stats, its last words):
    the simulator hangs up before the gateway has finished writing."""
    await await_until(sync_to_async(lambda: _streams_closed(call_sid)), f"the gateway to record the end of {call_sid}'s stream")
