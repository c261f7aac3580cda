"""`voicecall setup`: the readiness checks and the fix for each failing one (also the admin's setup page), and webhook exposure."""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from core.config import LoadedConfig
from core.config.errors import key_path
from core.config.schema import VoiceCallConfig
from core.urls import webhook_url

CGNAT = ipaddress.ip_network("100.64.0.0/10")


@dataclass(frozen=True)
class Check:
    id: str
    ok: bool
    message: str
    # What to do about a failing check: concrete steps naming the key, variable or command.
    fixes: tuple[str, ...] = ()
    # Not run: its answer would be about defaults, not about the file (which is invalid).
    skipped: bool = False

    @property
    def status(self) -> str:
        return "SKIP" if self.skipped else "OK" if self.ok else "FAIL"


SKIPPED = "not checked until the config file is valid"
CHECK_IDS = ("plugin-enabled", "provider", "provider-config", "webhook-exposure", "mode")


def setup_checks(loaded: LoadedConfig) -> list[Check]:
    """The checks in their documented order; for a file that could not be read, parsed or validated,
    its errors first and the other checks skipped (they would judge the defaults standing in for it)."""
    if loaded.stand_in and loaded.errors:
        file = config_file(loaded)
        first = Check("provider-config", False, invalid_file_message(loaded),
                      tuple(error_fix(error, file) for error in loaded.errors))
        return [first] + [Check(cid, False, SKIPPED, skipped=True) for cid in CHECK_IDS if cid != first.id]
    config = loaded.config
    provider = config.provider if config.enabled else None
    file = config_file(loaded)
    checks = [
        Check(
            "plugin-enabled", config.enabled,
            "Voice calls enabled" if config.enabled else "Voice calls disabled (set enabled: true)",
            () if config.enabled else (
                f"Set enabled: true in {file} (inside the plugins wrapper, plugins.entries.voice-call.enabled "
                "must not be false either), then restart the gateway.",
            ),
        ),
        Check(
            "provider", bool(provider), f"Provider: {provider}" if provider else "Provider not configured",
            () if provider else (f"Enable voice calls and set provider to twilio, telnyx, plivo or mock in {file}.",),
        ),
        Check(
            "provider-config",
            not loaded.errors,
            "Provider config valid" if not loaded.errors else "; ".join(loaded.errors),
            tuple(error_fix(error, file) for error in loaded.errors),
        ),
    ]
    exposed, message, status = exposure_check(config)
    checks.append(Check("webhook-exposure", exposed, message, () if exposed else (_exposure_fix(config, file, status),)))
    checks.append(_mode_check(config, file))
    return checks


def invalid_file_message(loaded: LoadedConfig) -> str:
    """The errors of a file that cannot be used, each with its key path, naming the file."""
    errors = "; ".join(loaded.errors)
    if all(error.startswith("VOICECALL_CONFIG: ") for error in loaded.errors):
        return errors  # missing, unreadable, not JSON: these name the file
    count = len(loaded.errors)
    where = f"config file {loaded.path}" if loaded.path else "config"
    return f"The {where} is invalid ({count} error{'s' if count != 1 else ''}): {errors}"


def config_file(loaded: LoadedConfig) -> str:
    """How fixes name the file to edit."""
    if loaded.path:
        return f"the config file {loaded.path}"
    return "a config file (none is loaded: write one and set VOICECALL_CONFIG to its path)"


def error_fix(error: str, file: str) -> str:
    """What to do about one config error, from its key path and message."""
    path, message = key_path(getattr(error, "path", ())), getattr(error, "message", str(error))
    if not path:
        if "no config file at" in message:
            return ("Create that file, or point VOICECALL_CONFIG at your config file "
                    "(unset, the gateway runs on defaults with the mock carrier).")
        if "cannot read" in message:
            return "Make the file named by VOICECALL_CONFIG readable by the user the gateway runs as."
        if "not valid JSON" in message:
            return "Correct the file's syntax (JSON or JSON5) at the line and column named."
        return f"Correct {file}: {message}."
    if message.startswith("required (or set "):
        variable = message.removeprefix("required (or set ").rstrip(")")
        return f"Set {path} in {file}, or the environment variable {variable} of every gateway and worker process."
    if message.startswith("environment variable ") and message.endswith(" is not set"):
        variable = message.removeprefix("environment variable ").removesuffix(" is not set")
        return (f"Set the environment variable {variable} (it holds {path}) for every gateway and worker process, "
                f"or change {path} in {file}.")
    if "secret file" in message:
        return f"Put the credential in the file {path} names (readable by the gateway's user), or change {path} in {file}."
    if message == "unknown key":
        return f"Remove {path} from {file}, or correct its spelling (docs/configuration.md lists every key)."
    if message.startswith("required"):
        return f"Set {path} in {file} ({message})."
    return f"Change {path} in {file}: {message}."


def warning_fix(warning: str, file: str) -> str:
    """What to do about a config warning ("" when there is nothing to do)."""
    if warning.startswith("legacy config keys"):
        return "Run: python manage.py voicecall doctor --fix"
    if warning.startswith("SECURITY WARNING"):
        return f"Remove skipSignatureVerification from {file} before the gateway takes real calls."
    if "does not look like" in warning:
        key = warning.split(":", 1)[0].split(" (from ", 1)[0]
        return (f"Copy {key} again from your carrier's console (a wrong one is refused at the first call); "
                "the warning goes once it has the expected shape.")
    if "no effect yet" in warning:
        return f"Remove these keys from {file}, or leave them: they change nothing."
    if warning.startswith("ignoring top-level keys"):
        return f"Move these keys into plugins.entries.voice-call.config in {file}, or remove them."
    return ""


def _exposure_fix(config: VoiceCallConfig, file: str, status: dict | None = None) -> str:
    if config.public_url:
        return (f"Set publicUrl in {file} to the public https address the carrier reaches this gateway at "
                "(e.g. https://voice.example.com, through your proxy or tunnel), not a local or private one.")
    error = (status or {}).get("error") or ""
    provider = (status or {}).get("configured")
    if provider == "ngrok":
        if error.startswith("no ngrok authtoken") or "authtoken cannot be read" in error:
            return (f"Set tunnel.ngrokAuthToken in {file}, or the environment variable NGROK_AUTHTOKEN of the gateway "
                    "process (your token is on the ngrok dashboard), then restart the gateway.")
        if error.startswith("not running"):
            return "Start the gateway (python manage.py gateway): the ngrok tunnel runs inside it."
        return ("Correct what ngrok said above (authtoken, tunnel.ngrokDomain, network), then restart the gateway; "
                "the gateway retries a failed start every 30 s.")
    if provider in ("tailscale-serve", "tailscale-funnel"):
        mode = provider.removeprefix("tailscale-")
        if error.startswith("no tailscale binary"):
            return ("Install Tailscale 1.52 or later so `tailscale` is on the gateway's PATH, run `tailscale up`, "
                    "then restart the gateway.")
        return (f"Check `tailscale status` (logged in, HTTPS certificates enabled{', Funnel allowed' if mode == 'funnel' else ''}), "
                f"then restart the gateway or run: python manage.py voicecall expose --mode {mode}")
    return (f"Set publicUrl in {file} to the public https address the carrier reaches this gateway at, e.g. "
            f"https://voice.example.com: the webhook is then that address with serve.path ({config.webhook_path()}). "
            "Or let the gateway open a tunnel: tunnel.provider ngrok (with tunnel.ngrokAuthToken), or tailscale.mode "
            "serve or funnel.")


def _mode_check(config: VoiceCallConfig, file: str) -> Check:
    realtime, streaming = config.realtime, config.streaming
    if realtime.enabled and streaming.enabled:
        return Check("mode", False, "realtime.enabled and streaming.enabled are both true; enable only one",
                     (f"Set realtime.enabled or streaming.enabled to false in {file}.",))
    if realtime.enabled:
        from calls.realtime.provider import realtime_provider
        from providers.realtime.base import RealtimeError

        try:
            provider = realtime_provider(config)
        except RealtimeError as exc:
            return Check("mode", False, f"Realtime voice cannot run: {exc}", (
                f"Correct the realtime settings named above in {file} (realtime.provider, "
                "realtime.providers.<id>.apiKey, or the provider's variable: OPENAI_API_KEY, GEMINI_API_KEY), "
                "or set realtime.enabled: false.",
            ))
        return Check("mode", True, f"Realtime voice via {provider.name} at {config.realtime_stream_path()}")
    if streaming.enabled:
        return Check("mode", True, f"Streaming transcription via {streaming.provider or 'the first registered provider'}")
    return Check("mode", True, "Notify/conversation calls use normal TTS/STT flow")


def webhook_exposure(config: VoiceCallConfig) -> tuple[bool, str]:
    """Can the carrier reach our webhook? Local and private publicUrls are refused; a tunnel counts only when it is up."""
    exposed, message, _ = exposure_check(config)
    return exposed, message


def exposure_check(config: VoiceCallConfig) -> tuple[bool, str, dict | None]:
    """(reachable, message, the exposure status when a tunnel is involved)."""
    if config.provider == "mock":
        return True, "Mock provider does not need a public webhook", None
    if config.public_url:
        host = urlsplit(config.public_url).hostname or ""
        if is_local_host(host):
            return False, f"publicUrl {config.public_url} points at a local or private address the carrier cannot reach", None
        return True, f"Webhooks at {webhook_url(config)}", None
    from calls.exposure import exposure_status
    from calls.gateway import get_gateway

    status = exposure_status(config, get_gateway().exposure, check_tunnel=True)
    configured = status["configured"]
    if status["state"] == "up":
        by = " (added by voicecall expose)" if status.get("startedBy") == "cli" else ""
        # As the reference, serve counts; but say plainly who can reach it.
        reach = "; tailnet only: a carrier on the internet needs funnel" if status["provider"] == "tailscale-serve" else ""
        return True, f"Webhooks exposed through {status['provider']}{by} at {status['webhookUrl']}{reach}", status
    if configured != "none":
        return False, f"Webhooks not exposed: {configured} is {status['state']}: {status.get('error') or 'no reason given'}", status
    return False, "Set publicUrl or configure tunnel/tailscale so the carrier can reach the webhook", status


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


def setup_json(checks: list[Check], warnings: list[str] = (), loaded: LoadedConfig | None = None) -> dict:
    """The checks (a skipped one: "ok": false, "skipped": true); the config's errors by key path with the
    file, the fixes of failing checks by check id, and the config's warnings (legacy keys, settings not
    built yet, identifiers of the wrong shape), when there are any."""
    result = {"ok": all(c.ok for c in checks), "checks": [_check_json(c) for c in checks]}
    if loaded is not None and loaded.errors:
        result["configFile"] = loaded.path
        result["configErrors"] = [
            {"path": getattr(error, "key_path", "") or None, "message": getattr(error, "message", str(error))}
            for error in loaded.errors
        ]
    fixes = {c.id: list(c.fixes) for c in checks if not c.ok and c.fixes}
    if fixes:
        result["fixes"] = fixes
    if warnings:
        result["warnings"] = list(warnings)
    return result


def _check_json(check: Check) -> dict:
    data = {"id": check.id, "ok": check.ok, "message": check.message}
    if check.skipped:
        data["skipped"] = True
    return data


def setup_text(checks: list[Check], warnings: list[str] = ()) -> str:
    head = "Voice Call setup: OK" if all(c.ok for c in checks) else "Voice Call setup: needs attention"
    lines = [head] + [f"{c.status} {c.id}: {c.message}" for c in checks]
    # Warnings never fail setup, but a setting that does nothing must not pass in silence.
    return "\n".join(lines + [f"WARN {warning}" for warning in warnings])


def fixes_text(checks: list[Check]) -> str:
    """One "FIX <check>: <step>" line per step of each failing check ("" when nothing fails)."""
    return "\n".join(f"FIX {c.id}: {fix}" for c in checks if not c.ok for fix in c.fixes)
