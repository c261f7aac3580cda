"""`voicecall simulate`: run the carrier simulator against a running gateway and print what happened."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from core.errors import InvalidRequest
from core.urls import webhook_url

if TYPE_CHECKING:
    from core.config import LoadedConfig

    from ..simulator.call import CallReport, Gateway
    from ..simulator.run import SimulationReport

# The simulator (a carrier's side of calls, with its audio and HTTP stubs) is imported by the
# functions that run it: every `voicecall` command builds this parser, few of them simulate.

DEFAULT_LINES = ["Hello, I would like to book an appointment please.", "Thank you, goodbye."]


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
    parser.add_argument("--to", dest="callee", help="Number called (default: fromNumber)")
    parser.add_argument("--rest-port", type=positive_int("--rest-port", 0), default=0,
                        help="Port for the simulated Twilio REST API (point twilio.baseUrl at it)")
    parser.add_argument("--no-listen", action="store_true", help="Skip transcribing what the gateway says (cheaper)")
    parser.add_argument("--max-seconds", type=positive_int("--max-seconds", 1), default=120, help="Give up on a call after (120)")
    parser.add_argument("--json", action="store_true", help="Print the report as JSON")


def gateway_for(loaded: LoadedConfig, base_url: str | None) -> Gateway:
    from ..simulator.call import Gateway

    config = loaded.config
    if config.provider != "twilio":
        raise InvalidRequest("simulate plays Twilio's side of calls: set provider to twilio")
    if not (config.twilio and config.twilio.account_sid and config.twilio.auth_token):
        raise InvalidRequest("simulate signs as Twilio: set twilio.accountSid and twilio.authToken")
    if not base_url:
        host = config.serve.bind if config.serve.bind not in ("0.0.0.0", "::", "") else "127.0.0.1"
        base_url = f"http://{host}:{config.serve.port}"
    return Gateway(base_url=base_url.rstrip("/"), webhook_url=webhook_url(config),
                   account_sid=config.twilio.account_sid, auth_token=config.twilio.auth_token.reveal())


def run(loaded: LoadedConfig, options: dict[str, Any]) -> SimulationReport:
    import asyncio

    from ..simulator.call import Line
    from ..simulator.rest import TwilioRestStub
    from ..simulator.run import simulate

    gateway = gateway_for(loaded, options.get("gateway"))
    lines = options.get("script") or [Line(text) for text in DEFAULT_LINES]
    rest = TwilioRestStub(on_hangup=lambda sid: None, port=options.get("rest_port") or 0).start()
    try:
        return asyncio.run(simulate(
            gateway, lines, calls=options["calls"], ramp_ms=options["ramp_ms"], listen=not options["no_listen"],
            rest=rest, caller=options["caller"], callee=options.get("callee") or loaded.config.from_number or "+15550100000",
            max_seconds=options["max_seconds"],
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
