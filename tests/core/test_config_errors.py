"""Config errors as data: each line keeps the text every surface prints and carries its key path and message."""
from __future__ import annotations

import pickle

import pytest

from core.config.errors import ConfigError, key_path
from core.config.loader import load_config_data, load_config_file


def paths(loaded) -> list[tuple[str, str]]:
    return [(error.key_path, error.message) for error in loaded.errors]


def test_cross_field_errors_name_their_key_path():
    loaded = load_config_data({"provider": "twilio"}, environ={})
    assert loaded.errors == [
        "fromNumber: required (or set TWILIO_FROM_NUMBER)",
        "twilio.accountSid: required (or set TWILIO_ACCOUNT_SID)",
        "twilio.authToken: required (or set TWILIO_AUTH_TOKEN)",
    ]
    assert paths(loaded) == [
        ("fromNumber", "required (or set TWILIO_FROM_NUMBER)"),
        ("twilio.accountSid", "required (or set TWILIO_ACCOUNT_SID)"),
        ("twilio.authToken", "required (or set TWILIO_AUTH_TOKEN)"),
    ]


def test_schema_errors_quote_keys_that_are_not_plain_names():
    loaded = load_config_data({"numbers": {"+15551234567": {"tts": {"provider": "nope"}}}}, environ={})
    (error,) = loaded.errors
    assert error == "numbers.+15551234567.tts.provider: must be 'openai', 'elevenlabs', 'microsoft' or 'local'"
    assert error.path == ("numbers", "+15551234567", "tts", "provider")
    assert error.key_path == 'numbers["+15551234567"].tts.provider'
    assert error.message == "must be 'openai', 'elevenlabs', 'microsoft' or 'local'"


def test_errors_inside_the_plugins_wrapper_carry_the_wrapper_path():
    loaded = load_config_data({"plugins": {"entries": {"voice-call": {"config": {
        "provider": "twilio", "fromNumber": "+15550001234",
        "twilio": {"accountSid": "AC1", "authToken": "${TWILIO_TOKEN_FILE_X}"},
    }}}}}, environ={})
    assert paths(loaded) == [
        ("plugins.entries.voice-call.config.twilio.authToken", "environment variable TWILIO_TOKEN_FILE_X is not set"),
    ]
    assert loaded.errors[0].startswith("plugins.entries.voice-call.config.twilio.authToken: ")


def test_list_indexes_and_whole_file_errors(tmp_path):
    loaded = load_config_data({"allowFrom": ["+15550001234", "555"]}, environ={})
    assert [error.key_path for error in loaded.errors] == ["allowFrom[1]"]
    missing = load_config_file(tmp_path / "absent.json")
    (error,) = missing.errors
    assert error.path == () and error.key_path == ""
    assert error == error.message == f"VOICECALL_CONFIG: no config file at {tmp_path / 'absent.json'}"
    not_object = load_config_data([], environ={})
    assert not_object.errors == ["config: must be a JSON object"]
    assert not_object.errors[0].message == "must be a JSON object"


def test_env_fallbacks_are_remembered_by_key():
    loaded = load_config_data(
        {"provider": "twilio", "fromNumber": "+15550001234"},
        environ={"TWILIO_ACCOUNT_SID": "AC99", "TWILIO_AUTH_TOKEN": "tw-tok-55310"},
    )
    assert loaded.errors == []
    assert loaded.env_fallbacks == {"twilio.accountSid": "TWILIO_ACCOUNT_SID", "twilio.authToken": "TWILIO_AUTH_TOKEN"}


@pytest.mark.parametrize(("parts", "expected"), [
    (("agents", "sales.eu", "responder", "url"), 'agents["sales.eu"].responder.url'),
    (("models", "providers", "my-llm", "baseUrl"), "models.providers.my-llm.baseUrl"),
    (("realtime", "tools", 0, "name"), "realtime.tools[0].name"),
])
def test_key_path_display(parts, expected):
    assert key_path(parts) == expected


def test_an_error_survives_pickling_with_its_parts():
    error = ConfigError(("twilio", "authToken"), "required")
    copy = pickle.loads(pickle.dumps(error))
    assert copy == "twilio.authToken: required" and copy.path == error.path and copy.message == "required"
