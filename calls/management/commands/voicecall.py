"""`python manage.py voicecall <command>`: operate calls from the shell (docs/compatibility.md, CLI)."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand

from calls import background
from calls.cli import simulate as simulate_cli
from calls.config import get_config
from calls.models import CallMode
from core.errors import InvalidRequest, VoiceCallError
from core.redact import redact

# Each command imports what it uses inside its method: `status` must not pay for the services,
# the HTTP client or the config schema, and a short-lived CLI process feels every import.

SMOKE_MESSAGE = "Voice call smoke test."


def decimal_int(flag: str, minimum: int):
    """argparse type: a plain decimal integer ≥ minimum (no 0x10, 1e3, or 2.5)."""

    def parse(value: str) -> int:
        text = value.strip()
        if not (text.isascii() and text.isdigit()):
            raise argparse.ArgumentTypeError(f"Invalid numeric value for {flag}: {value}")
        number = int(text)
        if number < minimum:
            raise argparse.ArgumentTypeError(f"{flag} must be at least {minimum}, got {value}")
        return number

    return parse


class Command(BaseCommand):
    help = "Place and control voice calls, check setup, follow records and latency."
    # Config problems are answered by each command itself, not as system-check noise.
    requires_system_checks: list = []

    def add_arguments(self, parser) -> None:
        sub = parser.add_subparsers(dest="command", required=True, metavar="<command>")

        p = sub.add_parser("setup", help="Check that the gateway can place and take calls")
        p.add_argument("--json", action="store_true", help="Print the checks as JSON")

        p = sub.add_parser("smoke", help="Run setup checks, and optionally place one live call")
        p.add_argument("-t", "--to", help="Number to call (E.164)")
        p.add_argument("--message", default=SMOKE_MESSAGE, help="What to say")
        p.add_argument("--mode", default="notify", help="notify or conversation")
        p.add_argument("--yes", action="store_true", help="Really place the call")
        p.add_argument("--json", action="store_true")

        p = sub.add_parser("call", help="Place an outbound call")
        p.add_argument("-m", "--message", required=True, help="Message to speak when the call connects")
        p.add_argument("-t", "--to", help="Number to call (E.164; default: toNumber)")
        p.add_argument("--mode", default="conversation", help="notify (hang up after the message) or conversation")
        p.add_argument("--idempotency-key", help="Your id for this request: repeated, it returns the same call (places one)")

        p = sub.add_parser("start", help="Place an outbound call (alias of call)")
        p.add_argument("--to", required=True, help="Number to call (E.164)")
        p.add_argument("--message", help="Message to speak when the call connects")
        p.add_argument("--mode", default="conversation", help="notify or conversation")
        p.add_argument("--idempotency-key", help="Your id for this request: repeated, it returns the same call (places one)")

        p = sub.add_parser("continue", help="Speak, then wait for and print the caller's answer")
        p.add_argument("--call-id", required=True)
        p.add_argument("--message", required=True)

        p = sub.add_parser("speak", help="Speak on a live call")
        p.add_argument("--call-id", required=True)
        p.add_argument("--message", required=True)

        p = sub.add_parser("dtmf", help="Send DTMF digits on a live call")
        p.add_argument("--call-id", required=True)
        p.add_argument("--digits", required=True)

        p = sub.add_parser("end", help="Hang up a call")
        p.add_argument("--call-id", required=True)

        p = sub.add_parser("status", help="Show one call, or all live calls")
        p.add_argument("--call-id")
        p.add_argument("--json", action="store_true", help="(output is always JSON)")

        p = sub.add_parser("tail", help="Follow call records as they change")
        p.add_argument("--file", help="Follow this log file instead of the database")
        p.add_argument("--since", type=decimal_int("--since", 0), default=25, help="Print the last N first (25)")
        p.add_argument("--poll", type=decimal_int("--poll", 50), default=250, help="Poll interval in ms (250)")

        p = sub.add_parser("latency", help="Turn latency and listen wait percentiles")
        p.add_argument("--file", help="Read a calls.jsonl file instead of the database")
        p.add_argument("--last", type=decimal_int("--last", 1), default=200, help="Use the last N turns/records (200)")

        p = sub.add_parser("simulate", help="Play a carrier's side of calls against the running gateway")
        simulate_cli.add_arguments(p, decimal_int)

        p = sub.add_parser("cluster", help="Run a local cluster: gateways behind a balancer, a Celery worker and beat")
        p.add_argument("--nodes", type=decimal_int("--nodes", 1), default=2, help="Gateway processes (2)")
        p.add_argument("--workers", type=decimal_int("--workers", 0), default=1, help="Celery workers (1)")
        p.add_argument("--server", choices=("daphne", "uvicorn"), default="daphne", help="The gateways' ASGI server")
        p.add_argument("--database-url", help="PostgreSQL for the cluster (default: DATABASE_URL); created when missing")
        p.add_argument("--redis-url", help="Redis for the cluster (default: REDIS_URL)")

        p = sub.add_parser("doctor", help="Find (and with --fix rewrite) legacy config keys")
        p.add_argument("--fix", action="store_true", help="Rewrite the config file (a .bak copy is kept)")

    def handle(self, *args, command: str, **options) -> None:
        # A standalone runtime: side effects run here, now, not in a pool that exits with us.
        background.set_mode("inline")
        try:
            getattr(self, "cmd_" + command.replace("-", "_"))(**options)
        except VoiceCallError as exc:
            self.stderr.write(redact(str(exc)))
            sys.exit(1)
        except KeyboardInterrupt:
            pass

    def out(self, data) -> None:
        self.stdout.write(json.dumps(data, indent=2, ensure_ascii=False))

    # --- setup -------------------------------------------------------------------------

    def cmd_setup(self, *, json: bool = False, **_) -> None:
        from calls.cli.setup import setup_checks, setup_json, setup_text

        loaded = get_config()
        checks = setup_checks(loaded)
        if json:
            self.out(setup_json(checks, loaded.warnings))
        else:
            self.stdout.write(setup_text(checks, loaded.warnings))
        if not all(c.ok for c in checks):
            sys.exit(1)

    def cmd_smoke(self, *, to, message, mode, yes, json: bool = False, **_) -> None:
        from calls.cli.setup import setup_checks, setup_json, setup_text

        loaded = get_config()
        checks = setup_checks(loaded)
        setup = setup_json(checks, loaded.warnings)
        if not setup["ok"]:
            self.out({"ok": False, "setup": setup}) if json else self.stdout.write(setup_text(checks, loaded.warnings))
            sys.exit(1)
        if not to:
            result, text = {"ok": True, "setup": setup, "liveCall": False}, "live-call: skipped (pass --to and --yes to place one)"
        elif not yes:
            result = {"ok": True, "setup": setup, "liveCall": False, "wouldCall": to}
            text = f"live-call: dry run for {to} (add --yes to place it)"
        else:
            call_id = self.place_call("voicecall.start", to=to, message=message, mode=mode)
            result = {"ok": True, "setup": setup, "liveCall": True, "callId": call_id}
            text = f"live-call: started {call_id}"
        if json:
            self.out(result)
        else:
            self.stdout.write(setup_text(checks, loaded.warnings) + "\n" + text)

    # --- calls: through the running gateway when it answers, standalone otherwise ----------

    def delegate(self, via_gateway, standalone):
        """What the running gateway answers, or `standalone()` when no gateway can be reached.

        Never binds a port: the standalone runtime talks to the carrier and the database only.
        """
        from calls.cli.gateway import GatewayUnreachable

        try:
            return via_gateway()
        except GatewayUnreachable as exc:
            if not exc.quiet:
                self.stderr.write(redact(f"voicecall: {exc}; running standalone"))  # the URL may hold a password
            return standalone()

    def place_call(self, method: str, *, to, message, mode, idempotency_key=None) -> str:
        return self.placed(method, to=to, message=message, mode=mode, idempotency_key=idempotency_key)["callId"]

    def placed(self, method: str, *, to, message, mode, idempotency_key=None) -> dict:
        """The gateway's (or the standalone runtime's) answer to placing a call: callId, initiated, ..."""
        from calls import services
        from calls.cli.gateway import placement_timeout_s, rpc_call

        mode = mode if mode in CallMode.values else None  # the reference: an unknown mode means the default
        params = {"to": to, "message": message, "mode": mode, "idempotencyKey": idempotency_key}
        return self.delegate(
            lambda: rpc_call(method, params, timeout=placement_timeout_s()),
            lambda: services.call_initiate_request(to=to, message=message, mode=mode,
                                                   idempotency_key=idempotency_key).as_dict(),
        )

    def placed_out(self, result: dict) -> None:
        """The call's id; a call that is only queued says so (the carrier has not accepted its dial yet)."""
        if result.get("initiated") is False:
            self.out({"callId": result["callId"], "queued": result.get("queued", True), "status": result.get("status", "")})
        else:
            self.out({"callId": result["callId"]})

    def cmd_call(self, *, message, to, mode, idempotency_key=None, **_) -> None:
        to = to or get_config().config.to_number
        if not to:
            raise InvalidRequest("Missing --to and no toNumber configured")
        self.placed_out(self.placed("voicecall.initiate", to=to, message=message, mode=mode, idempotency_key=idempotency_key))

    def cmd_start(self, *, to, message, mode, idempotency_key=None, **_) -> None:
        self.placed_out(self.placed("voicecall.start", to=to, message=message, mode=mode, idempotency_key=idempotency_key))

    def cmd_continue(self, *, call_id, message, **_) -> None:
        from calls import services
        from calls.cli.gateway import continue_via_gateway

        self.out(self.delegate(
            lambda: continue_via_gateway(call_id, message),
            lambda: services.call_continue_request(call_id=call_id, message=message).as_dict(),
        ))

    def cmd_speak(self, *, call_id, message, **_) -> None:
        from calls import services
        from calls.cli.gateway import rpc_call

        result = self.delegate(
            lambda: rpc_call("voicecall.speak", {"callId": call_id, "message": message}),
            lambda: services.call_speak_request(call_id=call_id, message=message).as_dict(),
        )
        if result.get("success") is False:
            raise VoiceCallError(result.get("error") or "speak failed")
        self.out(result)

    def cmd_dtmf(self, *, call_id, digits, **_) -> None:
        from calls import services
        from calls.cli.gateway import rpc_call

        self.out(self.delegate(
            lambda: rpc_call("voicecall.dtmf", {"callId": call_id, "digits": digits}),
            lambda: services.call_send_dtmf_request(call_id=call_id, digits=digits).as_dict(),
        ))

    def cmd_end(self, *, call_id, **_) -> None:
        from calls import services
        from calls.cli.gateway import rpc_call

        self.out(self.delegate(
            lambda: rpc_call("voicecall.end", {"callId": call_id}),
            lambda: services.call_end_request(call_id=call_id).as_dict(),
        ))

    def cmd_status(self, *, call_id=None, **_) -> None:
        from calls.selectors import call_find, call_record, calls_live

        # A read of the shared store: the full record (transcript, metadata) with or without a gateway.
        if call_id is None:
            self.out({"found": True, "calls": [call_record(call) for call in calls_live()]})
            return
        call = call_find(ref=call_id)
        self.out(call_record(call) if call else {"found": False})

    # --- records -----------------------------------------------------------------------

    def cmd_tail(self, *, file, since, poll, **_) -> None:
        from calls.cli.follow import follow_calls, follow_file

        def write(line: str) -> None:
            self.stdout.write(line)
            self.stdout.flush()

        if file:
            path = Path(file).expanduser()
            if not path.is_file():
                raise InvalidRequest(f"No log file at {path}")
            follow_file(path, write, since=since, poll_ms=poll, stop=lambda: False)
        else:
            follow_calls(write, since=since, poll_ms=poll, stop=lambda: False)

    def cmd_latency(self, *, file, last, **_) -> None:
        from calls.cli.stats import latency_from_db, latency_from_file

        if file:
            path = Path(file).expanduser()
            if not path.is_file():
                raise InvalidRequest(f"No log file at {path}")
            self.out(latency_from_file(path, last))
        else:
            self.out(latency_from_db(last))

    def cmd_simulate(self, *, json: bool = False, **options) -> None:
        report = simulate_cli.run(get_config(), options)
        if json:
            self.out({"summary": report.summary(), "calls": [asdict(call) for call in report.calls]})
        else:
            self.stdout.write(simulate_cli.report_text(report))

    def cmd_cluster(self, *, nodes, workers, server, database_url, redis_url, **_) -> None:
        import os
        import signal
        import threading

        from calls.cli.cluster import Cluster, ClusterError, describe, ensure_postgres, ensure_redis, run_until_stopped

        database_url = database_url or os.environ.get("DATABASE_URL", "")
        redis_url = redis_url or os.environ.get("REDIS_URL", "")
        if not database_url or not redis_url:
            missing = " and ".join(name for name, value in (("--database-url (or DATABASE_URL)", database_url),
                                                             ("--redis-url (or REDIS_URL)", redis_url)) if not value)
            raise InvalidRequest(f"A cluster needs PostgreSQL and Redis: give {missing} (`make cluster` sets both)")
        loaded = get_config()
        if not loaded.ok:
            raise InvalidRequest("The config has errors; fix them first (manage.py voicecall setup):\n"
                                 + "\n".join(loaded.errors))
        serve = loaded.config.serve
        try:
            services = [ensure_postgres(database_url), ensure_redis(redis_url)]
        except ClusterError as exc:
            raise VoiceCallError(str(exc)) from None
        cluster = Cluster(settings.DATA_DIR, database_url=database_url, redis_url=redis_url,
                          config_path=Path(settings.VOICECALL_CONFIG).expanduser() if settings.VOICECALL_CONFIG else None,
                          nodes=nodes, workers=workers, port=serve.port, bind=serve.bind, server=server,
                          secret_key=os.environ.get("SECRET_KEY") or None)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        self.stdout.write(f"Starting a cluster on {' and '.join(services)} (data in {settings.DATA_DIR})…")
        self.stdout.flush()
        try:
            cluster.start()
            self.stdout.write("\n".join(["Cluster ready:", *describe(cluster),
                                          f"Gateway at http://{serve.bind}:{serve.port} (Ctrl-C stops everything)"]))
            self.stdout.flush()
            run_until_stopped(cluster, lambda line: (self.stderr.write(line), self.stderr.flush()),
                              stop_requested=stop.is_set)
        except ClusterError as exc:
            raise VoiceCallError(str(exc)) from None
        except KeyboardInterrupt:
            pass
        finally:
            self.stdout.write("Stopping the cluster…")
            self.stdout.flush()
            cluster.stop()
            self.stdout.write("Cluster stopped.")

    def cmd_doctor(self, *, fix, **_) -> None:
        from calls.cli.doctor import DoctorError, doctor, doctor_text

        if not settings.VOICECALL_CONFIG:
            self.stdout.write("No config file (VOICECALL_CONFIG is not set): nothing to check.")
            return
        try:
            report = doctor(Path(settings.VOICECALL_CONFIG).expanduser(), fix=fix)
        except DoctorError as exc:
            raise VoiceCallError(str(exc)) from exc
        self.stdout.write(doctor_text(report))
