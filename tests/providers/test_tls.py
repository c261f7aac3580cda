"""TLS client contexts are built once per process and shared by every HTTP and WebSocket client."""
from __future__ import annotations

import ssl

from providers import tls


def test_contexts_are_built_once():
    assert isinstance(tls.http_tls(), ssl.SSLContext)
    assert tls.http_tls() is tls.http_tls()
    assert tls.websocket_tls() is tls.websocket_tls()


def test_websocket_ssl_is_the_shared_context_for_wss_and_none_for_ws():
    assert tls.websocket_ssl("wss://api.example.com/v1/listen") is tls.websocket_tls()
    assert tls.websocket_ssl("WSS://API.EXAMPLE.COM/") is tls.websocket_tls()
    assert tls.websocket_ssl("ws://127.0.0.1:9000/v1/listen") is None


def test_contexts_verify_certificates_and_host_names():
    for context in (tls.http_tls(), tls.websocket_tls()):
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.check_hostname is True
