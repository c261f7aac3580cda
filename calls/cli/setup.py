"""`voicecall setup`: the readiness checks (also shown in the admin), and webhook exposure."""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

from core.config import LoadedConfig
from core.config.schema import VoiceCallConfig
from core.urls import webhook_url

CGNAT = ipaddress.ip_network("100.64.0.0/10")


@dataclass(frozen=True)
class Check:
    id: str
    ok: bool
    message: str


def setup_checks(loaded: LoadedConfig) -> list[Check]:
    config = loaded.config
    provider = config.provider if config.enabled else None
    checks = [
        Check("plugin-enabled", config.enabled, "Voice calls enabled" if config.enabled else "Voice calls disabled (set enabled: true)"),
        Check("provider", bool(provider), f"Provider: {provider}" if provider else "Provider not configured"),
        Check(
            "provider-config",
            not loaded.errors,
            "Provider config valid" if not loaded.errors else "; ".join(loaded.errors),
        ),
    ]
    exposed, message = webhook_exposure(config)
    checks.append(Check("webhook-exposure", exposed, message))
    checks.append(_mode_check(config))
    return checks


def _mode_check(config: VoiceCallConfig) -> Check:
    realtime, streaming = config.realtime, config.streaming
    if realtime.enabled and streaming.enabled:
        return Check("mode", False, "realtime.enabled and streaming.enabled are both true; enable only one")
    if realtime.enabled:
        from calls.realtime.provider import realtime_provider
        from providers.realtime.base import RealtimeError

        try:
            provider = realtime_provider(config)
        except RealtimeError as exc:
            return Check("mode", False, f"Realtime voice cannot run: {exc}")
        return Check("mode", True, f"Realtime voice via {provider.name} at {config.realtime_stream_path()}")
    if streaming.enabled:
        return Check("mode", True, f"Streaming transcription via {streaming.provider or 'the first registered provider'}")
    return Check("mode", True, "Notify/conversation calls use normal TTS/STT flow")


def webhook_exposure(config: VoiceCallConfig) -> tuple[bool, str]:
    """Can the carrier reach our webhook? Local and private publicUrls are refused."""
    if config.provider == "mock":
        return True, "Mock provider does not need a public webhook"
    if config.public_url:
        host = urlsplit(config.public_url).hostname or ""
        if is_local_host(host):
            return False, f"publicUrl {config.public_url} points at a local or private address the carrier cannot reach"
        return True, f"Webhooks at {webhook_url(config)}"
    if config.tunnel.provider != "none":
        return True, f"Webhooks exposed through tunnel {config.tunnel.provider}"
    if config.tailscale.mode != "off":
        return True, f"Webhooks exposed through tailscale {config.tailscale.mode}"
    return False, "Set publicUrl or configure tunnel/tailscale so the carrier can reach the webhook"


def is_local_host(host: str) -> bool:
    """Loopback, private, link-local, CGNAT, ULA, unspecified, or a name that only resolves locally."""
    host = host.strip("[]").lower().rstrip(".")
    if not host:
        return True
    address = _parse_address(host)
    if address is None:
        return host == "localhost" or host.endswith((".localhost", ".local", ".internal", ".lan")) or "." not in host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_unspecified
        or address.is_reserved
        or address.is_multicast
        or (address.version == 4 and address in CGNAT)
    )


def _parse_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An IP address in any form URL parsers accept (127.1, 0x7f.0.0.1, 0177.0.0.1), else None."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if all(part and (part.isdigit() or part.startswith("0x")) for part in host.split(".")):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def setup_json(checks: list[Check], warnings: list[str] = ()) -> dict:
    """The checks; the config's warnings (legacy keys, settings not built yet) when there are any."""
    result = {"ok": all(c.ok for c in checks), "checks": [asdict(c) for c in checks]}
    if warnings:
        result["warnings"] = list(warnings)
    return result


def setup_text(checks: list[Check], warnings: list[str] = ()) -> str:
    head = "Voice Call setup: OK" if all(c.ok for c in checks) else "Voice Call setup: needs attention"
    lines = [head] + [f"{'OK' if c.ok else 'FAIL'} {c.id}: {c.message}" for c in checks]
    # Warnings never fail setup, but a setting that does nothing must not pass in silence.
    return "\n".join(lines + [f"WARN {warning}" for warning in warnings])
