"""Logging settings: nothing that carries secrets is logged, whatever level the project's loggers run at."""
from __future__ import annotations

import logging


def test_the_websocket_client_never_logs_request_headers():
    # Its DEBUG lines carry every request header, the providers' API keys among them.
    assert logging.getLogger("websockets.client").getEffectiveLevel() >= logging.INFO
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.DEBUG)
    try:
        assert not logging.getLogger("websockets.client").isEnabledFor(logging.DEBUG)
    finally:
        root.setLevel(level)
