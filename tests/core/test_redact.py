"""The shared redactor: every credential shape and every remembered secret masked, ordinary text untouched."""
from __future__ import annotations

import base64
import logging
import sys
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.redact import MASK, MIN_SECRET_LENGTH, RedactedError, RedactFilter, forget_secrets, redact, remember_secret

SID_TOKEN = base64.b64encode(b"AC0123456789abcdef0123456789abcdef:f00dfeedcafe1234").decode()


@pytest.fixture(autouse=True)
def _no_remembered_secrets():
    forget_secrets()
    yield
    forget_secrets()


@pytest.mark.parametrize("text, secret", [
    ("Authorization: Bearer abc.def-ghi_123", "abc.def-ghi_123"),
    ("authorization=Token 9f8e7d6c5b4a", "9f8e7d6c5b4a"),
    ("Proxy-Authorization: Basic " + SID_TOKEN, SID_TOKEN),
    ("{'Authorization': 'Bearer eyJhbGciOi.J9xx'}", "eyJhbGciOi.J9xx"),
    ("upstream said: invalid Bearer sk-proj-AbCdEf0123456789xyz", "sk-proj-AbCdEf0123456789xyz"),
    ("got Bearer a1B2c3", "a1B2c3"),
    ("401 Unauthorized (Basic " + SID_TOKEN + ")", SID_TOKEN),
    ("Basic dXNlcjpwYXNz", "dXNlcjpwYXNz"),  # "user:pass": no digit, but mixed case
    ("GET https://api.example.com/v1/x?api_key=k3y-value&lang=en", "k3y-value"),
    ("GET /v1/models?key=AIzaSyA-1234567890abcdefghijklmnopqrs", "AIzaSyA-1234567890abcdefghijklmnopqrs"),
    ("wss://host/ws?access_token=tok.en.value", "tok.en.value"),
    ("callback?token=zzzzzz&x=1", "zzzzzz"),
    ("form body: apiKey=abc123xyz", "abc123xyz"),
    ("xi-api-key: 0123456789abcdef", "0123456789abcdef"),
    ("headers={'x-goog-api-key': 'AIzaNotLongEnoughButNamed'}", "AIzaNotLongEnoughButNamed"),
    ("X-API-Key=secretvalue", "secretvalue"),
    ("connecting to https://AC123:s3cr3tpass@api.twilio.com/2010", "s3cr3tpass"),
    ("redis://:hunter22@127.0.0.1:6379/0", "hunter22"),
    ("error: sk-ant-api03-abcdefghijklmnopqrstuvwxyz", "sk-ant-api03-abcdefghijklmnopqrstuvwxyz"),
    ("key AIzaSyD0123456789_abcdefghijklmnopqrst was rejected", "AIzaSyD0123456789_abcdefghijklmnopqrst"),
    ('{"api_key": "plainvalue"}', "plainvalue"),
    ('{"authToken": "tw-token-value"}', "tw-token-value"),
    ('{"client_secret":"c-s-value"}', "c-s-value"),
    ('{"webhookSecret": "whsec_value"}', "whsec_value"),
    ('{"password": 12345678}', "12345678"),
    ('{"apiKey": "with \\" escaped quote"}', "escaped quote"),
    ("{'api_key': 'repr-value'}", "repr-value"),
    # Any case: the quick checks before each pattern look at the lowercase text.
    ("AUTHORIZATION: BEARER ABCDEF123456", "ABCDEF123456"),
    ("GET /X?API_KEY=UPPER-VALUE-1", "UPPER-VALUE-1"),
    ("X-Goog-Api-Key: MixedCaseKey99", "MixedCaseKey99"),
    ('{"ApiKey": "camel-value"}', "camel-value"),
    ("HTTPS://USER:PASSWORD1@HOST/", "PASSWORD1"),
])
def test_every_credential_shape_is_masked(text, secret):
    redacted = redact(text)
    assert secret not in redacted
    assert MASK in redacted


@pytest.mark.parametrize("text", [
    "",
    "call 3f2a placed to +15550001234: state ringing",
    "missing bearer token: send Authorization: Bearer <token>",
    "malformed Authorization header: expected Bearer <token>",
    "basic configuration is done",
    '{"max_tokens": 100, "tokens": 5, "token_type": "bearer", "public_key": "pk"}',
    "the key is missing; set an api key",
    "Incorrect API key provided: sk-abc***xyz1",  # the upstream's own masked form stays readable
    "https://api.example.com/v1/chat/completions?stream=true",
    '{"token": null}',
])
def test_ordinary_text_is_left_alone(text):
    assert redact(text) == text


def test_several_credentials_in_one_text_are_all_masked():
    remember_secret("remembered-value-1")
    text = (f"Authorization: Basic {SID_TOKEN}\nurl=https://a:pw123456@h/?key=k-value&token=t-value "
            "{\"apiKey\": \"json-value\"} sk-abcdefghijklmnop remembered-value-1 xi-api-key: eleven-value")
    redacted = redact(text)
    for secret in (SID_TOKEN, "pw123456", "k-value", "t-value", "json-value", "sk-abcdefghijklmnop",
                   "remembered-value-1", "eleven-value"):
        assert secret not in redacted
    assert redacted.count(MASK) == 8


def test_the_header_name_and_scheme_stay_readable():
    assert redact("Authorization: Bearer abcdef123456") == f"Authorization: Bearer {MASK}"
    assert redact("https://u:p4ssw0rd@host/x") == f"https://u:{MASK}@host/x"
    assert redact("/x?api_key=abc&lang=en") == f"/x?api_key={MASK}&lang=en"


def test_redacting_twice_changes_nothing_more():
    text = f"Authorization: Basic {SID_TOKEN} ?key=abc {{\"apiKey\": \"v\"}} sk-abcdefghijklmnop"
    once = redact(text)
    assert redact(once) == once


def test_a_remembered_secret_is_masked_anywhere():
    remember_secret("n0t-a-known-shape")
    assert redact("upstream echoed n0t-a-known-shape in its body") == f"upstream echoed {MASK} in its body"
    assert redact("glued:n0t-a-known-shape:glued") == f"glued:{MASK}:glued"


def test_its_url_encoded_form_is_masked_too():
    remember_secret("p@ss/w0rd+x")
    assert "p%40ss%2Fw0rd%2Bx" not in redact("GET /cb?t=p%40ss%2Fw0rd%2Bx")


def test_a_longer_secret_containing_a_shorter_one_is_masked_whole():
    remember_secret("abcdef")
    remember_secret("abcdefghijkl")
    assert redact("x abcdefghijkl y") == f"x {MASK} y"


@pytest.mark.parametrize("value", [None, "", "   ", "short", 12345678, b"bytes-value"])
def test_short_or_non_text_values_are_not_remembered(value):
    remember_secret(value)
    assert redact("short words and 12345678 stay") == "short words and 12345678 stay"


def test_the_minimum_length_is_six():
    assert MIN_SECRET_LENGTH == 6
    remember_secret("abcdef")
    assert redact("abcdef") == MASK


def test_non_text_input_is_turned_into_text():
    assert redact(None) is None
    assert redact(12) == "12"  # type: ignore[arg-type]


def test_remembering_from_many_threads_loses_nothing():
    values = [f"thread-secret-{i:04d}" for i in range(200)]
    threads = [threading.Thread(target=remember_secret, args=(value,)) for value in values]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    text = redact(" ".join(values))
    assert not any(value in text for value in values)


_secret_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)), min_size=MIN_SECRET_LENGTH, max_size=40
).filter(lambda s: s.strip() == s and s not in MASK + MASK)


# No deadline: a loaded machine (the suite runs in parallel) can stall any one example.
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(secret=_secret_text, before=st.text(max_size=60), after=st.text(max_size=60))
def test_a_remembered_secret_never_survives_in_any_surrounding_text(secret, before, after):
    remember_secret(secret)
    assert secret not in redact(before + secret + after)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_redact_never_fails_and_is_stable(text):
    once = redact(text)
    assert isinstance(once, str)
    assert redact(once) == once


def test_an_error_built_from_an_upstream_body_is_redacted():
    class UpstreamError(RedactedError):
        pass

    error = UpstreamError("tts 401: {\"error\": \"bad key Bearer sk-abcdefghijklmnopqrstu\"}", 401)
    assert "sk-abcdefghijklmnopqrstu" not in str(error)
    assert error.args[1] == 401


def _record(msg, *args, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord("calls.example", logging.WARNING, __file__, 1, msg, args, exc_info)


def test_the_filter_redacts_the_formatted_message_and_the_traceback():
    remember_secret("carrier-auth-token")
    try:
        raise RuntimeError("refused: Basic " + SID_TOKEN + " carrier-auth-token")
    except RuntimeError:
        record = _record("hang-up of %s failed: %s", "call-1", "Bearer sk-abcdefghijklmnopqrs",
                         exc_info=sys.exc_info())
    assert RedactFilter().filter(record) is True
    line = logging.Formatter("%(message)s").format(record)
    assert "call-1" in line and "RuntimeError" in line
    for secret in (SID_TOKEN, "carrier-auth-token", "sk-abcdefghijklmnopqrs"):
        assert secret not in line


def test_a_message_with_a_percent_sign_survives_the_filter():
    record = _record("100%% of %s", "calls")
    RedactFilter().filter(record)
    assert logging.Formatter("%(message)s").format(record) == "100% of calls"
    literal = _record("50% done")  # no args: the % is not a format
    RedactFilter().filter(literal)
    assert logging.Formatter("%(message)s").format(literal) == "50% done"


def test_a_record_with_a_bad_format_is_written_as_it_is_redacted():
    record = _record("%d calls with key %s", "not a number", "Bearer abcdefghijklmnop")
    assert RedactFilter().filter(record) is True
    line = logging.Formatter("%(message)s").format(record)
    assert line.startswith("%d calls with key %s (arguments that do not fit it: ('not a number', 'Bearer [redacted]'")


def test_past_the_cap_the_oldest_secrets_go_first(monkeypatch):
    from core import redact as module

    monkeypatch.setattr(module, "MAX_SECRETS", 3)
    for index in range(5):
        remember_secret(f"secret-number-{index}")
    assert redact("secret-number-4 secret-number-2") == f"{MASK} {MASK}"
    assert redact("secret-number-0") == "secret-number-0"


def test_a_secret_that_begins_inside_the_mask_is_masked_again():
    remember_secret("ted]ab")
    assert "ted]ab" not in redact("ted]abab")


def test_a_piece_of_the_mask_is_not_remembered():
    remember_secret("acted]")
    assert redact("acted] [redacted]") == "acted] [redacted]"
