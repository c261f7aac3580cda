"""`voicecall doctor [--fix]`: finding legacy config keys (docs/compatibility.md, Legacy keys and doctor --fix) and rewriting the file."""
from __future__ import annotations

import json

import pytest

from calls.cli.doctor import DoctorError, doctor, doctor_text
from core.config.loader import load_config_file

PREFIX = "plugins.entries.voice-call.config."
TWILIO = {"accountSid": "AC" + "0" * 31 + "1", "authToken": "0123456789abcdef" * 2}


def write(tmp_path, content, name="voicecall.json"):
    """Write a config file: a dict is dumped as JSON, a string is written as is."""
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content, indent=2), encoding="utf-8")
    return path


def paths(report):
    return [change.path for change in report.changes]


def fixed(tmp_path, content):
    """Run doctor --fix and return (report, the rewritten file parsed)."""
    path = write(tmp_path, content)
    report = doctor(path, fix=True)
    return report, json.loads(path.read_text(encoding="utf-8"))


def wrap(config, **extra):
    return {"plugins": {"entries": {"voice-call": {"enabled": True, "config": config}}}, **extra}


# --- each legacy key ----------------------------------------------------------------------

LEGACY_CASES = [
    pytest.param({"provider": "log"}, ["provider"], {"provider": "mock"}, id="provider-log"),
    pytest.param(
        {"twilio": {"accountSid": "AC1", "from": "+15550001234"}},
        ["twilio.from"],
        {"twilio": {"accountSid": "AC1"}, "fromNumber": "+15550001234"},
        id="twilio-from",
    ),
    pytest.param(
        {"fromNumber": "+15550009999", "twilio": {"from": "+15550001234"}},
        ["twilio.from"],
        {"fromNumber": "+15550009999", "twilio": {}},
        id="twilio-from-with-fromNumber",
    ),
    pytest.param(
        {"streaming": {"sttProvider": "openai-realtime"}},
        ["streaming.sttProvider"],
        {"streaming": {"provider": "openai"}},
        id="sttProvider",
    ),
    pytest.param(
        {"streaming": {"openaiApiKey": "sk-legacy"}},
        ["streaming.openaiApiKey"],
        {"streaming": {"providers": {"openai": {"apiKey": "sk-legacy"}}}},
        id="openaiApiKey",
    ),
    pytest.param(
        {"streaming": {"sttModel": "gpt-4o-transcribe"}},
        ["streaming.sttModel"],
        {"streaming": {"providers": {"openai": {"model": "gpt-4o-transcribe"}}}},
        id="sttModel",
    ),
    pytest.param(
        {"streaming": {"silenceDurationMs": 600}},
        ["streaming.silenceDurationMs"],
        {"streaming": {"providers": {"openai": {"silenceDurationMs": 600}}}},
        id="silenceDurationMs",
    ),
    pytest.param(
        {"streaming": {"vadThreshold": 0.4}},
        ["streaming.vadThreshold"],
        {"streaming": {"providers": {"openai": {"vadThreshold": 0.4}}}},
        id="vadThreshold",
    ),
    pytest.param(
        {"streaming": {"enabled": True, "vadThreshold": "0.4"}},
        ["streaming.vadThreshold"],
        {"streaming": {"enabled": True}},
        id="vadThreshold-string-dropped",
    ),
    pytest.param(
        {"streaming": {"silenceDurationMs": True}},
        ["streaming.silenceDurationMs"],
        {"streaming": {}},
        id="silenceDurationMs-bool-dropped",
    ),
    pytest.param(
        {"realtime": {"agentContext": {"enabled": True, "includeSystemPrompt": True}}},
        ["realtime.agentContext.includeSystemPrompt"],
        {"realtime": {"agentContext": {"enabled": True}}},
        id="includeSystemPrompt",
    ),
    pytest.param(
        {"stt": {"provider": "openai", "model": "whisper-1"}, "maxDurationSeconds": 60},
        ["stt"],
        {"maxDurationSeconds": 60},
        id="stt",
    ),
    pytest.param(
        {"tts": {"provider": "edge", "edge": {"voice": "en-US-AvaNeural"}}},
        ["tts.provider", "tts.edge"],
        {"tts": {"provider": "microsoft", "providers": {"microsoft": {"voice": "en-US-AvaNeural"}}}},
        id="tts-edge",
    ),
    pytest.param(
        {"tts": {"openai": {"voice": "alloy"}}},
        ["tts.openai"],
        {"tts": {"providers": {"openai": {"voice": "alloy"}}}},
        id="tts-openai",
    ),
]


@pytest.mark.parametrize(("original", "expected_paths", "expected"), LEGACY_CASES)
def test_legacy_key_is_reported(tmp_path, original, expected_paths, expected):
    report = doctor(write(tmp_path, original), fix=False)
    assert paths(report) == expected_paths


@pytest.mark.parametrize(("original", "expected_paths", "expected"), LEGACY_CASES)
def test_legacy_key_is_rewritten(tmp_path, original, expected_paths, expected):
    _, rewritten = fixed(tmp_path, original)
    assert rewritten == expected


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_legacy_number_is_dropped(tmp_path, literal):
    report, rewritten = fixed(tmp_path, f'{{"streaming": {{"vadThreshold": {literal}, "silenceDurationMs": 700}}}}')
    assert paths(report) == ["streaming.silenceDurationMs", "streaming.vadThreshold"]
    assert rewritten == {"streaming": {"providers": {"openai": {"silenceDurationMs": 700}}}}
    assert "not a finite number" in str(report.changes[1])


def test_all_flat_streaming_keys_together(tmp_path):
    _, rewritten = fixed(
        tmp_path,
        {
            "streaming": {
                "enabled": True,
                "sttProvider": "openai-realtime",
                "openaiApiKey": "sk-1",
                "sttModel": "gpt-4o-transcribe",
                "silenceDurationMs": 800,
                "vadThreshold": 0.5,
            }
        },
    )
    assert rewritten == {
        "streaming": {
            "enabled": True,
            "provider": "openai",
            "providers": {
                "openai": {"apiKey": "sk-1", "model": "gpt-4o-transcribe", "silenceDurationMs": 800, "vadThreshold": 0.5}
            },
        }
    }


@pytest.mark.parametrize(
    ("streaming", "expected"),
    [
        (
            {"sttModel": "old-model", "providers": {"openai": {"model": "new-model"}}},
            {"providers": {"openai": {"model": "new-model"}}},
        ),
        (
            {"vadThreshold": 0.9, "providers": {"openai": {"vadThreshold": 0.2, "model": "m"}}},
            {"providers": {"openai": {"vadThreshold": 0.2, "model": "m"}}},
        ),
        ({"sttProvider": "openai-realtime", "provider": "deepgram"}, {"provider": "deepgram"}),
    ],
    ids=["sttModel", "vadThreshold", "sttProvider"],
)
def test_current_streaming_value_is_kept(tmp_path, streaming, expected):
    report, rewritten = fixed(tmp_path, {"streaming": streaming})
    assert rewritten == {"streaming": expected}
    assert "already set" in str(report.changes[0])


def test_current_from_number_is_kept_and_change_says_so(tmp_path):
    report, rewritten = fixed(tmp_path, {"fromNumber": "+15550009999", "twilio": {"from": "+15550001234"}})
    assert rewritten["fromNumber"] == "+15550009999"
    assert "fromNumber is already set" in str(report.changes[0])


def test_other_keys_are_left_alone(tmp_path):
    original = {
        "provider": "log",
        "inboundGreeting": "Grüß Gott ☎",
        "numbers": {"+15550001234": {"agentId": "sales"}},
        "allowFrom": ["+15550002222"],
    }
    _, rewritten = fixed(tmp_path, original)
    assert rewritten == {**original, "provider": "mock"}


def test_non_ascii_text_is_written_as_is(tmp_path):
    path = write(tmp_path, {"provider": "log", "inboundGreeting": "Grüß Gott"})
    doctor(path, fix=True)
    assert "Grüß Gott" in path.read_text(encoding="utf-8")


# --- wrapper form -------------------------------------------------------------------------


def test_wrapper_changes_are_prefixed(tmp_path):
    report = doctor(write(tmp_path, wrap({"provider": "log", "twilio": {"from": "+15550001234"}})), fix=False)
    assert paths(report) == [PREFIX + "provider", PREFIX + "twilio.from"]


def test_wrapper_is_rewritten_in_place_keeping_the_rest(tmp_path):
    original = wrap({"provider": "log"}, gateway={"port": 18789})
    original["plugins"]["entries"]["other-plugin"] = {"enabled": False}
    _, rewritten = fixed(tmp_path, original)
    expected = wrap({"provider": "mock"}, gateway={"port": 18789})
    expected["plugins"]["entries"]["other-plugin"] = {"enabled": False}
    assert rewritten == expected


def test_wrapper_top_level_tts_legacy_block_is_rewritten(tmp_path):
    report, rewritten = fixed(tmp_path, wrap({"provider": "mock"}, tts={"openai": {"voice": "alloy"}}))
    assert paths(report) == ["tts.openai"]
    assert rewritten["tts"] == {"providers": {"openai": {"voice": "alloy"}}}


def test_wrapper_entry_enabled_is_kept(tmp_path):
    original = {"plugins": {"entries": {"voice-call": {"enabled": False, "config": {"provider": "log"}}}}}
    _, rewritten = fixed(tmp_path, original)
    assert rewritten["plugins"]["entries"]["voice-call"] == {"enabled": False, "config": {"provider": "mock"}}


# --- report-only vs --fix -------------------------------------------------------------------


def test_report_only_does_not_touch_the_file(tmp_path):
    path = write(tmp_path, '{"provider": "log"}  // legacy\n')
    before = path.read_bytes()
    report = doctor(path, fix=False)
    assert path.read_bytes() == before
    assert not (tmp_path / "voicecall.json.bak").exists()
    assert (report.rewritten, report.backup) == (False, None)


def test_report_only_text_lists_changes_and_suggests_fix(tmp_path):
    path = write(tmp_path, {"provider": "log", "twilio": {"from": "+15550001234"}})
    text = doctor_text(doctor(path, fix=False))
    lines = text.splitlines()
    assert lines[0] == f"Legacy config keys in {path}:"
    assert lines[1].startswith("  - provider: ")
    assert lines[2].startswith("  - twilio.from: ")
    assert lines[-1] == "Run `python manage.py voicecall doctor --fix` to rewrite them."
    assert "Rewrote" not in text


def test_fix_rewrites_and_keeps_backup_of_original_bytes(tmp_path):
    path = write(tmp_path, '{\n  "provider":   "log"\n}\n')
    original = path.read_bytes()
    report = doctor(path, fix=True)
    backup = tmp_path / "voicecall.json.bak"
    assert report.rewritten is True
    assert report.backup == backup
    assert backup.read_bytes() == original
    assert path.read_bytes() != original


def test_fix_text_says_where_the_backup_is(tmp_path):
    path = write(tmp_path, {"provider": "log"})
    text = doctor_text(doctor(path, fix=True))
    assert f"Rewrote {path} (the original is at {path}.bak)." in text
    assert "doctor --fix` to rewrite" not in text


def test_fixed_file_loads_with_no_warnings(tmp_path):
    path = write(
        tmp_path,
        {
            "provider": "twilio",
            "twilio": {"accountSid": "AC" + "0" * 31 + "1", "authToken": "0123456789abcdef" * 2, "from": "+15550001234"},
            "inboundPolicy": "allowlist",
            "streaming": {
                "enabled": True,
                "sttProvider": "openai-realtime",
                "openaiApiKey": "sk-1",
                "sttModel": "gpt-4o-transcribe",
                "silenceDurationMs": 800,
                "vadThreshold": 0.5,
            },
            "realtime": {"agentContext": {"includeSystemPrompt": True}},
            "stt": {"provider": "openai"},
            "tts": {"provider": "edge", "openai": {"voice": "alloy"}},
        },
    )
    before = load_config_file(path, environ={})
    assert before.errors == [] and before.warnings

    doctor(path, fix=True)
    after = load_config_file(path, environ={})
    assert (after.errors, after.warnings) == ([], [])
    assert after.config.from_number == "+15550001234"
    assert after.config.streaming.providers["openai"].model == "gpt-4o-transcribe"
    assert after.config.tts.providers["openai"].voice == "alloy"


def test_fixed_wrapper_file_loads_with_no_warnings(tmp_path):
    path = write(tmp_path, wrap({"provider": "log", "streaming": {"sttModel": "m"}}))
    doctor(path, fix=True)
    after = load_config_file(path, environ={})
    assert (after.errors, after.warnings) == ([], [])
    assert after.config.provider == "mock"


def test_second_run_finds_nothing(tmp_path):
    path = write(tmp_path, {"provider": "log", "streaming": {"vadThreshold": 0.5}})
    doctor(path, fix=True)
    assert doctor(path, fix=True).changes == []


# --- JSON5 ----------------------------------------------------------------------------------

JSON5_LEGACY = """
// my voice-call config
{
  provider: "log",   // old name
  maxDurationSeconds: 60,
}
"""


def test_json5_file_is_read(tmp_path):
    report = doctor(write(tmp_path, JSON5_LEGACY), fix=False)
    assert paths(report) == ["provider"]


def test_json5_fix_writes_plain_json_and_notes_lost_comments(tmp_path):
    path = write(tmp_path, JSON5_LEGACY)
    report = doctor(path, fix=True)
    assert report.had_comments is True
    assert json.loads(path.read_text(encoding="utf-8")) == {"provider": "mock", "maxDurationSeconds": 60}
    assert doctor_text(report).splitlines()[-1] == (
        "Note: the rewritten file is plain JSON; comments from the JSON5 original were not kept."
    )
    assert (tmp_path / "voicecall.json.bak").read_text(encoding="utf-8") == JSON5_LEGACY


def test_plain_json_fix_has_no_comments_note(tmp_path):
    report = doctor(write(tmp_path, {"provider": "log"}), fix=True)
    assert report.had_comments is False
    assert "comments" not in doctor_text(report)


def test_json5_report_only_has_no_comments_note(tmp_path):
    report = doctor(write(tmp_path, JSON5_LEGACY), fix=False)
    assert "comments" not in doctor_text(report)


# --- nothing to do --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        {},
        {"provider": "twilio", "fromNumber": "+15550001234", "twilio": TWILIO,
         "streaming": {"providers": {"openai": {"model": "m"}}}},
        wrap({"provider": "mock"}),
        "// comment only change\n{provider: 'mock',}",
    ],
    ids=["empty", "canonical", "wrapper", "json5"],
)
def test_clean_file_has_no_legacy_keys(tmp_path, content):
    path = write(tmp_path, content)
    report = doctor(path, fix=False)
    assert report.changes == []
    assert doctor_text(report) == f"No legacy config keys in {path}."


def test_fix_on_clean_file_leaves_it_untouched(tmp_path):
    path = write(tmp_path, "// keep my comments\n{provider: 'mock'}\n")
    before = path.read_bytes()
    report = doctor(path, fix=True)
    assert report.rewritten is False
    assert path.read_bytes() == before
    assert not (tmp_path / "voicecall.json.bak").exists()


# --- errors ---------------------------------------------------------------------------------


def test_missing_file_is_a_doctor_error(tmp_path):
    path = tmp_path / "absent.json"
    with pytest.raises(DoctorError, match=r"^cannot read .*absent\.json"):
        doctor(path, fix=False)


def test_directory_is_a_doctor_error(tmp_path):
    with pytest.raises(DoctorError, match="^cannot read "):
        doctor(tmp_path, fix=True)


@pytest.mark.parametrize("content", ["{provider: ", '{"provider": "log",,}', "not json at all"])
def test_invalid_file_is_a_doctor_error_naming_the_file(tmp_path, content):
    path = write(tmp_path, content)
    with pytest.raises(DoctorError) as excinfo:
        doctor(path, fix=True)
    assert str(excinfo.value).startswith(f"{path} is not valid JSON or JSON5")
    assert path.read_text(encoding="utf-8") == content


@pytest.mark.parametrize("content", ["[]", '"text"', "42", "null"])
def test_non_object_file_is_a_doctor_error(tmp_path, content):
    path = write(tmp_path, content)
    with pytest.raises(DoctorError, match="the config must be a JSON object"):
        doctor(path, fix=True)


@pytest.mark.parametrize(
    "content",
    [{"plugins": {}}, {"plugins": {"entries": {}}}, {"plugins": {"entries": []}}, {"plugins": {"entries": {"voice-call": []}}}],
)
def test_wrapper_without_voice_call_entry_is_a_doctor_error(tmp_path, content):
    with pytest.raises(DoctorError, match="plugins.entries.voice-call is missing"):
        doctor(write(tmp_path, content), fix=True)


@pytest.mark.parametrize("config", ["provider=mock", None, ["provider"]])
def test_wrapper_with_non_object_config_is_a_doctor_error(tmp_path, config):
    path = write(tmp_path, {"plugins": {"entries": {"voice-call": {"config": config}}}})
    with pytest.raises(DoctorError):
        doctor(path, fix=True)
