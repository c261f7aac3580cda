"""`python manage.py voicecall <command>`: operate calls from the shell (docs/compatibility.md, CLI)."""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import asdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, DjangoHelpFormatter
from django.db import DatabaseError

from calls import background
from calls.cli import simulate as simulate_cli
from calls.config import get_config
from calls.models import CallMode
from core.errors import CallNotFound, InvalidRequest, VoiceCallError
from core.redact import redact

# Each command imports what it uses inside its method: `status` must not pay for the services,
# the HTTP client or the config schema, and a short-lived CLI process feels every import.

SMOKE_MESSAGE = "Voice call smoke test."
AT_HELP = "Place the call later: an ISO 8601 time with its UTC offset (2026-12-05T10:30:00+01:00) or a delay (+15m, +2h)"
QUIET_HELP = "Print only the call id (for scripts: CALL_ID=$(voicecall call ... -q))"
RECORD_HELP = "--record: the carrier records this call; --no-record: no recording at all (default: the configured recording)"
CALL_ID_HELP = "The call: the id `call` printed, or the carrier's call id"
MODE_HELP = ("notify (say the message, then hang up) or conversation (greet, then listen and answer); "
             "anything else means the configured default")
SINCE_FORMS = ("a time ago (30s, 10m, 2h, 1d) or an ISO 8601 time "
               "(2026-12-05T10:30:00Z, 2026-12-05T10:30:00+01:00; without an offset: UTC)")
EXIT_CODES = """exit codes (every command):
  0  ok
  1  the operation failed, or the call (or file) was not found;
     setup, smoke, doctor and expose: something needs attention
  2  usage error: unknown command or flag, missing or malformed value"""
# SQLite's and PostgreSQL's words for a database that was never migrated.
NO_TABLES = re.compile(r"no such table|relation .* does not exist")
EXIT_CODES_LINE = "Exit codes: 0 ok, 1 failed or not found, 2 usage error."


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


SINCE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def since_time(value: str) -> datetime:
    """argparse type for `tail --since`: `10m` (that long ago) or an ISO 8601 time; naive times are UTC."""
    text = value.strip()
    if text.isascii() and text.isdigit():
        raise argparse.ArgumentTypeError(
            f"--since takes {SINCE_FORMS}, got {value!r}; for the last N records use --last {text}")
    if len(text) > 1 and text[-1].lower() in SINCE_UNITS and text[:-1].isascii() and text[:-1].isdigit():
        try:
            return datetime.now(timezone.utc) - timedelta(seconds=int(text[:-1]) * SINCE_UNITS[text[-1].lower()])
        except OverflowError:  # before year 1 (or beyond what a timedelta holds)
            raise argparse.ArgumentTypeError(f"--since {value} is further back than any record; give {SINCE_FORMS}") from None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--since takes {SINCE_FORMS}, got {value!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def dtmf_digits(value: str) -> str:
    """argparse type for `dtmf --digits`: the keypad characters carriers accept."""
    from core.phone import DTMF_PATTERN

    if not DTMF_PATTERN.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"--digits may only contain 0-9, *, # and the pauses w, p or comma (e.g. 1234#), got {value!r}")
    return value


class HelpFormatter(DjangoHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Django's (its own options last), keeping the epilog's lines as written."""


class Command(BaseCommand):
    help = "Place and control voice calls, check setup, follow records and latency."
    # Config problems are answered by each command itself, not as system-check noise.
    requires_system_checks: list = []

    def add_arguments(self, parser) -> None:
        parser.formatter_class = HelpFormatter
        parser.epilog = EXIT_CODES + "\n\n`voicecall <command> --help` describes a command and its flags."
        sub = parser.add_subparsers(dest="command", required=True, metavar="<command>")
        self.subcommand_parsers = sub.choices  # for usage errors found after parsing (usage_error)

        def command(name: str, summary: str, description: str):
            return sub.add_parser(name, help=summary, description=f"{description}\n\n{EXIT_CODES_LINE}",
                                  formatter_class=argparse.RawDescriptionHelpFormatter)

        p = command("setup", "Check that the gateway can place and take calls",
                    "Check the call config and what it needs: voice calls enabled, the carrier and its settings,\n"
                    "webhook exposure and the call mode. Exits 1 when the config is invalid or a check fails\n"
                    "(what to do about each failure goes to stderr).")
        p.add_argument("--json", action="store_true", help="Print the checks as JSON")

        p = command("expose", "Show the public exposure (tunnel), or start/stop it",
                    "Without --mode: show the configured exposure, whether it is up and the public URL the\n"
                    "carrier is given (exits 1 when a configured tunnel is down). With --mode: change it.")
        p.add_argument("--mode", choices=("serve", "funnel", "ngrok", "off"),
                       help="serve or funnel: add the Tailscale handler now; off: remove it; ngrok: the gateway's "
                            "tunnel (it lives with the gateway process). Without: show what is configured and up")
        p.add_argument("--json", action="store_true", help="Print the exposure as JSON")

        p = command("smoke", "Run setup checks, and optionally place one live call",
                    "Run the setup checks; with --to, a dry run of one call; with --to and --yes, place it.\n"
                    "Exits 1 when a check fails or the call cannot be placed.")
        p.add_argument("-t", "--to", help="Number to call (E.164, e.g. +15550001234)")
        p.add_argument("--message", default=SMOKE_MESSAGE, help=f"What to say on the call (default: {SMOKE_MESSAGE!r})")
        p.add_argument("--mode", default="notify", help=MODE_HELP + " (default: notify)")
        p.add_argument("--yes", action="store_true", help="Really place the call (without: a dry run)")
        p.add_argument("--json", action="store_true", help="Print the checks and the call's outcome as JSON")

        p = command("call", "Place an outbound call",
                    "Place an outbound call through the running gateway (standalone when none answers) and\n"
                    "print {\"callId\": ...} as JSON, or only the id with -q.")
        p.add_argument("-m", "--message", required=True, help="Message to speak when the call connects")
        p.add_argument("-t", "--to", help="Number to call (E.164; default: toNumber)")
        p.add_argument("--mode", default="conversation", help=MODE_HELP)
        p.add_argument("--idempotency-key", help="Your id for this request: repeated, it returns the same call (places one)")
        p.add_argument("--at", help=AT_HELP)
        p.add_argument("--record", action=argparse.BooleanOptionalAction, default=None, help=RECORD_HELP)
        p.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
        p.add_argument("--amd", choices=["off", "detect", "voicemail"],
                       help="Answering-machine detection for this call (default: the configured amd): detect hangs up "
                            "on a machine; voicemail leaves the message after the beep")

        p = command("start", "Place an outbound call (alias of call)",
                    "Place an outbound call, as `call` does, with --to required and the message optional.")
        p.add_argument("--to", required=True, help="Number to call (E.164)")
        p.add_argument("--message", help="Message to speak when the call connects")
        p.add_argument("--mode", default="conversation", help=MODE_HELP)
        p.add_argument("--idempotency-key", help="Your id for this request: repeated, it returns the same call (places one)")
        p.add_argument("--at", help=AT_HELP)
        p.add_argument("--record", action=argparse.BooleanOptionalAction, default=None, help=RECORD_HELP)
        p.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)

        p = command("dial-list", "Dial every row of a CSV file (columns: to, message, and optionally mode, dtmfSequence, at)",
                    "Store a CSV dial list (columns: to, message; optional: mode, dtmfSequence, at), print its id\n"
                    "and the rows refused; the gateway dials the rows. With --wait, print the progress until done.")
        p.add_argument("file", help="The CSV file; its first row names the columns")
        p.add_argument("--name", help="The list's name in the admin (default: the file name)")
        p.add_argument("--wait", action="store_true", help="Print the progress until every row is dialed, refused or cancelled")
        p.add_argument("--poll", type=decimal_int("--poll", 50), default=1000, help="Progress interval in ms with --wait (1000)")

        p = command("continue", "Speak, then wait for and print the caller's answer",
                    "Say --message on a live call, listen for the caller's answer and print\n"
                    "{\"success\": ..., \"transcript\": ...} as JSON.")
        p.add_argument("--call-id", required=True, help=CALL_ID_HELP)
        p.add_argument("--message", required=True, help="What to say before listening for the answer")

        p = command("speak", "Speak on a live call", "Say --message on a live call (text to speech); prints the result as JSON.")
        p.add_argument("--call-id", required=True, help=CALL_ID_HELP)
        p.add_argument("--message", required=True, help="What to say")

        p = command("dtmf", "Send DTMF digits on a live call",
                    "Press keypad digits on a live call (when the carrier supports it); prints the result as JSON.")
        p.add_argument("--call-id", required=True, help=CALL_ID_HELP)
        p.add_argument("--digits", required=True, type=dtmf_digits,
                       help="Keys to press: 0-9, * and #; w, p or a comma pause (e.g. 1234#)")

        p = command("transfer", "Hand a live call to another number or SIP address",
                    "Hand a live call to an E.164 number or SIP URI (default: its route's or agent's transferTo)\n"
                    "and leave it; prints the transfer as JSON.")
        p.add_argument("--call-id", required=True, help=CALL_ID_HELP)
        p.add_argument("--to", help="E.164 number or SIP URI (default: the call's route or agent transferTo)")
        p.add_argument("--warm", action="store_true", help="Warm: the person answering hears --summary before the caller joins")
        p.add_argument("--summary", help="What to tell the person answering (warm transfer)")

        p = command("end", "Hang up a call", "Hang up a call (or cancel a scheduled one); prints the result as JSON.")
        p.add_argument("--call-id", required=True, help=CALL_ID_HELP)

        p = command("status", "Show one call, or all live calls",
                    "With --call-id: the call's state, numbers, carrier, times (UTC), duration, end reason or\n"
                    "error, and its transcript. Without: a table of the live calls, or \"No live calls.\".\n"
                    "Exits 1 with \"Call not found: <id>\" on stderr for an unknown id.")
        p.add_argument("--call-id", help="One call: our call id or the carrier's (default: list the live calls)")
        p.add_argument("--json", action="store_true",
                       help="Print the full record as JSON (times in epoch ms); an unknown id prints {\"found\": false}")

        p = command("tail", "Follow call records as they change",
                    "Print recent call records, then one line each time a call changes (Ctrl-C stops).\n"
                    "Times are UTC. With --file: follow a calls.jsonl file instead of the database.")
        p.add_argument("--file", help="Follow this log file (calls.jsonl) instead of the database")
        p.add_argument("--last", type=decimal_int("--last", 0), default=None, metavar="N",
                       help="Print the last N changed records first (25; 0: only changes from now on)")
        p.add_argument("--since", type=since_time, metavar="WHEN",
                       help=f"Print the records changed since WHEN first: {SINCE_FORMS} (not with --file)")
        p.add_argument("--poll", type=decimal_int("--poll", 50), default=250, help="Poll interval in ms (250)")
        p.add_argument("--json", action="store_true", help="One JSON record per line (the full record, as status --json)")

        p = command("latency", "Turn latency and listen wait percentiles",
                    "Count, min, average, p50, p90, p95, p99 and max of the turn latency (a `continue` request to\n"
                    "the caller's final words) and the listen wait, over the last completed turns.")
        p.add_argument("--file", help="Read a calls.jsonl file instead of the database")
        p.add_argument("--last", type=decimal_int("--last", 1), default=200, help="Use the last N turns/records (200)")
        p.add_argument("--json", action="store_true", help="Print the summary as JSON")

        p = command("simulate", "Play a carrier's side of calls against the running gateway",
                    "Play a carrier (the callers or callees, its webhooks, media and REST API) against the running\n"
                    "gateway, and report each call and their latencies. Exits 1 when it cannot run (config, no gateway);\n"
                    "a call that went wrong is in the report.")
        simulate_cli.add_arguments(p, decimal_int)

        p = command("cluster", "Run a local cluster: gateways behind a balancer, a Celery worker and beat",
                    "Run gateway processes behind a balancer, Celery workers and beat on PostgreSQL and Redis,\n"
                    "until Ctrl-C.")
        p.add_argument("--nodes", type=decimal_int("--nodes", 1), default=2, help="Gateway processes (2)")
        p.add_argument("--workers", type=decimal_int("--workers", 0), default=1, help="Celery workers (1)")
        p.add_argument("--server", choices=("daphne", "uvicorn"), default="daphne", help="The gateways' ASGI server")
        p.add_argument("--database-url", help="PostgreSQL for the cluster (default: DATABASE_URL); created when missing")
        p.add_argument("--redis-url", help="Redis for the cluster (default: REDIS_URL)")

        p = command("doctor", "Find (and with --fix rewrite) legacy config keys",
                    "Report the config file's legacy keys, and with --fix rewrite them. Exits 1 when the file\n"
                    "cannot be read or is invalid.")
        p.add_argument("--fix", action="store_true", help="Rewrite the config file (a .bak copy is kept)")

    def handle(self, *args, command: str, **options) -> None:
        # A standalone runtime: side effects run here, now, not in a pool that exits with us.
        background.set_mode("inline")
        try:
            if options.get("call_id"):
                from calls.selectors import call_ref_expanded

                options["call_id"] = call_ref_expanded(options["call_id"])  # the short ids status and tail print
            getattr(self, "cmd_" + command.replace("-", "_"))(**options)
        except VoiceCallError as exc:
            message = str(exc)
            if options.get("call_id") and message == CallNotFound().args[0]:
                message = f"{message}: {options['call_id']}"  # which id, whether the gateway or this process said it
            self.stderr.write(redact(message))
            sys.exit(1)
        except DatabaseError as exc:
            if not NO_TABLES.search(str(exc)):
                raise
            self.stderr.write(f"The database has no call tables yet ({exc}): start the gateway once (make serve), "
                              "or run `python manage.py migrate`")
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
            self.out(setup_json(checks, loaded.warnings, loaded))
        else:
            self.stdout.write(setup_text(checks, loaded.warnings))
            self.write_fixes(checks)
        if not all(c.ok for c in checks):
            sys.exit(1)

    def cmd_expose(self, *, mode=None, json: bool = False, **_) -> None:
        from calls.cli.expose import expose_mode, expose_show, expose_text

        config = get_config().config
        status = expose_mode(config, mode) if mode else expose_show(config)
        if json:
            self.out(status)
        else:
            self.stdout.write(expose_text(status))
        if not mode and not status["ok"]:
            sys.exit(1)  # a configured tunnel that is not up

    def write_fixes(self, checks) -> None:
        """What to do about each failing check, for the person reading: on stderr, beside the report."""
        from calls.cli.setup import fixes_text

        text = fixes_text(checks)
        if text:
            self.stderr.write(text)

    def cmd_smoke(self, *, to, message, mode, yes, json: bool = False, **_) -> None:
        from calls.cli.setup import setup_checks, setup_json, setup_text

        loaded = get_config()
        checks = setup_checks(loaded)
        setup = setup_json(checks, loaded.warnings, loaded)
        if not setup["ok"]:
            if json:
                self.out({"ok": False, "setup": setup})
            else:
                self.stdout.write(setup_text(checks, loaded.warnings))
                self.write_fixes(checks)
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

    def placed(self, method: str, *, to, message, mode, idempotency_key=None, at=None, record=None, amd=None) -> dict:
        """The gateway's (or the standalone runtime's) answer to placing a call: callId, initiated, ..."""
        from calls import services
        from calls.cli.gateway import placement_timeout_s, rpc_call

        if mode is not None and mode not in CallMode.values:  # the reference: an unknown mode means the default
            self.stderr.write(f"voicecall: --mode {mode!r} is not notify or conversation: using the configured default")
            mode = None
        params = {"to": to, "message": message, "mode": mode, "idempotencyKey": idempotency_key, "at": at}
        options = {}
        if record is not None:  # --record / --no-record; unset: the config's choice
            params["record"] = options["record"] = record
        if amd is not None:
            params["amd"] = options["amd"] = amd
        return self.delegate(
            lambda: rpc_call(method, params, timeout=placement_timeout_s()),
            lambda: services.call_initiate_request(to=to, message=message, mode=mode,
                                                   idempotency_key=idempotency_key, at=at, **options).as_dict(),
        )

    def placed_out(self, result: dict, quiet: bool = False) -> None:
        """The call's id; a call only queued (the carrier has not accepted its dial yet) or scheduled says so."""
        if quiet:
            self.stdout.write(result["callId"])
        elif result.get("scheduled"):
            self.out({key: result[key] for key in ("callId", "scheduled", "scheduledAt", "status") if key in result})
        elif result.get("initiated") is False:
            self.out({"callId": result["callId"], "queued": result.get("queued", True), "status": result.get("status", "")})
        else:
            self.out({"callId": result["callId"]})

    def cmd_call(self, *, message, to, mode, idempotency_key=None, at=None, record=None, amd=None, quiet=False, **_) -> None:
        to = to or get_config().config.to_number
        if not to:
            raise InvalidRequest("Missing --to and no toNumber configured")
        self.placed_out(self.placed("voicecall.initiate", to=to, message=message, mode=mode,
                                    idempotency_key=idempotency_key, at=at, record=record, amd=amd), quiet)

    def cmd_start(self, *, to, message, mode, idempotency_key=None, at=None, record=None, quiet=False, **_) -> None:
        self.placed_out(self.placed("voicecall.start", to=to, message=message, mode=mode,
                                    idempotency_key=idempotency_key, at=at, record=record), quiet)

    def cmd_dial_list(self, *, file, name=None, wait=False, poll=1000, **_) -> None:
        from calls.cli.dial_list import dial_list_run

        path = Path(file).expanduser()
        if not path.is_file():
            raise InvalidRequest(f"No dial list file at {path}")
        dial_list_run(path, name=name or path.name, wait=wait, poll_ms=poll, out=self.out, note=self.stderr.write)

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

    def cmd_transfer(self, *, call_id, to=None, warm=False, summary=None, **_) -> None:
        from calls import services
        from calls.cli.gateway import rpc_call

        mode = "warm" if warm else "cold"
        params = {"callId": call_id, "to": to, "mode": mode, "summary": summary}
        self.out(self.delegate(
            lambda: rpc_call("voicecall.transfer", {key: value for key, value in params.items() if value is not None}),
            lambda: services.call_transfer_request(call_id=call_id, to=to, mode=mode, summary=summary,
                                                   requested_by="cli").as_dict(),
        ))

    def cmd_end(self, *, call_id, **_) -> None:
        from calls import services
        from calls.cli.gateway import rpc_call

        self.out(self.delegate(
            lambda: rpc_call("voicecall.end", {"callId": call_id}),
            lambda: services.call_end_request(call_id=call_id).as_dict(),
        ))

    def cmd_status(self, *, call_id=None, json: bool = False, **_) -> None:
        from calls.cli import human
        from calls.selectors import call_find, call_record, calls_live

        now_ms = int(time.time() * 1000)
        # A read of the shared store: the full record (transcript, metadata) with or without a gateway.
        if call_id is None:
            records = [call_record(call) for call in calls_live()]
            self.out({"found": True, "calls": records}) if json else self.stdout.write(human.live_calls_text(records, now_ms))
            return
        call = call_find(ref=call_id)
        if call is not None:
            record = call_record(call)
        else:
            from calls.dial_progress import pending_dial_find, pending_dial_summary

            dial = pending_dial_find(ref=call_id)  # a scheduled call not placed yet
            if dial is None:
                if json:
                    self.out({"found": False})
                self.stderr.write(redact(f"Call not found: {call_id}"))
                sys.exit(1)
            record = pending_dial_summary(dial)
        self.out(record) if json else self.stdout.write(human.call_text(record, now_ms))

    # --- records -----------------------------------------------------------------------

    def cmd_tail(self, *, file, last, since, poll, json: bool = False, **_) -> None:
        from calls.cli.follow import follow_calls, follow_file, human_file_line, human_line, json_line

        def write(line: str) -> None:
            self.stdout.write(line)
            self.stdout.flush()

        if file:
            if since is not None:
                self.usage_error("tail", "argument --since: --since needs the database (a calls.jsonl line has no "
                                         "change time): with --file use --last N")
            path = Path(file).expanduser()
            if not path.is_file():
                raise InvalidRequest(f"No log file at {path}")
            follow_file(path, write, last=25 if last is None else last, poll_ms=poll, stop=lambda: False,
                        render=(lambda line: line) if json else human_file_line)
        else:
            follow_calls(write, last=25 if last is None and since is None else last, changed_since=since,
                         poll_ms=poll, stop=lambda: False, render=json_line if json else human_line)

    def usage_error(self, command: str, message: str) -> None:
        """A wrong combination of flags ends as a wrong flag does: argparse's exit 2 with the usage (CommandError in-process)."""
        self.subcommand_parsers[command].error(message)

    def cmd_latency(self, *, file, last, json: bool = False, **_) -> None:
        from calls.cli import human
        from calls.cli.stats import latency_from_db, latency_from_file

        if file:
            path = Path(file).expanduser()
            if not path.is_file():
                raise InvalidRequest(f"No log file at {path}")
            data = latency_from_file(path, last)
            over = f"{data['recordsScanned']} records of {path} (--last {last})"
            empty = f"No turn latencies in the {data['recordsScanned']} records read from {path}."
        else:
            data = latency_from_db(last)
            over = f"the last {data['turnsScanned']} completed turns (--last {last})"
            empty = "No completed turns yet: a turn is timed when a `continue` gets the caller's answer."
        self.out(data) if json else self.stdout.write(human.latency_text(data, over=over, empty=empty))

    def cmd_simulate(self, *, json: bool = False, **options) -> None:
        if options.get("telnyx_keygen"):
            self.out(simulate_cli.keygen())
            return
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
        if not report.ok:
            sys.exit(1)  # as a linter: legacy keys left unfixed, or errors
