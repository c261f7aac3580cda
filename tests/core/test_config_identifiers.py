"""Carrier identifiers of the wrong shape are config warnings naming the key and the expected shape; the config still loads."""
from __future__ import annotations

import pytest

from core.config.loader import load_config_data

SID = "AC" + "0" * 31 + "1"
TOKEN = "0123456789abcdef" * 2
PUBLIC_KEY = "6V+ijUIGWzSGMEkNE16GqgFX2wg64KS7vEetLZ0yjv4="
TELNYX_KEY = "KEY0123456789ABCDEF_fakeTelnyxKey01"
PLIVO_ID = "MA" + "A" * 17 + "1"
FROM = {"fromNumber": "+15550001234"}


def shape_warnings(data: dict, environ: dict | None = None) -> list[str]:
    loaded = load_config_data(data, environ=environ or {})
    assert loaded.errors == []
    return [w for w in loaded.warnings if "does not look like" in w]


def twilio(sid=SID, token=TOKEN) -> dict:
    return {"provider": "twilio", **FROM, "twilio": {"accountSid": sid, "authToken": token}}


def telnyx(key=TELNYX_KEY, connection="1494404757140276705") -> dict:
    return {"provider": "telnyx", **FROM, "telnyx": {"apiKey": key, "connectionId": connection, "publicKey": PUBLIC_KEY}}


def plivo(auth_id=PLIVO_ID) -> dict:
    return {"provider": "plivo", **FROM, "plivo": {"authId": auth_id, "authToken": "fake-plivo-token-7731"}}


@pytest.mark.parametrize(
    "data",
    [twilio(), twilio(sid="AC" + "ABCDEF0123456789" * 2), telnyx(), plivo(), plivo("SA" + "0" * 18)],
    ids=["twilio", "twilio-uppercase-hex", "telnyx", "plivo", "plivo-subaccount"],
)
def test_well_formed_identifiers_have_no_warning(data):
    assert shape_warnings(data) == []


@pytest.mark.parametrize(
    ("data", "warning"),
    [
        (twilio(sid="AC123"),
         'twilio.accountSid: "AC123" does not look like a Twilio Account SID (AC followed by 32 hex digits)'),
        (twilio(sid="SK" + "0" * 32),
         f'twilio.accountSid: "SK{"0" * 32}" does not look like a Twilio Account SID (AC followed by 32 hex digits)'),
        (twilio(sid="AC" + "g" * 32),
         f'twilio.accountSid: "AC{"g" * 32}" does not look like a Twilio Account SID (AC followed by 32 hex digits)'),
        (telnyx(connection="my-app"),
         'telnyx.connectionId: "my-app" does not look like a Telnyx connection id (digits only)'),
        (plivo("MA123"),
         'plivo.authId: "MA123" does not look like a Plivo Auth ID (MA or SA followed by 18 uppercase letters or digits)'),
        (plivo("ma" + "a" * 18),
         f'plivo.authId: "ma{"a" * 18}" does not look like a Plivo Auth ID (MA or SA followed by 18 uppercase letters or digits)'),
    ],
    ids=["twilio-short", "twilio-api-key-sid", "twilio-not-hex", "telnyx-connection", "plivo-short", "plivo-lowercase"],
)
def test_malformed_identifier_is_a_warning_naming_key_value_and_shape(data, warning):
    assert shape_warnings(data) == [warning]


@pytest.mark.parametrize(
    ("data", "secret", "warning"),
    [
        (twilio(token="fake-twilio-token-5521"), "fake-twilio-token-5521",
         "twilio.authToken: the value (22 characters, not shown) does not look like a Twilio auth token (32 hex digits)"),
        (telnyx(key="fake-telnyx-key-5521"), "fake-telnyx-key-5521",
         'telnyx.apiKey: the value (20 characters, not shown) does not look like a Telnyx API v2 key '
         '("KEY" followed by letters, digits and _)'),
    ],
    ids=["twilio-token", "telnyx-key"],
)
def test_a_malformed_secret_is_named_by_length_never_its_value(data, secret, warning):
    warnings = shape_warnings(data)
    assert warnings == [warning]
    assert secret not in " ".join(warnings)


def test_an_identifier_holding_the_credential_is_not_printed():
    warnings = shape_warnings(twilio(sid=TOKEN))
    assert warnings == [
        "twilio.accountSid: the same value as this block's credential (swapped?) does not look like a Twilio Account "
        "SID (AC followed by 32 hex digits)",
    ]
    assert TOKEN not in warnings[0]


@pytest.mark.parametrize(("data", "key"), [
    (telnyx(key="KEY0123456789ABCDEF_anotherFakeKey9", connection=TELNYX_KEY), "telnyx.connectionId"),
    (twilio(sid="fedcba9876543210" * 2, token=TOKEN), "twilio.accountSid"),  # another account's token
])
def test_an_identifier_shaped_like_any_credential_is_not_printed(data, key):
    [warning] = shape_warnings(data)
    value = data[data["provider"]]["connectionId" if "connectionId" in key else "accountSid"]
    assert warning.startswith(f"{key}: a value shaped like a credential ({len(value)} characters, not shown) does not look like")
    assert value not in warning and value[:12] not in warning


def test_values_from_environment_variables_are_checked_and_name_the_variable():
    environ = {"TWILIO_ACCOUNT_SID": "AC42", "TWILIO_AUTH_TOKEN": "fake-env-token-8812", "TWILIO_FROM_NUMBER": "+15550002222"}
    warnings = shape_warnings({"provider": "twilio"}, environ)
    assert warnings == [
        'twilio.accountSid (from TWILIO_ACCOUNT_SID): "AC42" does not look like a Twilio Account SID (AC followed by 32 hex digits)',
        "twilio.authToken (from TWILIO_AUTH_TOKEN): the value (19 characters, not shown) does not look like a Twilio "
        "auth token (32 hex digits)",
    ]


def test_env_references_are_checked_and_name_the_reference():
    data = {**telnyx(), "telnyx": {**telnyx()["telnyx"], "apiKey": "${MY_TELNYX_KEY}"}}
    assert shape_warnings(data, {"MY_TELNYX_KEY": "fake-ref-key-3310"}) == [
        'telnyx.apiKey (from env:MY_TELNYX_KEY): the value (17 characters, not shown) does not look like a Telnyx '
        'API v2 key ("KEY" followed by letters, digits and _)',
    ]


def test_warnings_inside_the_wrapper_carry_its_prefix():
    data = {"plugins": {"entries": {"voice-call": {"config": twilio(sid="AC1")}}}}
    assert shape_warnings(data) == [
        'plugins.entries.voice-call.config.twilio.accountSid: "AC1" does not look like a Twilio Account SID '
        "(AC followed by 32 hex digits)",
    ]


def test_a_very_long_identifier_is_cut():
    [warning] = shape_warnings(plivo("X" * 100))
    assert f'"{"X" * 40}…"' in warning and "X" * 41 not in warning


def test_disabled_config_is_not_checked():
    assert shape_warnings({**twilio(sid="AC1"), "enabled": False}) == []
