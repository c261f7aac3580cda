"""`voicecall simulate`: run the carrier simulator against a running gateway and print what happened.

Inbound, the simulated carrier (the gateway's provider, or --carrier) calls the gateway. With
--outbound the gateway dials: the command places the call through the running gateway's RPC
(`voicecall.initiate`, as `voicecall call` does; --no-place waits for calls placed some other way),
the gateway's carrier baseUrl must be the simulator's REST API (its loopback port is taken from
that baseUrl, or --rest-port), and the callee answers and says the script.
"""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from urllib.parse import urlsplit

from core.errors import InvalidRequest
from core.urls import webhook_url

if TYPE_CHECKING:
    from core.config import LoadedConfig

    from ..simulator.call import CallReport, Gateway
    from ..simulator.run import SimulationReport

# The simulator (a carrier's side of calls, with its audio and HTTP stubs) is imported by the
# functions that run it: every `voicecall` command builds this parser, few of them simulate.

DEFAULT_LINES = ["Hello, I would like to book an appointment please.", "Thank you, goodbye."]
DEFAULT_OUTBOUND_MESSAGE = "Hello, this is the clinic calling about your appointment."
CARRIERS = ("twilio", "telnyx", "plivo")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
# The path each carrier's REST base URL ends with (the stub answers below it).
REST_ROOTS = {"twilio": "", "telnyx": "/v2", "plivo": "/v1"}


class ScriptAction(argparse.Action):
    """--say and --interrupt append to one ordered caller script."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from ..simulator.call import Line

        script = list(getattr(namespace, self.dest, None) or [])
        script.append(Line(values, interrupt=option_string == "--interrupt"))
        setattr(namespace, self.dest, script)


def add_arguments(parser: argparse.ArgumentParser, positive_int) -> None:
    parser.add_argument("--gateway", help="Base URL of the running gateway (default: serve.bind and serve.port)")
    parser.add_argument("--calls", type=positive_int("--calls", 1), default=1, help="Simultaneous calls (1)")
    parser.add_argument("--ramp-ms", type=positive_int("--ramp-ms", 0), default=200, help="Delay between call starts (200)")
    parser.add_argument("--say", dest="script", action=ScriptAction, help="A caller line (repeat for more)")
    parser.add_argument("--interrupt", dest="script", action=ScriptAction, help="A caller line that talks over the next reply")
    parser.add_argument("--from", dest="caller", default="+15550100001", help="Caller number")
    parser.add_argument("--to", dest="callee", help="Number called (default: fromNumber; with --outbound, toNumber)")
    parser.add_argument("--carrier", choices=CARRIERS, help="The carrier to play (default: the gateway's provider)")
    parser.add_argument("--outbound", action="store_true",
                        help="The gateway dials and the simulated callee answers (placed through the gateway's RPC)")
    parser.add_argument("--no-place", action="store_true",
                        help="With --outbound: do not place the calls, wait for the gateway to dial them")
    parser.add_argument("--message", help="With --outbound: what the gateway says first (the call's message)")
    parser.add_argument("--rest-port", type=positive_int("--rest-port", 0), default=0,
                        help="Port for the simulated carrier's REST API (default: the port of <carrier>.baseUrl "
                             "when it is a loopback URL; point <carrier>.baseUrl at it)")
    parser.add_argument("--telnyx-private-key", metavar="FILE",
                        help="Ed25519 private key (PEM, or base64 of the seed) signing Telnyx webhooks; "
                             "its public key must be telnyx.publicKey")
    parser.add_argument("--telnyx-keygen", action="store_true",
                        help="Print a new Telnyx key pair for the simulator (private) and telnyx.publicKey, and exit")
    parser.add_argument("--out-of-order", type=positive_int("--out-of-order", 0), default=0, metavar="N",
                        help="Send every N-th media frame after the next one (a carrier that does not keep order)")
    parser.add_argument("--no-listen", action="store_true", help="Skip transcribing what the gateway says (cheaper)")
    parser.add_argument("--max-seconds", type=positive_int("--max-seconds", 1), default=120, help="Give up on a call after (120)")
    parser.add_argument("--json", action="store_true", help="Print the report as JSON")


def carrier_of(loaded: LoadedConfig, options: dict[str, Any]) -> str:
    """The carrier to play: --carrier, which must be the gateway's provider (it checks no other's webhooks)."""
    provider = loaded.config.provider
    carrier = options.get("carrier") or provider
    if carrier not in CARRIERS:
        raise InvalidRequest(f"simulate plays {', '.join(CARRIERS)}: set provider to one of them (it is {provider})")
    if carrier != provider:
        raise InvalidRequest(f"the gateway's provider is {provider}: it would refuse {carrier}'s webhooks "
                             f"(set provider to {carrier}, or simulate --carrier {provider})")
    return carrier


def gateway_for(loaded: LoadedConfig, base_url: str | None, carrier: str = "twilio",
                telnyx_private_key: str | None = None) -> Gateway:
    """Where the gateway is and the carrier's credentials to sign for it, checked against the config."""
    from ..simulator.call import Gateway

    config = loaded.config
    if config.provider != carrier:
        raise InvalidRequest(f"simulate plays {carrier}'s side of calls: set provider to {carrier}")
    if not base_url:
        host = config.serve.bind if config.serve.bind not in ("0.0.0.0", "::", "") else "127.0.0.1"
        base_url = f"http://{host}:{config.serve.port}"
    site = {"base_url": base_url.rstrip("/"), "webhook_url": webhook_url(config), "carrier": carrier}
    if carrier == "twilio":
        if not (config.twilio and config.twilio.account_sid and config.twilio.auth_token):
            raise InvalidRequest("simulate signs as Twilio: set twilio.accountSid and twilio.authToken")
        return Gateway(**site, account_sid=config.twilio.account_sid, auth_token=config.twilio.auth_token.reveal())
    if carrier == "plivo":
        if not (config.plivo and config.plivo.auth_id and config.plivo.auth_token):
            raise InvalidRequest("simulate signs as Plivo: set plivo.authId and plivo.authToken")
        return Gateway(**site, account_sid=config.plivo.auth_id, auth_token=config.plivo.auth_token.reveal())
    return Gateway(**site, account_sid=(config.telnyx.connection_id if config.telnyx else None) or "",
                   telnyx_private_key=_telnyx_key(config, telnyx_private_key))


def _telnyx_key(config, path: str | None):
    """The private key signing the simulated Telnyx webhooks, checked against telnyx.publicKey."""
    from pathlib import Path

    from ..simulator.telnyx import load_private_key, public_key_text

    if not (config.telnyx and config.telnyx.public_key):
        raise InvalidRequest("simulate signs as Telnyx: set telnyx.publicKey to the public key of "
                             "`voicecall simulate --telnyx-keygen`")
    if not path:
        raise InvalidRequest("simulate signs as Telnyx with --telnyx-private-key FILE (make a key pair with "
                             "`voicecall simulate --telnyx-keygen`; its public key goes in telnyx.publicKey)")
    try:
        key = load_private_key(Path(path).expanduser().read_text())
    except OSError as exc:
        raise InvalidRequest(f"--telnyx-private-key: cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise InvalidRequest(f"--telnyx-private-key: {exc}") from None
    from core.config.keys import PublicKeyError, load_public_key

    try:
        configured = load_public_key(config.telnyx.public_key.reveal())
    except PublicKeyError as exc:
        raise InvalidRequest(str(exc)) from None
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    if configured.public_bytes(Encoding.Raw, PublicFormat.Raw) != key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw):
        raise InvalidRequest(f"--telnyx-private-key is not the key of telnyx.publicKey (its public key is "
                             f"{public_key_text(key)})")
    return key


def keygen() -> dict[str, str]:
    """A new Ed25519 key pair: the private key for --telnyx-private-key, the public one for telnyx.publicKey."""
    from ..simulator.telnyx import new_private_key, private_key_text, public_key_text

    key = new_private_key()
    return {"privateKey": private_key_text(key), "publicKey": public_key_text(key),
            "use": "save privateKey in a file for --telnyx-private-key; set telnyx.publicKey to publicKey"}


def rest_port(loaded: LoadedConfig, carrier: str, options: dict[str, Any]) -> int:
    """The simulated REST API's port: --rest-port, else the loopback port of <carrier>.baseUrl (else any).

    Outbound calls and Telnyx's inbound answer reach the simulator only through that API: then the
    gateway's baseUrl must point at it.
    """
    settings = getattr(loaded.config, carrier, None)
    base = (getattr(settings, "base_url", None) or "") if settings else ""
    parts = urlsplit(base)
    configured = parts.port if parts.scheme == "http" and parts.hostname in LOOPBACK else None
    port = options.get("rest_port") or configured or 0
    needs = options.get("outbound") or carrier == "telnyx"
    if needs and (not configured or configured != port):
        example = f"http://127.0.0.1:{port or 3390}{REST_ROOTS[carrier]}"
        raise InvalidRequest(f"the gateway reaches the simulated {carrier} only through its REST API: set "
                             f"{carrier}.baseUrl to {example} (now {base or 'unset'}) and restart the gateway")
    return port


def place_through_gateway(to: str, message: str):
    """Ask the running gateway for one outbound conversation (its RPC), as `voicecall call` does."""
    from .gateway import GatewayUnreachable, placement_timeout_s, rpc_call

    def place(index: int) -> None:
        try:
            rpc_call("voicecall.initiate", {"to": to, "message": message, "mode": "conversation"},
                     timeout=placement_timeout_s())
        except GatewayUnreachable as exc:
            raise InvalidRequest(f"{exc}: start the gateway first (voicecall serve)") from None

    return place


def run(loaded: LoadedConfig, options: dict[str, Any]) -> SimulationReport:
    import asyncio

    from ..simulator.call import Line
    from ..simulator.rest import RestStub
    from ..simulator.run import simulate

    carrier = carrier_of(loaded, options)
    gateway = gateway_for(loaded, options.get("gateway"), carrier, options.get("telnyx_private_key"))
    lines = options.get("script") or [Line(text) for text in DEFAULT_LINES]
    outbound = bool(options.get("outbound"))
    callee = options.get("callee") or (loaded.config.to_number if outbound else loaded.config.from_number) \
        or "+15550100000"
    place = None
    if outbound and not options.get("no_place"):
        place = place_through_gateway(callee, options.get("message") or DEFAULT_OUTBOUND_MESSAGE)
    try:
        rest = RestStub(carrier, port=rest_port(loaded, carrier, options)).start()
    except OSError as exc:
        raise InvalidRequest(f"the simulated {carrier} REST API cannot listen: {exc.strerror or exc}") from None
    try:
        return asyncio.run(simulate(
            gateway, lines, calls=options["calls"], ramp_ms=options["ramp_ms"], listen=not options["no_listen"],
            rest=rest, caller=options["caller"], callee=callee, max_seconds=options["max_seconds"],
            outbound=outbound, place=place, swap_every=options.get("out_of_order") or 0,
            dial_timeout=options["max_seconds"] if options.get("no_place") else 30.0,
        ))
    finally:
        rest.stop()


def report_text(report: SimulationReport) -> str:
    lines: list[str] = []
    for call in report.calls:
        lines.append(f"call {call.call_sid}: {call.outcome}" + (f" ({call.error})" if call.error else ""))
        if len(report.calls) == 1:
            lines.extend(_timeline(call))
    summary = report.summary()
    lines.append(
        f"calls {summary['calls']} {summary['outcomes']} in {summary['seconds']} s; "
        f"turn latency p50 {summary['turnLatencyMs']['p50']} ms p95 {summary['turnLatencyMs']['p95']} ms; "
        f"playback jitter p50 {summary['playbackJitterMs']['p50']} ms p99 {summary['playbackJitterMs']['p99']} ms; "
        f"clears {summary['clears']}"
    )
    return "\n".join(lines)


def _timeline(call: CallReport) -> list[str]:
    out = [f"  {t.at:7.2f}s  {t.who:>7}: {t.text}" for t in sorted(call.transcript, key=lambda t: t.at)]
    out += [f"  turn {i}: {ms:.0f} ms" for i, ms in enumerate(call.turn_latencies_ms, 1)]
    return out
