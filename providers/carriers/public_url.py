"""The URL a carrier signed: rebuilt from publicUrl or, behind trusted proxies only, forwarded headers.

Carriers sign the public URL they called, which differs from what this process sees behind a proxy
or tunnel. Forwarded headers are attacker-controlled unless they come from a trusted proxy, so they
are honoured only then (docs/compatibility.md, Webhook security); a bad host never weakens the signature check itself.
"""
from __future__ import annotations

import ipaddress
import re
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from core.config import VoiceCallConfig

    from .base import WebhookRequest

FORWARDED_HOST_HEADERS = ("x-forwarded-host", "x-original-host", "ngrok-forwarded-host")
LOOPBACK_BINDS = ("127.0.0.1", "::1", "localhost")
DEFAULT_PORTS = {"http": 80, "https": 443}
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


class UntrustedHost(ValueError):
    """The host the request names is not one we accept (the message says why)."""


def normalize_ip(value: str | None) -> str | None:
    """An IP in canonical form; IPv4-mapped IPv6 (::ffff:a.b.c.d) becomes plain IPv4."""
    if not value:
        return None
    try:
        address = ipaddress.ip_address(value.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return str(address)


def ip_in(ip: str | None, entries: list[str]) -> bool:
    """Whether `ip` is one of `entries` (plain addresses or CIDR ranges, either IP family)."""
    address = normalize_ip(ip)
    if address is None:
        return False
    for entry in entries:
        if "/" in entry:
            network = _network(entry)
            if network is not None and ipaddress.ip_address(address) in network:
                return True
        elif normalize_ip(entry) == address:
            return True
    return False


def _network(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """A CIDR entry; an IPv4-mapped IPv6 range (::ffff:10.0.0.0/120) becomes its IPv4 range."""
    try:
        network = ipaddress.ip_network(entry.strip(), strict=False)
    except ValueError:
        return None
    mapped = getattr(network.network_address, "ipv4_mapped", None)
    if mapped is not None and network.prefixlen >= 96:
        return ipaddress.IPv4Network((mapped, network.prefixlen - 96), strict=False)
    return network


def is_loopback(ip: str | None) -> bool:
    address = normalize_ip(ip)
    return address is not None and ipaddress.ip_address(address).is_loopback


def valid_host(value: str) -> bool:
    """An RFC 1123 host name or a bracketed IPv6 literal, with an optional port; never userinfo."""
    if not value or "@" in value or "/" in value or "\\" in value:
        return False
    host, port = split_host_port(value)
    if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
        return False
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
            return host.endswith("]")
        except ValueError:
            return False
    if len(host) > 253:
        return False
    return all(_LABEL.match(label) for label in host.rstrip(".").split("."))


def split_host_port(value: str) -> tuple[str, str | None]:
    if value.startswith("["):
        end = value.find("]")
        if end == -1:
            return value, None
        rest = value[end + 1 :]
        return value[: end + 1], rest[1:] if rest.startswith(":") else None
    if value.count(":") == 1:
        host, port = value.split(":")
        return host, port
    return value, None


def forwarded_headers_trusted(config: VoiceCallConfig, remote_addr: str | None) -> bool:
    """Forwarded headers count only from a configured trusted proxy, or ngrok on loopback (opt-in)."""
    security = config.webhook_security
    if (security.allowed_hosts or security.trust_forwarding_headers) and ip_in(remote_addr, security.trusted_proxy_ips):
        return True
    tunnel = config.tunnel
    return (
        tunnel.provider == "ngrok"
        and tunnel.allow_ngrok_free_tier_loopback_bypass
        and config.serve.bind in LOOPBACK_BINDS
        and is_loopback(remote_addr)
    )


def _host_allowed(config: VoiceCallConfig, host: str) -> bool:
    allowed = config.webhook_security.allowed_hosts
    if not allowed:
        return True
    name = split_host_port(host)[0].lower()
    return any(name == entry.lower() or host.lower() == entry.lower() for entry in allowed)


def request_origin(config: VoiceCallConfig, request: WebhookRequest) -> tuple[str, str]:
    """(scheme, host[:port]) the carrier used, when no publicUrl is configured.

    Raises UntrustedHost when the host is malformed or outside webhookSecurity.allowedHosts.
    """
    scheme, host = "https", None
    if forwarded_headers_trusted(config, request.remote_addr):
        proto = (request.header("x-forwarded-proto") or "").split(",")[0].strip().lower()
        if proto in ("http", "https"):
            scheme = proto
        for name in FORWARDED_HOST_HEADERS:
            value = (request.header(name) or "").split(",")[0].strip()
            if value:
                if not valid_host(value):
                    raise UntrustedHost(f"{name} is not a valid host name")
                host = value
                break
    if host is None:
        host = (request.header("host") or "").strip()
        if not host or not valid_host(host):
            raise UntrustedHost("the Host header is missing or not a valid host name")
    if not _host_allowed(config, host):
        raise UntrustedHost(f"host {split_host_port(host)[0]!r} is not in webhookSecurity.allowedHosts")
    return scheme, host


def signed_url_candidates(config: VoiceCallConfig, request: WebhookRequest, *, public_base: str | None) -> list[str]:
    """Every form of the public URL the carrier may have signed, most likely first.

    With publicUrl, its scheme, host and path are kept (a proxy may rewrite the path) and the
    request's query applied; otherwise the URL is rebuilt from the request. Port variants cover
    carriers that sign with or without the default port.
    """
    query = f"?{request.query_string}" if request.query_string else ""
    if public_base:
        parts = urlsplit(public_base)
        scheme, netloc, path = parts.scheme, parts.netloc, parts.path or request.path
        extra_ports = [split_host_port(request.header("host") or "")[1]]
    else:
        scheme, netloc = request_origin(config, request)
        path = request.path
        extra_ports = []
    host, port = split_host_port(netloc)
    ports = [port, None, str(DEFAULT_PORTS.get(scheme, "")) or None, *extra_ports]
    candidates: list[str] = []
    for candidate_port in ports:
        location = f"{host}:{candidate_port}" if candidate_port else host
        url = f"{scheme}://{location}{path}{query}"
        if url not in candidates:
            candidates.append(url)
    return candidates
