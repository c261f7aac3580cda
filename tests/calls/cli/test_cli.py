"""`manage.py voicecall <command>`: every subcommand, driven as a user would (docs/compatibility.md, CLI).

In-process runs use call_command (operational errors end in SystemExit(1) with the message on
stderr; argparse errors become CommandError). A few tests run a real subprocess to check the
exit status and stderr of argparse errors as the shell sees them.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from datetime import timedelta
from datetime import timezone as dt_timezone
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections
from django.utils import timezone

from calls.cli.follow import follow_calls, follow_file
from calls.clock import to_ms
from calls.models import Call, CallTurn, TurnStatus
from calls.selectors import call_metadata
from calls.services import call_speak, event_process

from core.config.loader import load_config_file
from core.events import CallAnswered, CallEnded, CallRinging, CallSpeech, event_from_dict
from tests.paths import ROOT as MAIN
from tests.waiting import wait_until
TO = "+15550001111"
TO_2 = "+15550002222"
# Well-formed fakes: a malformed identifier would add a WARN line to setup's output.
TWILIO_SID = "AC" + "0" * 31 + "1"
TWILIO_TOKEN = "0123456789abcdef" * 2
TWILIO_OK = {
    "provider": "twilio",
    "fromNumber": "+15550009999",
    "twilio": {"accountSid": TWILIO_SID, "authToken": TWILIO_TOKEN},
}
TWILIO_MISSING_ERRORS = (
    "fromNumber: required (or set TWILIO_FROM_NUMBER); "
    "twilio.accountSid: required (or set TWILIO_ACCOUNT_SID); "
    "twilio.authToken: required (or set TWILIO_AUTH_TOKEN)"
)
SETUP_INCOMPLETE = "Voice call setup incomplete: " + TWILIO_MISSING_ERRORS


# --- helpers -----------------------------------------------------------------------------


def run(*args: str) -> tuple[str, str]:
    """Run `voicecall <args>` in-process; returns (stdout, stderr). Fails if it exits."""
    out, err = io.StringIO(), io.StringIO()
    call_command("voicecall", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def run_json(*args: str):
    out, _ = run(*args)
    return json.loads(out)


def run_fail(*args: str) -> tuple[str, str]:
    """Run a command that must exit with status 1; returns (stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(SystemExit) as exc:
        call_command("voicecall", *args, stdout=out, stderr=err)
    assert exc.value.code == 1
    return out.getvalue(), err.getvalue()


def run_error(*args: str) -> str:
    """Run a command that must fail with an operational error; returns the stderr line."""
    out, err = run_fail(*args)
    assert out == ""
    return err.strip()


def run_subprocess(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "VOICECALL_DATA_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "tests.settings"}
    return subprocess.run(
        [sys.executable, "manage.py", "voicecall", *args],
        cwd=MAIN, env=env, capture_output=True, text=True, timeout=60,
    )


def setup_lines(*checks: tuple[bool, str, str], ok: bool) -> str:
    head = "Voice Call setup: OK" if ok else "Voice Call setup: needs attention"
    return "\n".join([head] + [f"{'OK' if good else 'FAIL'} {cid}: {msg}" for good, cid, msg in checks])


MOCK_CHECKS = [
    (True, "plugin-enabled", "Voice calls enabled"),
    (True, "provider", "Provider: mock"),
    (True, "provider-config", "Provider config valid"),
    (True, "webhook-exposure", "Mock provider does not need a public webhook"),
    (True, "mode", "Notify/conversation calls use normal TTS/STT flow"),
]
MOCK_SETUP_JSON = {"ok": True, "checks": [{"id": i, "ok": o, "message": m} for o, i, m in MOCK_CHECKS]}


def checks_by_id(data: dict) -> dict[str, dict]:
    return {check["id"]: check for check in data["checks"]}


def start_call(to: str = TO, *extra: str) -> str:
    """Place an outbound call with the CLI; returns its call id."""
    data = run_json("start", "--to", to, *extra)
    assert set(data) == {"callId"}
    return data["callId"]


def answer(call_id: str) -> None:
    event_process(event=CallAnswered(call_id=call_id))


def actions(outbox) -> list[str]:
    return [request.action for request in outbox]


def make_call(**fields) -> Call:
    defaults = {"provider": "mock", "direction": "outbound", "from_number": "+15550000000", "to_number": TO}
    return Call.objects.create(**{**defaults, **fields})


# --- setup -------------------------------------------------------------------------------


def test_setup_text_ok_for_the_default_mock_config():
    out, err = run("setup")
    assert out == setup_lines(*MOCK_CHECKS, ok=True) + "\n"
    assert err == ""


def test_setup_json_ok_for_the_default_mock_config():
    out, _ = run("setup", "--json")
    assert json.loads(out) == MOCK_SETUP_JSON
    # Pretty-printed with a two-space indent.
    assert out == json.dumps(MOCK_SETUP_JSON, indent=2) + "\n"


def test_setup_disabled_config_needs_attention_and_exits_1(configure):
    configure({"enabled": False})
    out, _ = run_fail("setup")
    lines = out.strip().split("\n")
    assert lines[0] == "Voice Call setup: needs attention"
    assert lines[1] == "FAIL plugin-enabled: Voice calls disabled (set enabled: true)"
    assert lines[2] == "FAIL provider: Provider not configured"
    assert [line.split(":")[0] for line in lines[1:]] == [
        "FAIL plugin-enabled", "FAIL provider", "OK provider-config", "FAIL webhook-exposure", "OK mode",
    ]


def test_setup_names_settings_that_are_accepted_but_not_built(configure):
    loaded = configure({"silenceTimeoutMs": 1500, "store": "~/calls"})
    unbuilt = [w for w in loaded.warnings if "silenceTimeoutMs" in w or "store" in w]
    assert len(unbuilt) == 2
    out, _ = run("setup")  # warnings never fail setup
    lines = out.rstrip("\n").split("\n")
    assert [line for line in lines if line.startswith("WARN ")] == [f"WARN {w}" for w in loaded.warnings]
    assert any(line.startswith("WARN ") and "silenceTimeoutMs" in line for line in lines)
    data = json.loads(run("setup", "--json")[0])
    assert data["ok"] is True
    assert data["warnings"] == loaded.warnings


def test_setup_lists_legacy_keys_as_warnings(configure):
    loaded = configure({"streaming": {"sttModel": "x"}})
    assert any("doctor --fix" in w for w in loaded.warnings)
    data = json.loads(run("setup", "--json")[0])
    assert data["warnings"] == loaded.warnings


def test_setup_json_disabled_config(configure):
    configure({"enabled": False})
    out, _ = run_fail("setup", "--json")
    data = json.loads(out)
    assert data["ok"] is False
    assert [c["id"] for c in data["checks"]] == ["plugin-enabled", "provider", "provider-config", "webhook-exposure", "mode"]
    assert checks_by_id(data)["plugin-enabled"] == {
        "id": "plugin-enabled", "ok": False, "message": "Voice calls disabled (set enabled: true)",
    }


def test_setup_incomplete_twilio_joins_validation_errors(configure):
    loaded = configure({"provider": "twilio"})
    assert "; ".join(loaded.errors) == TWILIO_MISSING_ERRORS
    out, _ = run_fail("setup", "--json")
    data = json.loads(out)
    assert data["ok"] is False
    checks = checks_by_id(data)
    assert checks["provider"] == {"id": "provider", "ok": True, "message": "Provider: twilio"}
    assert checks["provider-config"] == {"id": "provider-config", "ok": False, "message": TWILIO_MISSING_ERRORS}
    assert checks["webhook-exposure"]["ok"] is False
    assert checks["webhook-exposure"]["message"] == (
        "Set publicUrl or configure tunnel/tailscale so the carrier can reach the webhook"
    )


def test_setup_incomplete_text_output(configure):
    configure({"provider": "twilio"})
    out, _ = run_fail("setup")
    assert out == setup_lines(
        (True, "plugin-enabled", "Voice calls enabled"),
        (True, "provider", "Provider: twilio"),
        (False, "provider-config", TWILIO_MISSING_ERRORS),
        (False, "webhook-exposure", "Set publicUrl or configure tunnel/tailscale so the carrier can reach the webhook"),
        (True, "mode", "Notify/conversation calls use normal TTS/STT flow"),
        ok=False,
    ) + "\n"


def test_setup_names_the_fix_for_each_failing_check(configure):
    configure({"provider": "twilio"})
    data = json.loads(run_fail("setup", "--json")[0])
    file = "a config file (none is loaded: write one and set VOICECALL_CONFIG to its path)"
    assert data["fixes"]["provider-config"] == [
        f"Set fromNumber in {file}, or the environment variable TWILIO_FROM_NUMBER of every gateway and worker process.",
        f"Set twilio.accountSid in {file}, or the environment variable TWILIO_ACCOUNT_SID of every gateway and worker process.",
        f"Set twilio.authToken in {file}, or the environment variable TWILIO_AUTH_TOKEN of every gateway and worker process.",
    ]
    assert set(data["fixes"]) == {"provider-config", "webhook-exposure"}
    assert data["fixes"]["webhook-exposure"][0].startswith(f"Set publicUrl in {file} to the public https address")
    # Text: the report on stdout as before, the fixes on stderr for the person reading it.
    out, err = run_fail("setup")
    assert "FIX" not in out
    assert err.splitlines() == [f"FIX {cid}: {fix}" for cid, fixes in data["fixes"].items() for fix in fixes]


def test_setup_fix_names_the_loaded_file_and_the_missing_variable(configure, tmp_path):
    path = tmp_path / "voicecall.json5"
    path.write_text(json.dumps({**TWILIO_OK, "publicUrl": "https://voice.example.com",
                                "twilio": {"accountSid": TWILIO_SID, "authToken": "${TWILIO_TOKEN_UNSET_X}"}}))
    configure(load_config_file(path, environ={}))
    data = json.loads(run_fail("setup", "--json")[0])
    assert data["fixes"] == {"provider-config": [
        "Set the environment variable TWILIO_TOKEN_UNSET_X (it holds twilio.authToken) for every gateway and worker "
        f"process, or change twilio.authToken in the config file {path}.",
    ]}
    _, err = run_fail("smoke")
    assert err.startswith("FIX provider-config: Set the environment variable TWILIO_TOKEN_UNSET_X")


SKIPPED = "not checked until the config file is valid"
SKIPPED_LINES = [f"SKIP {check}: {SKIPPED}" for check in ("plugin-enabled", "provider", "webhook-exposure", "mode")]


def invalid_file(tmp_path, content: str | None):
    """A config file (None: none at the path) loaded as the gateway would."""
    path = tmp_path / "voicecall.json5"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    return path, load_config_file(path, environ={})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{provider: "twilio", publicUrl: "https://voice.example.com"',
         "VOICECALL_CONFIG: {path} is not valid JSON or JSON5: <string>:1 Unexpected end of input at column 60"),
        (None, "VOICECALL_CONFIG: no config file at {path}"),
        ("[1, 2]", "The config file {path} is invalid (1 error): config: must be a JSON object"),
    ],
    ids=["syntax", "missing", "not-an-object"],
)
def test_setup_on_an_unusable_file_reports_it_first_and_skips_the_rest(configure, tmp_path, content, message):
    path, loaded = invalid_file(tmp_path, content)
    configure(loaded)
    out, err = run_fail("setup")
    assert out.splitlines() == [
        "Voice Call setup: needs attention", f"FAIL provider-config: {message.format(path=path)}", *SKIPPED_LINES,
    ]
    assert err.startswith("FIX provider-config: ")


def test_setup_on_a_file_that_fails_validation_names_each_key_and_the_file(configure, tmp_path):
    path, loaded = invalid_file(tmp_path, json.dumps({
        **TWILIO_OK, "publicUrl": "https://voice.example.com", "fromNumber": "555", "maxConcurrentCalls": "two",
    }))
    configure(loaded)
    out, err = run_fail("setup")
    # Not "OK provider: Provider: mock" nor "OK webhook-exposure": the defaults standing in are not judged.
    assert out.splitlines() == [
        "Voice Call setup: needs attention",
        f"FAIL provider-config: The config file {path} is invalid (2 errors): "
        "fromNumber: Expected E.164 format, e.g. +15550001234; maxConcurrentCalls: must be an integer",
        *SKIPPED_LINES,
    ]
    assert err.splitlines() == [
        f"FIX provider-config: Change fromNumber in the config file {path}: Expected E.164 format, e.g. +15550001234.",
        f"FIX provider-config: Change maxConcurrentCalls in the config file {path}: must be an integer.",
    ]


def test_setup_json_on_an_invalid_file(configure, tmp_path):
    path, loaded = invalid_file(tmp_path, json.dumps({"provider": "twilio", "fromNumber": "555"}))
    configure(loaded)
    data = json.loads(run_fail("setup", "--json")[0])
    assert data["ok"] is False
    assert data["configFile"] == str(path)
    assert data["configErrors"] == [{"path": "fromNumber", "message": "Expected E.164 format, e.g. +15550001234"}]
    assert data["checks"][0] == {
        "id": "provider-config", "ok": False,
        "message": f"The config file {path} is invalid (1 error): fromNumber: Expected E.164 format, e.g. +15550001234",
    }
    assert data["checks"][1:] == [
        {"id": check, "ok": False, "message": SKIPPED, "skipped": True}
        for check in ("plugin-enabled", "provider", "webhook-exposure", "mode")
    ]
    assert list(data["fixes"]) == ["provider-config"]


def test_setup_json_on_a_syntax_error_has_a_file_error_without_key_path(configure, tmp_path):
    path, loaded = invalid_file(tmp_path, "{oops")
    configure(loaded)
    data = json.loads(run_fail("setup", "--json")[0])
    [error] = data["configErrors"]
    assert error["path"] is None and error["message"].startswith(f"VOICECALL_CONFIG: {path} is not valid JSON or JSON5")


def test_setup_with_errors_in_a_valid_file_still_runs_every_check(configure):
    # The file validates and only a credential is missing: the checks judge what the file says.
    configure({**TWILIO_OK, "twilio": {"accountSid": TWILIO_SID}})
    data = json.loads(run_fail("setup", "--json")[0])
    assert [c.get("skipped", False) for c in data["checks"]] == [False] * 5
    assert checks_by_id(data)["provider"]["message"] == "Provider: twilio"
    assert data["configErrors"] == [{"path": "twilio.authToken", "message": "required (or set TWILIO_AUTH_TOKEN)"}]


def test_setup_warns_about_malformed_carrier_identifiers_without_failing(configure):
    token = "fake-twilio-token-9931"
    loaded = configure({**TWILIO_OK, "publicUrl": "https://voice.example.com",
                        "twilio": {"accountSid": "AC123", "authToken": token}})
    out, err = run("setup")
    lines = out.splitlines()
    assert lines[0] == "Voice Call setup: OK"
    assert lines[-2:] == [
        'WARN twilio.accountSid: "AC123" does not look like a Twilio Account SID (AC followed by 32 hex digits)',
        "WARN twilio.authToken: the value (22 characters, not shown) does not look like a Twilio auth token (32 hex digits)",
    ]
    assert token not in out and err == ""
    data = run_json("setup", "--json")
    assert data["ok"] is True and data["warnings"] == loaded.warnings == [line[5:] for line in lines[-2:]]


def test_setup_warns_about_identifiers_from_the_environment(configure):
    configure({"provider": "plivo", "fromNumber": "+15550009999", "publicUrl": "https://voice.example.com"},
              env={"PLIVO_AUTH_ID": "MA-not-an-id", "PLIVO_AUTH_TOKEN": "fake-plivo-token-2207"})
    out, _ = run("setup")
    assert out.splitlines()[-1] == (
        'WARN plivo.authId (from PLIVO_AUTH_ID): "MA-not-an-id" does not look like a Plivo Auth ID '
        "(MA or SA followed by 18 uppercase letters or digits)"
    )


@pytest.mark.parametrize(
    "public_url",
    [
        "http://localhost:3334",
        "http://127.0.0.1:3334/voice/webhook",
        "https://10.1.2.3",
        "https://192.168.1.20/hook",
        "https://172.16.5.4",
        "https://100.64.0.1",
        "https://100.127.255.254",
        "https://169.254.10.10",
        "https://0.0.0.0",
        "https://[::1]:8443",
        "https://[fd00::1]",
        "https://[::ffff:10.0.0.1]",
        "https://gateway.local",
        "https://intranet",
    ],
)
def test_setup_webhook_exposure_refuses_local_public_url(configure, public_url):
    configure({**TWILIO_OK, "publicUrl": public_url})
    out, _ = run_fail("setup", "--json")
    data = json.loads(out)
    assert data["ok"] is False
    check = checks_by_id(data)["webhook-exposure"]
    assert check == {
        "id": "webhook-exposure",
        "ok": False,
        "message": f"publicUrl {public_url} points at a local or private address the carrier cannot reach",
    }
    # Only the exposure check fails.
    assert [c["id"] for c in data["checks"] if not c["ok"]] == ["webhook-exposure"]


@pytest.mark.parametrize(
    ("public_url", "webhook"),
    [
        ("https://voice.example.com", "https://voice.example.com/voice/webhook"),
        ("https://voice.example.com/", "https://voice.example.com/voice/webhook"),
        ("https://voice.example.com/custom/hook", "https://voice.example.com/custom/hook"),
        ("https://8.8.8.8", "https://8.8.8.8/voice/webhook"),
        ("https://100.128.0.1", "https://100.128.0.1/voice/webhook"),  # just past CGNAT 100.64/10
        ("https://172.32.0.1", "https://172.32.0.1/voice/webhook"),  # just past 172.16/12
    ],
)
def test_setup_webhook_exposure_accepts_public_url(configure, public_url, webhook):
    configure({**TWILIO_OK, "publicUrl": public_url})
    out, _ = run("setup")
    assert out == setup_lines(
        (True, "plugin-enabled", "Voice calls enabled"),
        (True, "provider", "Provider: twilio"),
        (True, "provider-config", "Provider config valid"),
        (True, "webhook-exposure", f"Webhooks at {webhook}"),
        (True, "mode", "Notify/conversation calls use normal TTS/STT flow"),
        ok=True,
    ) + "\n"


@pytest.mark.parametrize("public_url", ["http://127.1:3334", "https://10.1", "https://0x7f.0.0.1", "https://0177.0.0.1"])
def test_setup_webhook_exposure_refuses_shorthand_ipv4_literals(configure, public_url):
    configure({**TWILIO_OK, "publicUrl": public_url})
    out, _ = run_fail("setup", "--json")
    assert checks_by_id(json.loads(out))["webhook-exposure"]["ok"] is False


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"tunnel": {"provider": "ngrok"}}, "Webhooks not exposed: ngrok is down: no ngrok authtoken"),
        ({"tunnel": {"provider": "ngrok", "ngrokAuthToken": "2fAkE0123456789abcdef"}},
         "Webhooks not exposed: ngrok is down: not running: the ngrok tunnel lives inside the gateway process"),
        ({"tunnel": {"provider": "tailscale-funnel"}}, "Webhooks not exposed: tailscale-funnel is down: "),
        ({"tailscale": {"mode": "serve"}}, "Webhooks not exposed: tailscale-serve is down: "),
    ],
)
def test_setup_webhook_exposure_fails_while_the_tunnel_is_not_up(configure, extra, message, settings, tmp_path):
    """A configured tunnel is no exposure until it is up (tests/calls/test_exposure.py starts them)."""
    settings.DATA_DIR = tmp_path
    configure({**TWILIO_OK, **extra}, env={})
    out, err = run_fail("setup", "--json")
    check = checks_by_id(json.loads(out))["webhook-exposure"]
    assert check["ok"] is False and check["message"].startswith(message)
    assert "FIX webhook-exposure: " in run_fail("setup")[1]


def test_setup_mode_fails_when_realtime_and_streaming_are_both_enabled(configure):
    loaded = configure({
        **TWILIO_OK,
        "publicUrl": "https://voice.example.com",
        "inboundPolicy": "open",
        "realtime": {"enabled": True},
        "streaming": {"enabled": True},
    })
    assert loaded.errors == ["realtime.enabled: cannot be used together with streaming.enabled"]
    out, _ = run_fail("setup", "--json")
    data = json.loads(out)
    assert data["ok"] is False
    checks = checks_by_id(data)
    assert checks["mode"] == {
        "id": "mode", "ok": False, "message": "realtime.enabled and streaming.enabled are both true; enable only one",
    }
    assert checks["provider-config"] == {
        "id": "provider-config", "ok": False,
        "message": "realtime.enabled: cannot be used together with streaming.enabled",
    }


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"streaming": {"enabled": True, "provider": "deepgram"}}, "Streaming transcription via deepgram"),
        ({"streaming": {"enabled": True}}, "Streaming transcription via the first registered provider"),
    ],
)
def test_setup_mode_names_the_streaming_provider(configure, extra, message):
    configure({**TWILIO_OK, "publicUrl": "https://voice.example.com", **extra})
    data = run_json("setup", "--json")
    assert data["ok"] is True
    assert checks_by_id(data)["mode"] == {"id": "mode", "ok": True, "message": message}


@pytest.fixture
def tiny(monkeypatch):
    from tests.calls.realtime.tiny_provider import PROVIDER_KEY_ENVS, tiny_registered

    for name in PROVIDER_KEY_ENVS:
        monkeypatch.delenv(name, raising=False)
    with tiny_registered():
        yield


def test_setup_mode_is_ok_only_with_a_ready_realtime_provider(configure, tiny):
    configure({**TWILIO_OK, "publicUrl": "https://voice.example.com", "inboundPolicy": "open",
               "realtime": {"enabled": True, "provider": "tiny", "providers": {"tiny": {"apiKey": "rt-key"}}}})
    data = run_json("setup", "--json")
    assert data["ok"] is True
    assert checks_by_id(data)["mode"] == {"id": "mode", "ok": True, "message": "Realtime voice via tiny at /voice/stream/realtime"}


def test_setup_mode_with_an_unset_provider_picks_the_one_with_a_key(configure, tiny, monkeypatch):
    monkeypatch.setenv("TINY_REALTIME_KEY", "rt-key")
    configure({**TWILIO_OK, "publicUrl": "https://voice.example.com", "inboundPolicy": "open",
               "realtime": {"enabled": True}})
    assert checks_by_id(run_json("setup", "--json"))["mode"]["message"] == "Realtime voice via tiny at /voice/stream/realtime"


@pytest.mark.parametrize(
    ("realtime", "message"),
    [
        ({"provider": "tiny"},
         "Realtime voice cannot run: realtime provider tiny has no API key (realtime.providers.tiny.apiKey or TINY_REALTIME_KEY)"),
        ({"provider": "nope"},
         "Realtime voice cannot run: realtime.provider 'nope' is not a registered realtime provider (known: "),
        ({}, "Realtime voice cannot run: realtime.provider is unset and no realtime provider is configured"),
    ],
)
def test_setup_mode_fails_naming_what_realtime_lacks(configure, tiny, realtime, message):
    configure({**TWILIO_OK, "publicUrl": "https://voice.example.com", "inboundPolicy": "open",
               "realtime": {"enabled": True, **realtime}})
    out, _ = run_fail("setup", "--json")
    data = json.loads(out)
    assert data["ok"] is False
    mode = checks_by_id(data)["mode"]
    assert mode["ok"] is False
    assert mode["message"].startswith(message)
    if not realtime:
        assert "realtime.providers.tiny.apiKey" in mode["message"]


def test_startup_logs_malformed_carrier_identifiers(configure, caplog):
    from calls.gateway import report_config

    loaded = configure({**TWILIO_OK, "publicUrl": "https://voice.example.com", "twilio": {**TWILIO_OK["twilio"], "accountSid": "AC1"}})
    with caplog.at_level("WARNING", logger="calls.gateway"):
        report_config(loaded)
    assert 'twilio.accountSid: "AC1" does not look like a Twilio Account SID (AC followed by 32 hex digits)' in [
        r.getMessage() for r in caplog.records
    ]


def test_startup_warns_when_realtime_cannot_run(configure, tiny, caplog):
    from calls.gateway import report_config

    loaded = configure({**TWILIO_OK, "publicUrl": "https://voice.example.com", "inboundPolicy": "open",
                        "realtime": {"enabled": True, "provider": "tiny"}})
    with caplog.at_level("WARNING", logger="calls.gateway"):
        report_config(loaded)
    assert any("realtime voice cannot run" in r.getMessage() and "realtime.providers.tiny.apiKey" in r.getMessage()
               for r in caplog.records)


# --- smoke -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_smoke_not_ok_prints_setup_and_exits_1(configure, outbox):
    configure({"provider": "twilio"})
    out, _ = run_fail("smoke", "--to", TO, "--yes", "--json")
    data = json.loads(out)
    assert set(data) == {"ok", "setup"}
    assert data["ok"] is False
    assert data["setup"]["ok"] is False
    assert checks_by_id(data["setup"])["provider-config"]["message"] == TWILIO_MISSING_ERRORS
    assert Call.objects.count() == 0
    assert outbox == []


@pytest.mark.django_db
def test_smoke_not_ok_text(configure):
    configure({"enabled": False})
    out, _ = run_fail("smoke")
    assert out.startswith("Voice Call setup: needs attention\nFAIL plugin-enabled:")
    assert "live-call" not in out


def test_smoke_on_an_invalid_file_reports_it_and_places_nothing(configure, tmp_path, outbox):
    path, loaded = invalid_file(tmp_path, '{provider: "twilio"')
    configure(loaded)
    out, _ = run_fail("smoke", "--to", TO, "--yes")
    lines = out.splitlines()
    assert lines[0] == "Voice Call setup: needs attention"
    assert lines[1].startswith(f"FAIL provider-config: VOICECALL_CONFIG: {path} is not valid JSON or JSON5: ")
    assert lines[2:] == SKIPPED_LINES
    data = json.loads(run_fail("smoke", "--json")[0])
    assert data["ok"] is False and data["setup"]["configFile"] == str(path)
    assert outbox == []


@pytest.mark.django_db
def test_smoke_without_to_skips_the_live_call(outbox):
    data = run_json("smoke", "--json")
    assert data == {"ok": True, "setup": MOCK_SETUP_JSON, "liveCall": False}
    assert Call.objects.count() == 0
    assert outbox == []


@pytest.mark.django_db
def test_smoke_with_to_but_no_yes_is_a_dry_run(outbox):
    data = run_json("smoke", "--to", TO, "--json")
    assert data == {"ok": True, "setup": MOCK_SETUP_JSON, "liveCall": False, "wouldCall": TO}
    assert Call.objects.count() == 0
    assert outbox == []


@pytest.mark.django_db
def test_smoke_with_yes_places_the_call(outbox):
    data = run_json("smoke", "-t", TO, "--yes", "--json")
    call = Call.objects.get()
    assert data == {"ok": True, "setup": MOCK_SETUP_JSON, "liveCall": True, "callId": str(call.pk)}
    assert call.to_number == TO
    assert call_metadata(call) == {"mode": "notify", "initialMessage": "Voice call smoke test."}
    assert actions(outbox) == ["initiate_call"]
    request = outbox[0]
    assert request.provider_call_id == f"mock-{call.pk}"
    assert request.params["to"] == TO
    assert request.params["mode"] == "notify"
    assert request.params["initial_message"] == "Voice call smoke test."


@pytest.mark.django_db
def test_smoke_with_yes_uses_message_and_mode(outbox):
    run_json("smoke", "--to", TO, "--yes", "--message", "Ping", "--mode", "conversation", "--json")
    assert call_metadata(Call.objects.get()) == {"mode": "conversation", "initialMessage": "Ping"}
    assert outbox[0].params["initial_message"] == "Ping"


@pytest.mark.django_db
def test_smoke_text_variants(outbox):
    setup = setup_lines(*MOCK_CHECKS, ok=True)
    out, _ = run("smoke")
    assert out == setup + "\nlive-call: skipped (pass --to and --yes to place one)\n"
    out, _ = run("smoke", "--to", TO)
    assert out == setup + f"\nlive-call: dry run for {TO} (add --yes to place it)\n"
    assert Call.objects.count() == 0
    out, _ = run("smoke", "--to", TO, "--yes")
    call = Call.objects.get()
    assert out == setup + f"\nlive-call: started {call.pk}\n"
    assert actions(outbox) == ["initiate_call"]


# --- call / start --------------------------------------------------------------------------


@pytest.mark.django_db
def test_call_and_start_with_an_idempotency_key_place_one_call(outbox):
    first = run_json("call", "-m", "Hello there", "-t", TO, "--idempotency-key", "cli-1")
    again = run_json("start", "--to", TO, "--message", "Hello there", "--idempotency-key", "cli-1")
    assert first == again == {"callId": str(Call.objects.get().pk)}
    assert actions(outbox) == ["initiate_call"]


@pytest.mark.django_db
def test_call_places_a_call_and_prints_its_id(outbox):
    out, err = run("call", "-m", "Hello there", "-t", TO)
    call = Call.objects.get()
    assert out == json.dumps({"callId": str(call.pk)}, indent=2) + "\n"
    assert err == ""
    assert call.direction == "outbound"
    assert call.to_number == TO
    assert call.from_number == "+15550000000"  # the mock carrier's stand-in caller id
    assert call.provider_call_id == f"mock-{call.pk}"
    assert call_metadata(call) == {"mode": "conversation", "initialMessage": "Hello there"}  # CLI default mode
    assert actions(outbox) == ["initiate_call"]
    assert outbox[0].params["to"] == TO


@pytest.mark.django_db
@pytest.mark.parametrize("command", ["call", "start"])
def test_quiet_prints_only_the_call_id(command, outbox):
    out, err = run(command, "--message", "Hello", "--to", TO, "-q")
    assert out == f"{Call.objects.get().pk}\n" and err == ""


@pytest.mark.django_db
def test_call_defaults_to_the_configured_to_number(configure, outbox):
    configure({"toNumber": TO_2})
    call_id = run_json("call", "--message", "Hi")["callId"]
    assert Call.objects.get(pk=call_id).to_number == TO_2
    assert outbox[0].params["to"] == TO_2


@pytest.mark.django_db
def test_call_to_flag_beats_the_configured_to_number(configure):
    configure({"toNumber": TO_2})
    call_id = run_json("call", "--message", "Hi", "--to", TO)["callId"]
    assert Call.objects.get(pk=call_id).to_number == TO


@pytest.mark.django_db
def test_call_without_to_or_to_number_fails(outbox):
    assert run_error("call", "-m", "Hi") == "Missing --to and no toNumber configured"
    assert Call.objects.count() == 0
    assert outbox == []


def test_call_message_is_required():
    with pytest.raises(CommandError, match="the following arguments are required: -m/--message"):
        run("call", "--to", TO)


@pytest.mark.django_db
@pytest.mark.parametrize(("config", "expected"), [({}, "notify"), ({"outbound": {"defaultMode": "conversation"}}, "conversation")])
def test_call_invalid_mode_falls_back_to_the_configured_default(configure, config, expected):
    configure(config)
    call_id = run_json("call", "-m", "Hi", "--to", TO, "--mode", "shout")["callId"]
    assert Call.objects.get(pk=call_id).mode == expected


@pytest.mark.django_db
def test_call_notify_mode(outbox):
    call_id = run_json("call", "-m", "Hi", "--to", TO, "--mode", "notify")["callId"]
    assert Call.objects.get(pk=call_id).mode == "notify"
    assert outbox[0].params["mode"] == "notify"


@pytest.mark.django_db
@pytest.mark.parametrize("bad", ["5550001111", "+0555", "+1", "+1555000111122223", "+1 555 000 1111", "tel:+15550001111"])
def test_call_rejects_a_number_that_is_not_e164(bad, outbox):
    assert run_error("call", "-m", "Hi", "--to", bad) == "to: Expected E.164 format, e.g. +15550001234"
    assert Call.objects.count() == 0
    assert outbox == []


@pytest.mark.django_db
def test_call_rejects_a_number_with_a_trailing_newline(outbox):
    assert run_error("call", "-m", "Hi", "--to", TO + "\n") == "to: Expected E.164 format, e.g. +15550001234"
    assert outbox == []


@pytest.mark.django_db
def test_call_capacity_reached():
    start_call(TO)
    assert run_error("call", "-m", "Hi", "--to", TO_2) == "Maximum concurrent calls (1) reached"
    assert Call.objects.count() == 1


@pytest.mark.django_db
def test_call_disabled_config(configure):
    configure({"enabled": False})
    assert run_error("call", "-m", "Hi", "--to", TO) == "Voice calls are disabled (enabled: false in the call config)"


@pytest.mark.django_db
def test_start_works_without_a_message(outbox):
    call_id = start_call(TO)
    call = Call.objects.get(pk=call_id)
    assert call_metadata(call) == {"mode": "conversation"}
    assert actions(outbox) == ["initiate_call"]
    assert outbox[0].params["initial_message"] is None


@pytest.mark.django_db
def test_start_with_message_and_mode(outbox):
    call_id = start_call(TO, "--message", "Hello", "--mode", "notify")
    assert call_metadata(Call.objects.get(pk=call_id)) == {"mode": "notify", "initialMessage": "Hello"}


def test_start_to_is_required():
    with pytest.raises(CommandError, match="the following arguments are required: --to"):
        run("start", "--message", "Hi")


# --- status ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_status_by_call_id_and_by_provider_id():
    call_id = start_call(TO, "--message", "Hi")
    by_id = run_json("status", "--call-id", call_id, "--json")
    by_provider = run_json("status", "--call-id", f"mock-{call_id}", "--json")
    assert by_id == by_provider
    assert by_id["callId"] == call_id
    assert by_id["providerCallId"] == f"mock-{call_id}"


@pytest.mark.django_db
def test_status_record_fields():
    call_id = start_call(TO, "--message", "Hi there")
    answer(call_id)
    run("speak", "--call-id", call_id, "--message", "How are you?")
    event_process(event=event_from_dict(
        {"type": "call.speech", "callId": call_id, "transcript": "Fine, thanks", "dedupeKey": "speech-1"}
    ))
    call = Call.objects.get(pk=call_id)
    record = run_json("status", "--call-id", call_id, "--json")
    assert set(record) == {
        "callId", "providerCallId", "provider", "direction", "state", "startedAt", "answeredAt",
        "from", "to", "sessionKey", "agentId", "transcript", "processedEventIds", "metadata",
    }
    assert record["callId"] == call_id
    assert record["provider"] == "mock"
    assert record["direction"] == "outbound"
    assert record["state"] == "listening"
    assert record["from"] == "+15550000000"
    assert record["to"] == TO
    assert record["agentId"] == "main"
    assert record["sessionKey"] == "agent:main:voice:15550001111"
    assert record["startedAt"] == to_ms(call.started_at)
    assert record["answeredAt"] == to_ms(call.answered_at)
    assert isinstance(record["startedAt"], int) and record["startedAt"] > 1_600_000_000_000
    assert [(e["speaker"], e["text"], e["isFinal"]) for e in record["transcript"]] == [
        ("bot", "How are you?", True),
        ("user", "Fine, thanks", True),
    ]
    assert all(isinstance(e["timestamp"], int) for e in record["transcript"])
    assert record["metadata"] == {"mode": "conversation", "initialMessage": "Hi there"}
    assert len(record["processedEventIds"]) == 2
    assert record["processedEventIds"][1] == "speech-1"


@pytest.mark.django_db
def test_status_of_an_ended_call_has_end_fields():
    call_id = start_call(TO)
    event_process(event=CallEnded(call_id=call_id, reason="hangup-user"))
    record = run_json("status", "--call-id", call_id, "--json")
    assert record["state"] == "hangup-user"
    assert record["endReason"] == "hangup-user"
    assert record["endedAt"] == to_ms(Call.objects.get(pk=call_id).ended_at)


@pytest.mark.django_db
@pytest.mark.parametrize("ref", ["no-such-call", "00000000-0000-4000-8000-000000000000", "mock-nothing"])
def test_status_unknown_call(ref):
    out, err = run_fail("status", "--call-id", ref, "--json")
    assert json.loads(out) == {"found": False}
    assert err == f"Call not found: {ref}\n"
    assert run_fail("status", "--call-id", ref) == ("", f"Call not found: {ref}\n")


@pytest.mark.django_db
def test_status_without_id_lists_live_calls_only(configure):
    configure({"maxConcurrentCalls": 3})
    first = start_call(TO)
    ended = start_call(TO_2)
    third = start_call("+15550003333")
    run("end", "--call-id", ended)
    data = run_json("status", "--json")
    assert data["found"] is True
    assert [c["callId"] for c in data["calls"]] == [first, third]
    assert data["calls"][0] == run_json("status", "--call-id", first, "--json")


@pytest.mark.django_db
def test_status_prints_non_ascii_text_as_is():
    call_id = start_call(TO, "--message", "Grüße, café ☎")
    out, _ = run("status", "--call-id", call_id, "--json")
    assert '"initialMessage": "Grüße, café ☎"' in out
    assert json.loads(out)["metadata"]["initialMessage"] == "Grüße, café ☎"


@pytest.mark.django_db
def test_status_without_calls():
    assert run_json("status", "--json") == {"found": True, "calls": []}


@pytest.mark.django_db
def test_status_works_with_an_incomplete_setup(configure):
    call_id = start_call(TO)
    configure({"provider": "twilio"})
    assert run_json("status", "--call-id", call_id, "--json")["callId"] == call_id


# --- speak / dtmf / end ------------------------------------------------------------------


@pytest.mark.django_db
def test_speak_plays_tts_and_records_the_bot_line(outbox):
    call_id = start_call(TO)
    answer(call_id)
    outbox.clear()
    out, err = run("speak", "--call-id", call_id, "--message", "Your order shipped")
    assert out == json.dumps({"success": True}, indent=2) + "\n"
    assert err == ""
    assert actions(outbox) == ["play_tts"]
    assert outbox[0].provider_call_id == f"mock-{call_id}"
    assert outbox[0].params["text"] == "Your order shipped"
    call = Call.objects.get(pk=call_id)
    assert call.state == "speaking"
    assert list(call.transcript_entries.values_list("speaker", "text")) == [("bot", "Your order shipped")]


@pytest.mark.django_db
def test_speak_by_provider_call_id(outbox):
    call_id = start_call(TO)
    assert run_json("speak", "--call-id", f"mock-{call_id}", "--message", "Hi") == {"success": True}
    assert actions(outbox)[-1] == "play_tts"


@pytest.mark.django_db
def test_dtmf_sends_digits(outbox):
    call_id = start_call(TO)
    outbox.clear()
    assert run_json("dtmf", "--call-id", call_id, "--digits", "12w*#,pW9") == {"success": True}
    assert actions(outbox) == ["send_dtmf"]
    assert outbox[0].provider_call_id == f"mock-{call_id}"
    assert outbox[0].params == {"digits": "12w*#,pW9"}


@pytest.mark.django_db
@pytest.mark.parametrize("digits", ["12a", "1 2", "+1", "x", "１２"])
def test_dtmf_rejects_invalid_digits(digits, outbox):
    call_id = start_call(TO)
    outbox.clear()
    with pytest.raises(CommandError) as exc:
        run("dtmf", "--call-id", call_id, "--digits", digits)
    assert str(exc.value) == (
        f"Error: argument --digits: --digits may only contain 0-9, *, # and the pauses w, p or comma (e.g. 1234#), "
        f"got {digits!r}"
    )
    assert outbox == []


@pytest.mark.django_db
def test_dtmf_rejects_digits_with_a_trailing_newline(outbox):
    call_id = start_call(TO)
    outbox.clear()
    with pytest.raises(CommandError, match=r"argument --digits: .* got '12\\n'"):
        run("dtmf", "--call-id", call_id, "--digits", "12\n")
    assert outbox == []


@pytest.mark.django_db
def test_end_hangs_up_and_finalizes(outbox):
    call_id = start_call(TO)
    outbox.clear()
    out, _ = run("end", "--call-id", call_id)
    assert out == json.dumps({"success": True}, indent=2) + "\n"
    assert actions(outbox) == ["hangup_call"]
    assert outbox[0].provider_call_id == f"mock-{call_id}"
    assert outbox[0].params == {"reason": "hangup-bot"}
    call = Call.objects.get(pk=call_id)
    assert call.state == "hangup-bot"
    assert call.end_reason == "hangup-bot"
    assert call.ended_at is not None


@pytest.mark.django_db
def test_end_of_an_ended_call_succeeds_without_hanging_up_again(outbox):
    call_id = start_call(TO)
    run("end", "--call-id", call_id)
    outbox.clear()
    assert run_json("end", "--call-id", call_id) == {"success": True}
    assert outbox == []
    assert Call.objects.get(pk=call_id).state == "hangup-bot"


@pytest.mark.django_db
def test_end_of_a_call_the_caller_hung_up_succeeds(outbox):
    call_id = start_call(TO)
    event_process(event=CallEnded(call_id=call_id, reason="hangup-user"))
    outbox.clear()
    assert run_json("end", "--call-id", call_id) == {"success": True}
    assert outbox == []
    assert Call.objects.get(pk=call_id).end_reason == "hangup-user"


@pytest.mark.django_db
@pytest.mark.parametrize(
    "args",
    [("speak", "--message", "Hi"), ("dtmf", "--digits", "1"), ("end",), ("continue", "--message", "Hi")],
    ids=["speak", "dtmf", "end", "continue"],
)
def test_unknown_call_is_not_found(args, outbox):
    command, *rest = args
    assert run_error(command, "--call-id", "no-such-call", *rest) == "Call not found: no-such-call"
    assert outbox == []


@pytest.mark.django_db
@pytest.mark.parametrize(
    "args",
    [("speak", "--message", "Hi"), ("dtmf", "--digits", "1"), ("continue", "--message", "Hi")],
    ids=["speak", "dtmf", "continue"],
)
def test_ended_call_has_ended(args, outbox):
    call_id = start_call(TO)
    run("end", "--call-id", call_id)
    ended_at = Call.objects.get(pk=call_id).ended_at.astimezone(dt_timezone.utc)
    outbox.clear()
    command, *rest = args
    if command == "dtmf":
        assert run_error(command, "--call-id", call_id, *rest) == "Call has ended"
    else:  # speak and continue say why, as the command service does
        stamp = ended_at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ended_at.microsecond // 1000:03d}Z"
        expected = f"call is not active (last state=hangup-bot, endReason=hangup-bot, endedAt={stamp})"
        assert run_error(command, "--call-id", call_id, *rest) == expected
    assert outbox == []
    assert not CallTurn.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "args",
    [("speak", "--message", "Hi"), ("dtmf", "--digits", "1"), ("continue", "--message", "Hi")],
    ids=["speak", "dtmf", "continue"],
)
def test_call_without_carrier_id_is_not_connected(args, outbox):
    call = make_call(provider_call_id=None)
    command, *rest = args
    assert run_error(command, "--call-id", str(call.pk), *rest) == "Call not connected"
    assert outbox == []


@pytest.mark.django_db
@pytest.mark.parametrize("command", ["speak", "continue"])
def test_blank_message_is_refused(command, outbox):
    call_id = start_call(TO)
    outbox.clear()
    assert run_error(command, "--call-id", call_id, "--message", "   ") == "message required"
    assert outbox == []


# --- continue ----------------------------------------------------------------------------


class CommandThread(threading.Thread):
    """Runs one voicecall command in another thread (with its own database connection)."""

    def __init__(self, *args: str) -> None:
        super().__init__(daemon=True)
        self.args = args
        self.out, self.err = io.StringIO(), io.StringIO()
        self.exit_code = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            call_command("voicecall", *self.args, stdout=self.out, stderr=self.err)
        except SystemExit as exc:
            self.exit_code = exc.code
        except BaseException as exc:  # surfaced by the test
            self.error = exc
        finally:
            connections.close_all()


def _listening_turn(call_id: str) -> bool:
    return CallTurn.objects.filter(call_id=call_id, status=TurnStatus.PENDING, listen_started_at__isnull=False).exists()


@pytest.mark.django_db(transaction=True)
def test_continue_speaks_listens_and_prints_the_transcript(outbox):
    call_id = start_call(TO)
    answer(call_id)
    outbox.clear()
    worker = CommandThread("continue", "--call-id", call_id, "--message", "What is your order number?")
    worker.start()
    wait_until(lambda: _listening_turn(call_id))
    assert worker.is_alive()  # still waiting for the caller
    event_process(event=CallSpeech(call_id=f"mock-{call_id}", transcript="partial", is_final=False))
    event_process(event=CallSpeech(call_id=call_id, transcript="  It is 4 2 7  "))
    worker.join(timeout=10)
    assert not worker.is_alive()
    assert worker.error is None and worker.exit_code is None, worker.err.getvalue()
    assert json.loads(worker.out.getvalue()) == {"success": True, "transcript": "It is 4 2 7"}
    assert actions(outbox) == ["play_tts", "start_listening", "stop_listening"]
    assert outbox[0].params["text"] == "What is your order number?"
    turn = CallTurn.objects.get(call_id=call_id)
    assert turn.status == TurnStatus.COMPLETED
    assert turn.transcript == "It is 4 2 7"
    call = Call.objects.get(pk=call_id)
    assert call.turn_count == 1
    assert call_metadata(call)["lastTurnLatencyMs"] == turn.turn_latency_ms
    assert call_metadata(call)["lastTurnListenWaitMs"] == turn.listen_wait_ms
    assert list(call.transcript_entries.values_list("speaker", "text")) == [
        ("bot", "What is your order number?"),
        ("user", "It is 4 2 7"),
    ]


@pytest.mark.django_db(transaction=True)
def test_continue_fails_when_the_call_ends_while_waiting():
    call_id = start_call(TO)
    worker = CommandThread("continue", "--call-id", call_id, "--message", "Still there?")
    worker.start()
    wait_until(lambda: _listening_turn(call_id))
    event_process(event=CallEnded(call_id=call_id, reason="hangup-user"))
    worker.join(timeout=10)
    assert not worker.is_alive()
    assert worker.exit_code == 1
    assert worker.err.getvalue().strip() == "Call ended: hangup-user"
    assert worker.out.getvalue() == ""


@pytest.mark.django_db
def test_continue_times_out(configure, outbox):
    configure({"transcriptTimeoutMs": 300})
    call_id = start_call(TO)
    outbox.clear()
    started = time.monotonic()
    assert run_error("continue", "--call-id", call_id, "--message", "Hello?") == (
        "Timed out waiting for transcript after 300ms"
    )
    assert time.monotonic() - started >= 0.3
    assert actions(outbox) == ["play_tts", "start_listening", "stop_listening"]
    assert CallTurn.objects.get(call_id=call_id).status == TurnStatus.TIMEOUT


@pytest.mark.django_db
def test_continue_while_a_turn_is_pending_is_refused(outbox):
    call_id = start_call(TO)
    CallTurn.objects.create(call_id=call_id, token="", prompt="earlier")
    outbox.clear()
    assert run_error("continue", "--call-id", call_id, "--message", "Again?") == "Already waiting for transcript"
    assert outbox == []
    assert CallTurn.objects.filter(call_id=call_id).count() == 1


# --- setup incomplete --------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    "args",
    [
        ("call", "-m", "Hi", "--to", TO),
        ("start", "--to", TO),
        ("speak", "--call-id", "{id}", "--message", "Hi"),
        ("end", "--call-id", "{id}"),
        ("dtmf", "--call-id", "{id}", "--digits", "123"),
        ("continue", "--call-id", "{id}", "--message", "Hi"),
    ],
    ids=["call", "start", "speak", "end", "dtmf", "continue"],
)
def test_operational_commands_report_setup_incomplete(configure, outbox, args):
    call_id = start_call(TO)
    outbox.clear()
    configure({"provider": "twilio"})
    args = [arg.replace("{id}", call_id) for arg in args]
    assert run_error(*args) == SETUP_INCOMPLETE
    assert outbox == []
    assert Call.objects.count() == 1
    assert Call.objects.get(pk=call_id).state == "initiated"


@pytest.mark.django_db
def test_smoke_yes_with_incomplete_setup_places_nothing(configure, outbox):
    configure({"provider": "twilio"})
    run_fail("smoke", "--to", TO, "--yes")
    assert Call.objects.count() == 0
    assert outbox == []


# --- latency -----------------------------------------------------------------------------


def _turns(call: Call, latencies, waits=None, *, status=TurnStatus.COMPLETED) -> None:
    base = timezone.now() - timedelta(hours=1)
    waits = waits if waits is not None else [None] * len(latencies)
    for index, (latency, wait) in enumerate(zip(latencies, waits)):
        CallTurn.objects.create(
            call=call, token="", status=status, turn_latency_ms=latency, listen_wait_ms=wait,
            completed_at=base + timedelta(seconds=index),
        )


def _summary(count, min_, max_, avg, p50, p90, p95, p99) -> dict:
    return {
        "count": count, "minMs": min_, "maxMs": max_, "avgMs": avg,
        "p50Ms": p50, "p90Ms": p90, "p95Ms": p95, "p99Ms": p99,
    }


ZERO = _summary(0, 0, 0, 0, 0, 0, 0, 0)


@pytest.mark.django_db
def test_latency_from_the_database_percentiles():
    call = make_call(provider_call_id="mock-lat")
    _turns(call, list(range(1, 101)), [v * 2 for v in range(1, 101)])
    data = run_json("latency", "--json")
    assert data == {
        "turnsScanned": 100,
        "turnLatency": _summary(100, 1, 100, 50.5, 50, 90, 95, 99),
        "listenWait": _summary(100, 2, 200, 101.0, 100, 180, 190, 198),
    }


@pytest.mark.django_db
def test_latency_from_the_database_unsorted_small_series():
    call = make_call(provider_call_id="mock-lat")
    _turns(call, [300, 100, 200, 400], [30, None, 10, 20])
    data = run_json("latency", "--json")
    assert data["turnsScanned"] == 4
    # n=4: p50 -> rank 2, p90/p95/p99 -> rank 4
    assert data["turnLatency"] == _summary(4, 100, 400, 250.0, 200, 400, 400, 400)
    assert data["listenWait"] == _summary(3, 10, 30, 20.0, 20, 30, 30, 30)


@pytest.mark.django_db
def test_latency_last_uses_the_newest_turns():
    call = make_call(provider_call_id="mock-lat")
    _turns(call, list(range(1, 101)))
    data = run_json("latency", "--last", "10", "--json")
    assert data["turnsScanned"] == 10
    assert data["turnLatency"] == _summary(10, 91, 100, 95.5, 95, 99, 100, 100)
    assert data["listenWait"] == ZERO


@pytest.mark.django_db
def test_latency_counts_completed_turns_only():
    call = make_call(provider_call_id="mock-lat")
    _turns(call, [5000], status=TurnStatus.TIMEOUT)
    _turns(call, [7000], status=TurnStatus.FAILED)
    _turns(call, [120])
    data = run_json("latency", "--json")
    assert data["turnsScanned"] == 1
    assert data["turnLatency"] == _summary(1, 120, 120, 120.0, 120, 120, 120, 120)


@pytest.mark.django_db
def test_latency_empty_is_all_zeros():
    out, _ = run("latency", "--json")
    expected = {"turnsScanned": 0, "turnLatency": ZERO, "listenWait": ZERO}
    assert out == json.dumps(expected, indent=2) + "\n"


def _record(call_id: str, latency=None, wait=None, **metadata) -> str:
    meta = dict(metadata)
    if latency is not None:
        meta["lastTurnLatencyMs"] = latency
    if wait is not None:
        meta["lastTurnListenWaitMs"] = wait
    return json.dumps({"callId": call_id, "state": "listening", "transcript": [], "metadata": meta})


def test_latency_from_a_calls_jsonl_file(tmp_path):
    log = tmp_path / "calls.jsonl"
    lines = [
        _record("a", 100, 40),
        "",
        "{not json",
        json.dumps({"version": 2, "call": json.loads(_record("b", 300, 60)), "persistedAt": 1, "sequence": 2}),
        _record("c"),  # no latency yet
        _record("d", latency="200", wait=True),  # not numbers: ignored
        json.dumps(["a", "list"]),
        json.dumps({"callId": "e", "metadata": None}),
        _record("a", 100, 40),  # the same turn again in a later snapshot: counted again
        _record("f", 250.5),
    ]
    log.write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = run_json("latency", "--file", str(log), "--json")
    assert data == {
        "recordsScanned": 9,  # blank lines are not records
        "turnLatency": _summary(4, 100, 300, 187.6, 100, 300, 300, 300),
        "listenWait": _summary(3, 40, 60, 46.7, 40, 60, 60, 60),
    }


def test_latency_file_last_limits_the_window(tmp_path):
    log = tmp_path / "calls.jsonl"
    log.write_text("\n".join(_record(f"c{i}", i, i * 10) for i in range(1, 21)) + "\n", encoding="utf-8")
    data = run_json("latency", "--file", str(log), "--json", "--last", "5")
    assert data["recordsScanned"] == 5
    assert data["turnLatency"] == _summary(5, 16, 20, 18.0, 18, 20, 20, 20)
    assert data["listenWait"] == _summary(5, 160, 200, 180.0, 180, 200, 200, 200)


def test_latency_file_without_turns_is_zeros(tmp_path):
    log = tmp_path / "calls.jsonl"
    log.write_text(_record("x") + "\n garbage\n", encoding="utf-8")
    assert run_json("latency", "--file", str(log), "--json") == {"recordsScanned": 2, "turnLatency": ZERO, "listenWait": ZERO}


def test_latency_missing_file(tmp_path):
    missing = tmp_path / "nope.jsonl"
    assert run_error("latency", "--file", str(missing)) == f"No log file at {missing}"


def test_latency_file_that_is_a_directory(tmp_path):
    assert run_error("latency", "--file", str(tmp_path)) == f"No log file at {tmp_path}"


# --- tail --------------------------------------------------------------------------------


class Steps:
    """A `stop` callable: before poll k runs steps[k] (None = nothing), then stops."""

    def __init__(self, *steps) -> None:
        self.steps = list(steps)
        self.polls = 0

    def __call__(self) -> bool:
        if self.polls >= len(self.steps):
            return True
        step = self.steps[self.polls]
        self.polls += 1
        if step is not None:
            step()
        return False


def _follow_calls(last: int, *steps) -> list[dict]:
    lines: list[str] = []
    stop = Steps(*steps)
    follow_calls(lines.append, last=last, poll_ms=1, stop=stop)
    assert stop.polls == len(steps)
    return [json.loads(line) for line in lines]


def _follow_file(path: Path, last: int, *steps) -> list[str]:
    lines: list[str] = []
    follow_file(path, lines.append, last=last, poll_ms=1, stop=Steps(*steps))
    return lines


def _append(path: Path, data: bytes):
    def step() -> None:
        with path.open("ab") as handle:
            handle.write(data)

    return step


@pytest.mark.django_db
def test_follow_calls_prints_recent_then_changes_once_each():
    calls = [make_call(provider_call_id=f"mock-t{i}", to_number=f"+1555000000{i}") for i in range(3)]
    first, second, third = (str(c.pk) for c in calls)

    records = _follow_calls(
        2,
        None,  # nothing changed: nothing printed
        lambda: event_process(event=CallRinging(call_id=first)),
        None,
        lambda: (event_process(event=CallAnswered(call_id=third)), event_process(event=CallRinging(call_id=second))),
        None,
    )
    assert [(r["callId"], r["state"]) for r in records] == [
        (second, "initiated"),
        (third, "initiated"),  # the newest last
        (first, "ringing"),
        (third, "answered"),
        (second, "ringing"),
    ]
    # Each line is the call's full record as `status` shows it.
    assert records[-1] == _status_record(second)


def _status_record(call_id: str) -> dict:
    from calls.selectors import call_record

    return call_record(Call.objects.get(pk=call_id))


@pytest.mark.django_db
def test_follow_calls_prints_new_calls():
    records = _follow_calls(
        25,
        None,
        lambda: make_call(provider_call_id="mock-new-1"),
        lambda: make_call(provider_call_id="mock-new-2"),
    )
    assert [r["providerCallId"] for r in records] == ["mock-new-1", "mock-new-2"]


@pytest.mark.django_db
def test_follow_calls_last_larger_than_history_prints_everything_oldest_first():
    made = [make_call(provider_call_id=f"mock-h{i}") for i in range(3)]
    records = _follow_calls(25, None)
    assert [r["callId"] for r in records] == [str(c.pk) for c in made]


@pytest.mark.django_db
def test_follow_calls_last_zero_prints_only_changes():
    old = [make_call(provider_call_id=f"mock-old{i}") for i in range(2)]
    records = _follow_calls(0, None, lambda: event_process(event=CallRinging(call_id=str(old[0].pk))))
    assert [(r["callId"], r["state"]) for r in records] == [(str(old[0].pk), "ringing")]


@pytest.mark.django_db(transaction=True)
def test_follow_calls_prints_the_bot_line_of_a_speak(monkeypatch):
    from providers.carriers.mock import MockCarrier

    call = make_call(provider_call_id="mock-speak", state="answered")
    call_id = str(call.pk)
    lines: list[str] = []
    saw_speaking = threading.Event()
    spoke = threading.Event()

    def write(line: str) -> None:
        lines.append(line)
        if json.loads(line).get("state") == "speaking":
            saw_speaking.set()

    polls_after_speak = []
    following = threading.Event()

    def stop() -> bool:
        following.set()  # the follower has taken its starting point
        if spoke.is_set():
            polls_after_speak.append(1)
        return len(polls_after_speak) > 5

    def follow() -> None:
        try:
            follow_calls(write, last=0, poll_ms=20, stop=stop)
        finally:
            connections.close_all()

    real_play = MockCarrier.play_tts

    def slow_play(self, **kwargs):
        # The carrier request takes a while: the follower polls in the meantime.
        assert saw_speaking.wait(timeout=10)
        return real_play(self, **kwargs)

    monkeypatch.setattr(MockCarrier, "play_tts", slow_play)
    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    assert following.wait(timeout=10)
    call_speak(call_id=call_id, text="Thanks for waiting")
    spoke.set()
    follower.join(timeout=10)
    assert not follower.is_alive()
    last = [json.loads(line) for line in lines if json.loads(line)["callId"] == call_id][-1]
    assert [(e["speaker"], e["text"]) for e in last["transcript"]] == [("bot", "Thanks for waiting")]


def test_follow_file_prints_the_last_n_lines(tmp_path):
    log = tmp_path / "custom.jsonl"
    log.write_bytes(b"one\n\ntwo\nthree\n  \nfour\nfive\n")
    assert _follow_file(log, 2) == ["four", "five"]
    assert _follow_file(log, 0) == []
    assert _follow_file(log, 5) == ["one", "two", "three", "four", "five"]
    assert _follow_file(log, 25) == ["one", "two", "three", "four", "five"]


def test_follow_file_prints_appended_lines_once(tmp_path):
    log = tmp_path / "custom.jsonl"
    log.write_bytes(b"old\n")
    lines = _follow_file(
        log, 1,
        None,
        _append(log, b"new 1\n"),
        None,
        _append(log, b"new 2\nnew 3\n\n"),
        None,
    )
    assert lines == ["old", "new 1", "new 2", "new 3"]


def test_follow_file_holds_partial_lines_until_the_newline(tmp_path):
    log = tmp_path / "custom.jsonl"
    log.write_bytes(b"first\n{\"half")  # the file already ends in a partial line
    seen: list[str] = []

    def check(expected):
        return lambda: assert_equal(seen, expected)

    stop = Steps(
        None,
        check(["first"]),
        _append(log, b"\": 1"),
        check(["first"]),
        _append(log, b"}\n{\"next"),
        check(["first", '{"half": 1}']),
        _append(log, b"\": 2}\n"),
        None,
    )
    follow_file(log, seen.append, last=10, poll_ms=1, stop=stop)
    assert seen == ["first", '{"half": 1}', '{"next": 2}']


def assert_equal(actual, expected) -> None:
    assert actual == expected


def test_follow_file_keeps_a_split_utf8_character_intact(tmp_path):
    log = tmp_path / "custom.jsonl"
    log.write_bytes(b"")
    text = '{"text": "café ☎ 😀"}\n'.encode()
    e_acute = text.index("é".encode())
    emoji = text.index("😀".encode())
    parts = [text[: e_acute + 1], text[e_acute + 1 : emoji + 2], text[emoji + 2 : emoji + 3], text[emoji + 3 :]]
    lines = _follow_file(log, 0, *[_append(log, part) for part in parts], None)
    assert lines == ['{"text": "café ☎ 😀"}']


def test_follow_file_restarts_after_truncation(tmp_path):
    log = tmp_path / "custom.jsonl"
    log.write_bytes(b"a long first line\na long second line\n")

    def truncate() -> None:
        log.write_bytes(b"fresh\n")  # same file, now shorter

    lines = _follow_file(log, 0, None, truncate, None, _append(log, b"more\n"))
    assert lines == ["fresh", "more"]


def test_follow_file_restarts_after_rotation(tmp_path):
    log = tmp_path / "custom.jsonl"
    log.write_bytes(b"before 1\nbefore 2\n")

    def rotate() -> None:
        log.rename(tmp_path / "custom.jsonl.1")
        fresh = tmp_path / "fresh.tmp"
        # Larger than the old file: only the changed inode shows it is a new file.
        fresh.write_bytes(b"after rotation 1\nafter rotation 2\n")
        fresh.replace(log)

    lines = _follow_file(log, 1, None, rotate, None, _append(log, b"after rotation 3\n"))
    assert lines == ["before 2", "after rotation 1", "after rotation 2", "after rotation 3"]


def test_follow_file_reads_a_recreated_file_from_the_start(tmp_path):
    log = tmp_path / "custom.jsonl"
    log.write_bytes(b"x\n")
    old_inode = log.stat().st_ino

    def recreate() -> None:
        log.write_bytes(b"back\n")
        if log.stat().st_ino != old_inode:
            pytest.skip("this filesystem gave the new file a new inode number")

    lines = _follow_file(log, 0, lambda: log.unlink(), None, recreate, None)
    assert lines == ["back"]


def test_tail_missing_file_in_process(tmp_path):
    missing = tmp_path / "missing.jsonl"
    assert run_error("tail", "--file", str(missing)) == f"No log file at {missing}"


def test_tail_missing_file_subprocess(tmp_path):
    missing = tmp_path / "missing.jsonl"
    result = run_subprocess(tmp_path, "tail", "--file", str(missing))
    assert result.returncode == 1
    assert f"No log file at {missing}" in result.stderr
    assert result.stdout == ""


# --- doctor ------------------------------------------------------------------------------


def test_doctor_without_a_config_file(settings):
    settings.VOICECALL_CONFIG = ""
    out, _ = run("doctor")
    assert out == "No config file (VOICECALL_CONFIG is not set): nothing to check.\n"


def test_doctor_reports_legacy_keys(settings, tmp_path):
    path = tmp_path / "voicecall.json"
    original = json.dumps({"provider": "log", "twilio": {"from": "+15550001234"}, "stt": {"provider": "openai"}})
    path.write_text(original, encoding="utf-8")
    settings.VOICECALL_CONFIG = str(path)
    out, _ = run_fail("doctor")  # something to fix and no --fix: exit 1, as a linter
    assert out == "\n".join([
        f"Legacy config keys in {path}:",
        '  - provider: rewrote "log" to "mock"',
        "  - twilio.from: moved to fromNumber",
        "  - stt: removed (use streaming.provider and streaming.providers)",
        "Run `python manage.py voicecall doctor --fix` to rewrite them.",
    ]) + "\n"
    assert path.read_text(encoding="utf-8") == original  # not touched without --fix
    assert not (tmp_path / "voicecall.json.bak").exists()


def test_doctor_fix_rewrites_and_keeps_a_backup(settings, tmp_path):
    path = tmp_path / "voicecall.json5"
    original = '// my config\n{provider: "log", twilio: {from: "+15550001234"}, toNumber: "+15550002222"}\n'
    path.write_text(original, encoding="utf-8")
    settings.VOICECALL_CONFIG = str(path)
    out, _ = run("doctor", "--fix")
    backup = tmp_path / "voicecall.json5.bak"
    assert out == "\n".join([
        f"Legacy config keys in {path}:",
        '  - provider: rewrote "log" to "mock"',
        "  - twilio.from: moved to fromNumber",
        f"Rewrote {path} (the original is at {backup}).",
        "Note: the rewritten file is plain JSON; comments from the JSON5 original were not kept.",
    ]) + "\n"
    assert backup.read_text(encoding="utf-8") == original
    assert json.loads(path.read_text(encoding="utf-8")) == {
        "provider": "mock", "twilio": {}, "toNumber": "+15550002222", "fromNumber": "+15550001234",
    }
    # Fixed: a second run finds nothing.
    out, _ = run("doctor")
    assert out == f"No legacy config keys in {path}.\n"


def test_doctor_fix_of_wrapped_config(settings, tmp_path):
    path = tmp_path / "openclaw.json"
    path.write_text(json.dumps({"plugins": {"entries": {"voice-call": {"enabled": True, "config": {"provider": "log"}}}}}))
    settings.VOICECALL_CONFIG = str(path)
    out, _ = run("doctor", "--fix")
    assert '  - plugins.entries.voice-call.config.provider: rewrote "log" to "mock"' in out.split("\n")
    assert "Note:" not in out  # it was plain JSON
    assert json.loads(path.read_text())["plugins"]["entries"]["voice-call"] == {"enabled": True, "config": {"provider": "mock"}}


def test_doctor_clean_config_fix_changes_nothing(settings, tmp_path):
    path = tmp_path / "voicecall.json"
    path.write_text('{"provider": "mock"}', encoding="utf-8")
    settings.VOICECALL_CONFIG = str(path)
    out, _ = run("doctor", "--fix")
    assert out == f"No legacy config keys in {path}.\n"
    assert path.read_text(encoding="utf-8") == '{"provider": "mock"}'
    assert not (tmp_path / "voicecall.json.bak").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read {path}: No such file or directory"),
        ("{oops", "{path} is not valid JSON or JSON5: "),
        ("[1, 2]", "{path}: the config must be a JSON object"),
        ('{"plugins": {}}', "{path}: plugins.entries.voice-call is missing"),
    ],
    ids=["missing", "invalid", "not-object", "no-entry"],
)
def test_doctor_errors_exit_1(settings, tmp_path, content, message):
    path = tmp_path / "voicecall.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    settings.VOICECALL_CONFIG = str(path)
    err = run_error("doctor")
    assert err.startswith(message.format(path=path))


def test_doctor_on_a_file_that_fails_validation_reports_the_errors_and_exits_1(settings, tmp_path):
    path = tmp_path / "voicecall.json"
    path.write_text(json.dumps({"provider": "mock", "fromNumber": "555", "strayKey": 1}), encoding="utf-8")
    settings.VOICECALL_CONFIG = str(path)
    out, _ = run_fail("doctor")
    assert out.splitlines() == [  # the errors only: "no legacy keys" beside them would read as a clean bill
        f"2 config errors in {path} (the gateway does not start calls until they are fixed; "
        "`python manage.py voicecall setup` says how):",
        "  - fromNumber: Expected E.164 format, e.g. +15550001234",
        "  - strayKey: unknown key",
    ]


def test_doctor_shows_legacy_keys_and_errors_together(settings, tmp_path):
    path = tmp_path / "voicecall.json"
    path.write_text(json.dumps({"provider": "log", "maxConcurrentCalls": "two"}), encoding="utf-8")
    settings.VOICECALL_CONFIG = str(path)
    out, _ = run_fail("doctor", "--fix")  # rewritten, but an error is left
    lines = out.splitlines()
    assert lines[:2] == [  # errors first
        f"1 config error in {path} (the gateway does not start calls until they are fixed; "
        "`python manage.py voicecall setup` says how):",
        "  - maxConcurrentCalls: must be an integer",
    ]
    assert lines[2:4] == [f"Legacy config keys in {path}:", '  - provider: rewrote "log" to "mock"']


def test_doctor_fix_that_leaves_a_valid_file_exits_0(settings, tmp_path):
    path = tmp_path / "voicecall.json"
    path.write_text(json.dumps({"provider": "log"}), encoding="utf-8")
    settings.VOICECALL_CONFIG = str(path)
    run_fail("doctor")  # legacy keys and no --fix: something to do
    run("doctor", "--fix")
    out, _ = run("doctor")
    assert out == f"No legacy config keys in {path}.\n"


def test_doctor_on_a_syntax_error_exits_1_naming_the_file(settings, tmp_path):
    path = tmp_path / "voicecall.json5"
    path.write_text('{provider: "twilio", publicUrl: "https://voice.example.com"', encoding="utf-8")
    settings.VOICECALL_CONFIG = str(path)
    out, err = run_fail("doctor")
    assert out == "" and "No legacy config keys" not in err
    assert err.startswith(f"{path} is not valid JSON or JSON5: <string>:1 Unexpected end of input at column 60")


def test_setup_and_doctor_exit_codes_in_a_subprocess(tmp_path):
    path = tmp_path / "voicecall.json5"
    path.write_text('{provider: "twilio", fromNumber: "555"}', encoding="utf-8")
    env = {**os.environ, "VOICECALL_DATA_DIR": str(tmp_path), "VOICECALL_CONFIG": str(path)}
    env.pop("DJANGO_SETTINGS_MODULE", None)  # the project's settings read VOICECALL_CONFIG; the tests' clear it
    for args in (["setup"], ["setup", "--json"], ["doctor"]):
        result = subprocess.run([sys.executable, "manage.py", "voicecall", *args], cwd=MAIN, env=env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert "fromNumber: Expected E.164 format" in result.stdout
        assert "OK " not in result.stdout


# --- argument errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("bogus",), "argument <command>: invalid choice: 'bogus'"),
        (("status", "--bogus"), "unrecognized arguments: --bogus"),
        (("tail", "--last", "0x10"), "argument --last: Invalid numeric value for --last: 0x10"),
        (("tail", "--last", "1e3"), "argument --last: Invalid numeric value for --last: 1e3"),
        (("tail", "--last", "2.5"), "argument --last: Invalid numeric value for --last: 2.5"),
        (("tail", "--last", "-1"), "argument --last: Invalid numeric value for --last: -1"),
        (("tail", "--poll", "10"), "argument --poll: --poll must be at least 50, got 10"),
        (("tail", "--poll", "fast"), "argument --poll: Invalid numeric value for --poll: fast"),
        (("latency", "--last", "0"), "argument --last: --last must be at least 1, got 0"),
        (("latency", "--last", "0x10"), "argument --last: Invalid numeric value for --last: 0x10"),
        (("speak", "--message", "Hi"), "the following arguments are required: --call-id"),
        (("dtmf", "--call-id", "x"), "the following arguments are required: --digits"),
        (("end",), "the following arguments are required: --call-id"),
        (("continue", "--call-id", "x"), "the following arguments are required: --message"),
    ],
)
def test_argument_errors(args, message):
    with pytest.raises(CommandError) as exc:
        run(*args)
    assert str(exc.value).startswith(f"Error: {message}")


@pytest.mark.parametrize("value", ["²", "١٢"], ids=["superscript-two", "arabic-indic-12"])
def test_numeric_options_accept_plain_ascii_digits_only(value):
    with pytest.raises(CommandError) as exc:
        run("latency", "--last", value, "--file", "/nonexistent/calls.jsonl")
    assert str(exc.value) == f"Error: argument --last: Invalid numeric value for --last: {value}"


def test_numeric_options_accept_plain_decimals(tmp_path):
    log = tmp_path / "calls.jsonl"
    log.write_text(_record("a", 10) + "\n" + _record("b", 20) + "\n")
    assert run_json("latency", "--file", str(log), "--json", "--last", "1")["turnLatency"]["count"] == 1
    assert run_json("latency", "--file", str(log), "--json", "--last", "007")["recordsScanned"] == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("tail", "--last", "0x10"), "Invalid numeric value for --last: 0x10"),
        (("tail", "--poll", "10"), "--poll must be at least 50, got 10"),
        (("speak", "--message", "Hi"), "the following arguments are required: --call-id"),
        (("nonsense",), "invalid choice: 'nonsense'"),
    ],
    ids=["last-hex", "poll-too-small", "missing-call-id", "unknown-command"],
)
def test_argument_errors_subprocess(tmp_path, args, message):
    result = run_subprocess(tmp_path, *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "usage: manage.py voicecall" in result.stderr
    assert result.stdout == ""
