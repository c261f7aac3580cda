"""`voicecall`'s answers for people: exit codes (and the README's table of them), help texts, human output."""
from __future__ import annotations

import argparse
import json
import re
import shlex
from datetime import datetime, timedelta, timezone

import pytest
from django.core.management import load_command_class
from django.core.management.base import CommandError

from calls.cli import human
from calls.cli.follow import follow_calls, human_file_line, human_line
from calls.clock import to_ms
from calls.models import Call, CallEvent, CallTurn, TranscriptEntry, TurnStatus
from calls.services import event_process
from core.events import CallAnswered
from tests.calls.cli.test_cli import TO, Steps, make_call, run, run_fail, run_subprocess, start_call
from tests.paths import ROOT

T0 = datetime(2026, 12, 5, 10, 30, 2, tzinfo=timezone.utc)


# --- exit codes ----------------------------------------------------------------------------------


def readme_exit_codes() -> dict[int, list[str]]:
    """The README's exit-code table: code -> the `voicecall ...` examples of its row."""
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("## Commands", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\d)` \|(.*)\|\s*$", section, flags=re.M)
    return {int(code): re.findall(r"`voicecall ([^`]+)`", rest) for code, rest in rows}


def test_the_readme_documents_exit_codes_0_1_2_with_examples():
    table = readme_exit_codes()
    assert sorted(table) == [0, 1, 2]
    assert all(table[code] for code in table), table


def example_args(example: str) -> list[str]:
    return [arg.replace("<unknown>", "no-such-call") for arg in shlex.split(example)]


@pytest.mark.django_db
def test_the_readme_exit_code_examples_exit_as_documented(tmp_path):
    """Each example of rows 0 and 1 run in-process, each example of row 2 as the shell runs it."""
    table = readme_exit_codes()
    for example in table[0]:
        run(*example_args(example))  # no SystemExit: 0
    for example in table[1]:
        run_fail(*example_args(example))  # asserts the code is 1
    for example in table[2]:
        result = run_subprocess(tmp_path, *example_args(example))
        assert (result.returncode, result.stdout) == (2, ""), (example, result.stderr)
        assert "usage: manage.py voicecall" in result.stderr and "error: " in result.stderr


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "code", "stderr"),
    [
        (("status",), 0, ""),
        (("status", "--call-id", "no-such-call"), 1, "Call not found: no-such-call\n"),
        (("end", "--call-id", "no-such-call"), 1, "Call not found: no-such-call\n"),
        (("speak", "--call-id", "no-such-call", "--message", "Hi"), 1, "Call not found: no-such-call\n"),
        (("dtmf", "--call-id", "no-such-call", "--digits", "1"), 1, "Call not found: no-such-call\n"),
        (("transfer", "--call-id", "no-such-call", "--to", TO), 1, "Call not found: no-such-call\n"),
        (("continue", "--call-id", "no-such-call", "--message", "Hi"), 1, "Call not found: no-such-call\n"),
        (("latency",), 0, ""),
        (("latency", "--file", "/nonexistent/calls.jsonl"), 1, "No log file at /nonexistent/calls.jsonl\n"),
        (("call", "-m", "Hi", "--to", "555"), 1, None),  # refused by the services: a failed operation
    ],
)
def test_exit_codes_in_process(args, code, stderr):
    if code == 0:
        _, err = run(*args)
    else:
        _, err = run_fail(*args)
    if stderr is not None:
        assert err == stderr


@pytest.mark.django_db
def test_a_started_call_is_ok_and_found():
    call_id = start_call(TO)
    out, err = run("status", "--call-id", call_id)
    assert out.startswith(f"Call {call_id}\n") and err == ""


def test_usage_errors_are_command_errors_in_process_and_exit_2_from_the_shell(tmp_path):
    """call_command raises CommandError (Django's parser does not exit in-process); the shell sees 2."""
    with pytest.raises(CommandError, match="^Error: the following arguments are required: --call-id"):
        run("end")
    result = run_subprocess(tmp_path, "end")
    assert result.returncode == 2
    assert result.stderr.endswith("error: the following arguments are required: --call-id\n")


def test_help_ends_with_the_exit_codes(tmp_path):
    result = run_subprocess(tmp_path, "--help")
    assert result.returncode == 0
    assert "exit codes (every command):\n  0  ok\n  1  the operation failed" in result.stdout
    assert "  2  usage error" in result.stdout


# --- help ----------------------------------------------------------------------------------------


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}


def undocumented(parser: argparse.ArgumentParser) -> list[str]:
    return [a.dest for a in parser._actions
            if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)) and not (a.help or "").strip()]


@pytest.mark.parametrize("name", ["voicecall", "gateway"])
def test_every_command_and_flag_has_help(name):
    parser = load_command_class("calls", name).create_parser("manage.py", name)
    assert (parser.description or "").strip()
    assert undocumented(parser) == []
    commands = subparsers(parser)
    assert bool(commands) == (name == "voicecall")
    for command, subparser in commands.items():
        assert (subparser.description or "").strip(), f"{command} has no description"
        assert undocumented(subparser) == [], command
    choices = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for choice in choices[0]._choices_actions if choices else []:
        assert (choice.help or "").strip(), f"{choice.dest} has no one-line help"


def test_command_help_shows_its_description_and_flags(tmp_path):
    result = run_subprocess(tmp_path, "status", "--help")
    assert result.returncode == 0
    assert "With --call-id: the call's state" in result.stdout
    assert "--json             Print the full record as JSON" in result.stdout


# --- bad values name the flag --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("tail", "--since", "25"), "argument --since: --since takes a time ago (30s, 10m, 2h, 1d) or an ISO 8601 "
                                    "time (2026-12-05T10:30:00Z, 2026-12-05T10:30:00+01:00; without an offset: UTC), "
                                    "got '25'; for the last N records use --last 25"),
        (("tail", "--since", "yesterday"), "argument --since: --since takes a time ago (30s, 10m, 2h, 1d)"),
        (("tail", "--since", "10 minutes"), "argument --since: --since takes"),
        (("tail", "--file", "calls.jsonl", "--since", "10m"),
         "argument --since: --since needs the database (a calls.jsonl line has no change time): with --file use --last N"),
        (("tail", "--since", "99999999d"), "argument --since: --since 99999999d is further back than any record"),
        (("tail", "--since", "999999999999999999999s"), "argument --since: --since 999999999999999999999s is further back"),
        (("dtmf", "--call-id", "x", "--digits", "12a"), "argument --digits: --digits may only contain 0-9, *, #"),
    ],
)
def test_bad_values_name_the_flag_and_the_accepted_form(args, message):
    with pytest.raises(CommandError) as exc:
        run(*args)
    assert str(exc.value).startswith(f"Error: {message}")


def test_since_with_file_exits_2_from_the_shell(tmp_path):
    log = tmp_path / "calls.jsonl"
    log.write_text("")
    result = run_subprocess(tmp_path, "tail", "--file", str(log), "--since", "10m")
    assert result.returncode == 2
    assert "usage: manage.py voicecall tail" in result.stderr
    assert "error: argument --since: --since needs the database" in result.stderr


@pytest.mark.django_db
def test_an_unknown_mode_says_it_uses_the_default():
    _, err = run("start", "--to", TO, "--mode", "shout")
    assert "voicecall: --mode 'shout' is not notify or conversation: using the configured default" in err


# --- status --------------------------------------------------------------------------------------


def ended_call() -> Call:
    call = make_call(provider_call_id="mock-human", state="hangup-user", end_reason="hangup-user",
                     started_at=T0, answered_at=T0 + timedelta(seconds=3), ended_at=T0 + timedelta(seconds=67),
                     agent_id="main", session_key="agent:main:voice:15550001111")
    TranscriptEntry.objects.create(call=call, speaker="bot", text="Hello", timestamp=T0 + timedelta(seconds=4))
    TranscriptEntry.objects.create(call=call, speaker="user", text="Hi, who is this?", timestamp=T0 + timedelta(seconds=9))
    CallEvent.objects.create(call=call, type="call.answered", dedupe_key="dedupe-4f2a9c", payload={}, occurred_at=T0)
    return call


@pytest.mark.django_db
def test_status_of_a_call_for_people():
    call = ended_call()
    out, err = run("status", "--call-id", str(call.pk))
    assert out == "\n".join([
        f"Call {call.pk}",
        "  State:      hangup-user",
        "  Direction:  outbound",
        "  From:       +15550000000",
        f"  To:         {TO}",
        "  Carrier:    mock (carrier call id mock-human)",
        "  Started:    2026-12-05 10:30:02 UTC",
        "  Answered:   2026-12-05 10:30:05 UTC",
        "  Ended:      2026-12-05 10:31:09 UTC",
        "  Duration:   1m 04s",  # answered to ended, as the admin counts it
        "  End reason: hangup-user",
        "  Mode:       conversation",
        "  Agent:      main (session agent:main:voice:15550001111)",
        "Transcript:",
        "  +00:04  bot     Hello",
        "  +00:09  caller  Hi, who is this?",
    ]) + "\n"
    assert err == ""
    assert not re.search(r"\d{13}", out)  # no epoch milliseconds
    assert "dedupe-4f2a9c" not in out  # nor the internal replay keys
    assert "dedupe-4f2a9c" in run("status", "--call-id", str(call.pk), "--json")[0]  # the JSON keeps them


@pytest.mark.django_db
def test_status_of_a_failed_call_shows_its_error():
    call = make_call(state="failed", end_reason="failed", started_at=T0, ended_at=T0 + timedelta(seconds=2),
                     last_error="Twilio 21215: geo permission disabled for +44")
    out, _ = run("status", "--call-id", str(call.pk))
    assert "  End reason: failed\n" in out
    assert "  Error:      Twilio 21215: geo permission disabled for +44\n" in out


@pytest.mark.django_db
def test_status_of_a_live_call_counts_its_duration_so_far():
    call_id = start_call(TO)
    event_process(event=CallAnswered(call_id=call_id))
    out, _ = run("status", "--call-id", call_id)
    assert "  State:     answered (live)\n" in out
    assert re.search(r"\n  Duration:  \d+s so far\n", out)
    assert "Transcript: (nothing said yet)" in out


@pytest.mark.django_db
def test_status_lists_live_calls_as_a_table():
    assert run("status") == ("No live calls.\n", "")
    first = start_call(TO)
    out, _ = run("status")
    header, row = out.rstrip("\n").split("\n")
    assert header.split() == ["ID", "NUMBER", "DIRECTION", "STATE", "DURATION"]
    assert row.split() == [first[:8], TO, "outbound", "initiated", "-"]  # not answered: no duration yet
    event_process(event=CallAnswered(call_id=first))
    assert re.fullmatch(r"\d+s", run("status")[0].rstrip("\n").split("\n")[1].split()[4])  # counting from the answer


@pytest.mark.django_db
def test_status_of_a_scheduled_call_for_people():
    at = (datetime.now(timezone.utc) + timedelta(days=2)).replace(microsecond=0)
    out, _ = run("call", "--to", TO, "-m", "Hi", "--at", at.isoformat())
    call_id = json.loads(out)["callId"]
    text, _ = run("status", "--call-id", call_id)
    assert "  State:         scheduled\n" in text
    assert f"  Scheduled for: {at:%Y-%m-%d %H:%M:%S} UTC\n" in text


def test_the_record_shape_without_a_database_row():
    """A scheduled dial's summary and a partial transcript line."""
    assert human.duration(4) == "4s" and human.duration(64) == "1m 04s" and human.duration(7389) == "2h 03m 09s"
    assert human.offset(7) == "+00:07" and human.offset(3723) == "+1:02:03"
    assert human.when(to_ms(T0)) == "2026-12-05 10:30:02 UTC"
    lines = human.transcript_lines([{"timestamp": to_ms(T0) + 2000, "speaker": "user", "text": "Wai", "isFinal": False}],
                                   to_ms(T0))
    assert lines == ["  +00:02  caller  Wai …"]


# --- tail ----------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_tail_line_for_people():
    call = ended_call()
    line = human_line(call)
    assert line == (f"{human.when(to_ms(call.updated_at))}  {str(call.pk)[:8]}  outbound  {TO}  hangup-user  1m 04s  "
                    'caller: "Hi, who is this?"')


@pytest.mark.django_db
def test_tail_since_prints_the_calls_changed_since_then():
    old = make_call(provider_call_id="mock-old")
    Call.objects.filter(pk=old.pk).update(updated_at=datetime.now(timezone.utc) - timedelta(hours=2))
    recent = [make_call(provider_call_id=f"mock-recent-{i}") for i in range(3)]
    lines: list[str] = []
    follow_calls(lines.append, last=None, changed_since=datetime.now(timezone.utc) - timedelta(hours=1),
                 poll_ms=1, stop=Steps(None))
    assert [json.loads(line)["callId"] for line in lines] == [str(c.pk) for c in recent]
    lines.clear()
    follow_calls(lines.append, last=1, changed_since=datetime.now(timezone.utc) - timedelta(hours=1),
                 poll_ms=1, stop=Steps(None))
    assert [json.loads(line)["callId"] for line in lines] == [str(recent[-1].pk)]


@pytest.mark.django_db
def test_tail_parses_since_forms(monkeypatch):
    from calls.management.commands import voicecall

    seen = {}
    monkeypatch.setattr("calls.cli.follow.follow_calls", lambda write, **kw: seen.update(kw))
    before = datetime.now(timezone.utc)
    for value, expected in (("10m", before - timedelta(minutes=10)), ("2h", before - timedelta(hours=2)),
                            ("1d", before - timedelta(days=1)), ("30s", before - timedelta(seconds=30))):
        run("tail", "--since", value)
        assert abs(seen["changed_since"] - expected) < timedelta(seconds=5), value
        assert seen["last"] is None
    for value, expected in (("2026-12-05T10:30:02Z", T0), ("2026-12-05 10:30:02", T0),
                            ("2026-12-05T11:30:02+01:00", T0), ("2026-12-05", T0.replace(hour=0, minute=0, second=0))):
        run("tail", "--since", value, "--last", "5")
        assert seen["changed_since"] == expected and seen["last"] == 5, value
    run("tail")
    assert (seen["changed_since"], seen["last"]) == (None, 25)
    assert voicecall.since_time("10M") <= datetime.now(timezone.utc) - timedelta(minutes=10)


def test_tail_file_lines_for_people():
    record = {"callId": "3f0c1a2b-0000-4000-8000-000000000000", "direction": "inbound", "from": "+15550003333",
              "state": "answered", "startedAt": to_ms(T0), "answeredAt": to_ms(T0) + 5000}
    line = human_file_line(json.dumps({"call": record}))
    # As of when the line was written: no duration counted to now for a call the line shows unfinished.
    assert line == "2026-12-05 10:30:07 UTC  3f0c1a2b  inbound  +15550003333  answered"
    ended = {**record, "state": "completed", "endReason": "completed", "endedAt": to_ms(T0) + 65000}
    assert human_file_line(json.dumps(ended)) == "2026-12-05 10:31:07 UTC  3f0c1a2b  inbound  +15550003333  completed  1m 00s"
    assert human_file_line("not json") == "not json"
    assert human_file_line('{"other": 1}') == '{"other": 1}'


@pytest.mark.django_db
def test_tail_json_is_the_record(monkeypatch):
    call = ended_call()
    lines: list[str] = []
    monkeypatch.setattr("calls.cli.follow.follow_calls",
                        lambda write, *, render, **_: lines.extend([render(call), human_line(call)]))
    run("tail", "--json")
    assert json.loads(lines[0])["processedEventIds"] == ["dedupe-4f2a9c"]


# --- latency -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_latency_as_a_table():
    call = make_call()
    for index, (latency, wait) in enumerate(((800, 300), (1200, 450), (1000, 350))):
        CallTurn.objects.create(call=call, token="", status=TurnStatus.COMPLETED, turn_latency_ms=latency,
                                listen_wait_ms=wait, completed_at=T0 + timedelta(seconds=index))
    out, _ = run("latency")
    assert out == "\n".join([
        "Over the last 3 completed turns (--last 200), in ms:",
        "              count  min    avg   p50   p90   p95   p99   max",
        "turn latency      3  800   1000  1000  1200  1200  1200  1200",
        "listen wait       3  300  366.7   350   450   450   450   450",
    ]) + "\n"


@pytest.mark.django_db
def test_latency_without_turns_says_so():
    out, _ = run("latency")
    assert out == "No completed turns yet: a turn is timed when a `continue` gets the caller's answer.\n"


def test_latency_of_a_file_without_turns_says_so(tmp_path):
    log = tmp_path / "calls.jsonl"
    log.write_text('{"callId": "a", "metadata": {}}\n')
    out, _ = run("latency", "--file", str(log))
    assert out == f"No turn latencies in the 1 records read from {log}.\n"


# --- short ids -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_short_id_status_prints_names_the_call_for_every_command(outbox):
    call_id = start_call()
    event_process(event=CallAnswered(call_id=call_id))
    short = call_id[:8]
    assert short in run("status")[0]  # what a person sees, and then types
    assert run("status", "--call-id", short, "--json")[0] == run("status", "--call-id", call_id, "--json")[0]
    assert json.loads(run("status", "--call-id", call_id[:13], "--json")[0])["callId"] == call_id  # with its dash
    assert json.loads(run("status", "--call-id", short.upper(), "--json")[0])["callId"] == call_id
    run("end", "--call-id", short)
    assert Call.objects.get(pk=call_id).is_terminal


@pytest.mark.django_db
def test_a_short_id_of_several_calls_is_refused_naming_them():
    twins = [make_call(id=f"abcd1234-{n}{n}{n}{n}-4000-8000-00000000000{n}") for n in (1, 2)]
    _, err = run_fail("end", "--call-id", "abcd1234")
    assert err.strip() == f"The short id abcd1234 matches 2 calls ({twins[0].pk}, {twins[1].pk}): give more of its digits"
    assert not any(Call.objects.get(pk=twin.pk).is_terminal for twin in twins)
    assert json.loads(run("status", "--call-id", "abcd1234-2", "--json")[0])["callId"] == str(twins[1].pk)  # more digits


@pytest.mark.django_db
def test_a_prefix_matching_no_call_is_not_found_as_typed():
    make_call()
    _, err = run_fail("status", "--call-id", "00000000")
    assert err.strip() == "Call not found: 00000000"
