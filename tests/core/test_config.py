"""The call config: defaults, strict validation, the plugins wrapper, cross-field rules,
env fallbacks, SecretRefs, legacy keys, reading the file, and deep merge (docs/configuration.md)."""
from __future__ import annotations

import copy
import json
import os

import pytest

from core.config.loader import load_config_data, load_config_file
from core.config.merge import deep_merge

E164_ERROR = "Expected E.164 format, e.g. +15550001234"
PREFIX = "plugins.entries.voice-call.config."
UNSAFE_SKIP_ENV = "VOICECALL_UNSAFE_ALLOW_SKIP_SIGNATURE_VERIFICATION"
SKIP_GATE_ERROR = (
    "skipSignatureVerification: only allowed with a loopback serve.bind and no "
    f"publicUrl, tunnel or tailscale (or set {UNSAFE_SKIP_ENV}=1)"
)

TWILIO_OK = {
    "provider": "twilio",
    "fromNumber": "+15550001234",
    # Well-formed fakes: a malformed identifier is a warning (tests/core/test_config_identifiers.py).
    "twilio": {"accountSid": "AC" + "0" * 31 + "1", "authToken": "0123456789abcdef" * 2},
}
TELNYX_OK = {
    "provider": "telnyx",
    "fromNumber": "+15550001234",
    "telnyx": {"apiKey": "key", "connectionId": "conn", "publicKey": "6V+ijUIGWzSGMEkNE16GqgFX2wg64KS7vEetLZ0yjv4="},
}
PLIVO_OK = {
    "provider": "plivo",
    "fromNumber": "+15550001234",
    "plivo": {"authId": "MA123", "authToken": "tok"},
}
CARRIERS_OK = {"twilio": TWILIO_OK, "telnyx": TELNYX_OK, "plivo": PLIVO_OK, "mock": {"provider": "mock"}}


@pytest.fixture(autouse=True)
def _no_unsafe_skip_env(monkeypatch):
    """The skip-signature gate reads os.environ; make sure the real environment cannot open it."""
    monkeypatch.delenv(UNSAFE_SKIP_ENV, raising=False)


def load(data, env=None):
    """Load with an explicit environment: only the test's own variables, never the real ones."""
    if env is None:
        env = {k: v for k, v in os.environ.items() if k.startswith(("VC_TEST_", "VOICECALL_UNSAFE_"))}
    return load_config_data(data, environ=env)


def valid(data, env=None):
    """Load and insist on no errors; returns the config model."""
    loaded = load(data, env)
    assert loaded.errors == [], loaded.errors
    return loaded.config


def errors_of(data, env=None):
    return load(data, env).errors


def wrap(config, **entry):
    return {"plugins": {"entries": {"voice-call": {**entry, "config": config}}}}


def attr(obj, dotted):
    """Follow a dotted path through models (attributes) and dicts (keys)."""
    for part in dotted.split("."):
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    return obj


def snake(dotted):
    """The model attribute path of a camelCase config path (dict keys like "openai" are unchanged)."""
    return ".".join("".join("_" + c.lower() if c.isupper() else c for c in part) for part in dotted.split("."))


def with_key(dotted, value):
    """{"a": {"b": value}} from "a.b"."""
    data = value
    for part in reversed(dotted.split(".")):
        data = {part: data}
    return data


def legacy_paths(warnings):
    """The offending paths listed under the legacy-keys summary warning."""
    return [line.strip().split(": ", 1)[0] for line in warnings if line.startswith("  ")]


# --- defaults (§1.1-1.3) ---------------------------------------------------------------

DEFAULTS = [
    ("enabled", True),
    ("provider", "mock"),
    ("from_number", None),
    ("to_number", None),
    ("session_scope", "per-phone"),
    ("numbers", {}),
    ("inbound_policy", "disabled"),
    ("allow_from", []),
    ("inbound_greeting", None),
    ("outbound.default_mode", "notify"),
    ("outbound.notify_hangup_delay_sec", 3),
    ("max_duration_seconds", 300),
    ("stale_call_reaper_seconds", 120),
    ("silence_timeout_ms", 800),
    ("transcript_timeout_ms", 180000),
    ("ring_timeout_ms", 30000),
    ("max_concurrent_calls", 1),
    ("serve.port", 3334),
    ("serve.bind", "127.0.0.1"),
    ("serve.path", "/voice/webhook"),
    ("serve.max_in_flight_per_ip", 256),
    ("tailscale.mode", "off"),
    ("tailscale.path", "/voice/webhook"),
    ("tailscale.port", 443),
    ("tunnel.provider", "none"),
    ("tunnel.ngrok_auth_token", None),
    ("tunnel.ngrok_domain", None),
    ("tunnel.allow_ngrok_free_tier_loopback_bypass", False),
    ("webhook_security.allowed_hosts", []),
    ("webhook_security.trust_forwarding_headers", False),
    ("webhook_security.trusted_proxy_ips", []),
    ("public_url", None),
    ("skip_signature_verification", False),
    ("streaming.enabled", False),
    ("streaming.provider", None),
    ("streaming.stream_path", "/voice/stream"),
    ("streaming.providers", {}),
    ("streaming.pre_start_timeout_ms", 5000),
    ("streaming.max_pending_connections", 32),
    ("streaming.max_pending_connections_per_ip", 4),
    ("streaming.max_connections", 128),
    ("realtime.enabled", False),
    ("realtime.provider", None),
    ("realtime.stream_path", None),
    ("realtime.tool_policy", "safe-read-only"),
    ("realtime.consult_policy", "auto"),
    ("realtime.consult_thinking_level", None),
    ("realtime.consult_fast_mode", None),
    ("realtime.tools", []),
    ("realtime.providers", {}),
    ("realtime.fast_context.enabled", False),
    ("realtime.fast_context.timeout_ms", 800),
    ("realtime.fast_context.max_results", 3),
    ("realtime.fast_context.sources", ["memory", "sessions"]),
    ("realtime.fast_context.fallback_to_consult", False),
    ("realtime.agent_context.enabled", False),
    ("realtime.agent_context.max_chars", 6000),
    ("realtime.agent_context.include_identity", True),
    ("realtime.agent_context.include_workspace_files", True),
    ("realtime.agent_context.files", ["SOUL.md", "IDENTITY.md", "USER.md"]),
    ("tts", None),
    ("store", None),
    ("agent_id", None),  # resolved_agent_id(): the sole agent, else "main"
    ("response_model", None),
    ("response_system_prompt", None),
    ("response_timeout_ms", 30000),
    ("telnyx", None),
    ("twilio", None),
    ("plivo", None),
]


@pytest.mark.parametrize(("path", "expected"), DEFAULTS, ids=[p for p, _ in DEFAULTS])
def test_empty_config_default(path, expected):
    assert attr(valid({}), path) == expected


def test_empty_config_has_no_errors_or_warnings_and_is_ok():
    loaded = load({})
    assert (loaded.errors, loaded.warnings) == ([], [])
    assert loaded.ok is True


def test_mock_default_uses_stand_in_caller_id():
    assert valid({}).effective_from_number() == "+15550000000"


def test_twilio_region_defaults_to_us1():
    assert valid(TWILIO_OK).twilio.region == "us1"


def test_disabled_config_does_not_default_provider():
    loaded = load({"enabled": False})
    assert loaded.config.enabled is False
    assert loaded.config.provider is None
    assert loaded.ok is False


def test_explicit_provider_is_kept():
    assert valid(TWILIO_OK).provider == "twilio"


@pytest.mark.parametrize(
    ("serve_path", "stream_path", "expected"),
    [
        ("/voice/webhook", None, "/voice/stream/realtime"),
        ("/hooks/twilio/webhook", None, "/hooks/twilio/stream/realtime"),
        ("/webhook", None, "/stream/realtime"),
        ("/", None, "/voice/stream/realtime"),
        ("/calls", None, "/calls/stream/realtime"),
        ("/voice/webhook", "/rt/media", "/rt/media"),
        ("/", "/rt/media", "/rt/media"),
    ],
)
def test_realtime_stream_path_derivation(serve_path, stream_path, expected):
    data = {"serve": {"path": serve_path}}
    if stream_path:
        data["realtime"] = {"streamPath": stream_path}
    assert valid(data).realtime_stream_path() == expected


def test_realtime_stream_path_default():
    assert valid({}).realtime_stream_path() == "/voice/stream/realtime"


# --- strictness ----------------------------------------------------------------------

VALID_TOOL = {
    "type": "function",
    "name": "lookup_order",
    "description": "Find an order",
    "parameters": {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]},
}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"bogus": 1}, "bogus: unknown key"),
        ({"streaming": {"bogus": 1}}, "streaming.bogus: unknown key"),
        ({"serve": {"bogus": 1}}, "serve.bogus: unknown key"),
        ({"outbound": {"bogus": 1}}, "outbound.bogus: unknown key"),
        ({"twilio": {"bogus": 1}}, "twilio.bogus: unknown key"),
        ({"tailscale": {"bogus": 1}}, "tailscale.bogus: unknown key"),
        ({"realtime": {"fastContext": {"bogus": 1}}}, "realtime.fastContext.bogus: unknown key"),
        ({"realtime": {"agentContext": {"bogus": 1}}}, "realtime.agentContext.bogus: unknown key"),
        ({"realtime": {"tools": [{**VALID_TOOL, "bogus": 1}]}}, "realtime.tools[0].bogus: unknown key"),
        (
            {"realtime": {"tools": [{**VALID_TOOL, "parameters": {"type": "object", "bogus": 1}}]}},
            "realtime.tools[0].parameters.bogus: unknown key",
        ),
        ({"numbers": {"+15550001234": {"bogus": 1}}}, "numbers.+15550001234.bogus: unknown key"),
        ({"tts": {"bogus": 1}}, "tts.bogus: unknown key"),
        ({"tts": {"modelOverrides": {"bogus": 1}}}, "tts.modelOverrides.bogus: unknown key"),
        ({"webhookSecurity": {"trustedProxyIps": []}}, "webhookSecurity.trustedProxyIps: unknown key"),
    ],
)
def test_unknown_key_is_rejected_with_its_path(data, expected):
    assert expected in errors_of(data)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"max_duration_seconds": 5}, "max_duration_seconds: unknown key"),
        ({"serve": {"port": 4000}, "streaming": {"stream_path": "/x"}}, "streaming.stream_path: unknown key"),
    ],
)
def test_snake_case_field_names_are_unknown_keys(data, expected):
    assert expected in errors_of(data)


def test_trusted_proxy_ips_key_is_spelled_with_capital_ips():
    cfg = valid({"webhookSecurity": {"trustedProxyIPs": ["10.0.0.1"], "allowedHosts": ["voice.example.com"]}})
    assert cfg.webhook_security.trusted_proxy_ips == ["10.0.0.1"]
    assert cfg.webhook_security.allowed_hosts == ["voice.example.com"]


@pytest.mark.parametrize(
    "section",
    [
        {"streaming": {"providers": {"deepgram": {"apiKey": "k", "smartFormat": True}}}},
        {"realtime": {"providers": {"google": {"apiKey": "k", "sessionResumption": False}}}},
        {"tts": {"providers": {"elevenlabs": {"voiceId": "v", "voiceSettings": {"stability": 0.4}}}}},
    ],
    ids=["streaming", "realtime", "tts"],
)
def test_provider_blocks_accept_provider_specific_keys(section):
    assert load(section).errors == []


def test_provider_blocks_still_check_known_keys():
    data = {"streaming": {"providers": {"openai": {"custom": 1, "silenceDurationMs": "800"}}}}
    assert errors_of(data) == ["streaming.providers.openai.silenceDurationMs: must be an integer"]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"maxDurationSeconds": "300"}, "maxDurationSeconds: must be an integer"),
        ({"maxDurationSeconds": 300.0}, "maxDurationSeconds: must be an integer"),
        ({"maxDurationSeconds": 2.5}, "maxDurationSeconds: must be an integer"),
        ({"maxDurationSeconds": True}, "maxDurationSeconds: must be an integer"),
        ({"serve": {"port": "3334"}}, "serve.port: must be an integer"),
        ({"serve": {"maxInFlightPerIp": "8"}}, "serve.maxInFlightPerIp: must be an integer"),
        ({"serve": {"maxInFlightPerIp": 8.5}}, "serve.maxInFlightPerIp: must be an integer"),
        ({"realtime": {"fastContext": {"maxResults": 3.0}}}, "realtime.fastContext.maxResults: must be an integer"),
        ({"enabled": "true"}, "enabled: must be true or false"),
        ({"streaming": {"enabled": 1}}, "streaming.enabled: must be true or false"),
        ({"skipSignatureVerification": "false"}, "skipSignatureVerification: must be true or false"),
        (
            {"streaming": {"providers": {"openai": {"vadThreshold": "0.5"}}}},
            "streaming.providers.openai.vadThreshold: must be a number",
        ),
        ({"fromNumber": 15550001234}, "fromNumber: must be a string"),
        ({"serve": {"bind": 127}}, "serve.bind: must be a string"),
        ({"serve": "0.0.0.0:3334"}, "serve: must be an object"),
        ({"allowFrom": "+15550001234"}, "allowFrom: must be an array"),
    ],
)
def test_type_error_names_the_path(data, expected):
    assert expected in errors_of(data)


@pytest.mark.parametrize(
    ("data", "expected_start"),
    [
        ({"provider": "sms"}, "provider: must be 'telnyx', 'twilio', 'plivo' or 'mock'"),
        ({"outbound": {"defaultMode": "chat"}}, "outbound.defaultMode: must be 'notify' or 'conversation'"),
        ({"inboundPolicy": "everyone"}, "inboundPolicy: must be "),
        ({"tunnel": {"provider": "cloudflare"}}, "tunnel.provider: must be "),
        ({"realtime": {"toolPolicy": "all"}}, "realtime.toolPolicy: must be "),
    ],
)
def test_enum_value_outside_choices_is_rejected(data, expected_start):
    assert any(line.startswith(expected_start) for line in errors_of(data)), errors_of(data)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("streaming.providers.openai.vadThreshold", 1.5, "must be between 0 and 1"),
        ("streaming.providers.openai.vadThreshold", -0.1, "must be between 0 and 1"),
        ("streaming.providers.openai.vadThreshold", float("nan"), "must be between 0 and 1"),
        ("tts.timeoutMs", 999, "must be between 1000 and 120000"),
        ("tts.timeoutMs", 120001, "must be between 1000 and 120000"),
        ("tailscale.port", 0, "must be between 1 and 65535"),
        ("tailscale.port", 65536, "must be between 1 and 65535"),
        ("serve.port", 0, "must be between 1 and 65535"),
        ("serve.maxInFlightPerIp", 0, "must be between 1 and 100000"),
        ("serve.maxInFlightPerIp", -3, "must be between 1 and 100000"),
        ("serve.maxInFlightPerIp", 100001, "must be between 1 and 100000"),
    ],
)
def test_value_out_of_range_is_rejected(key, value, expected):
    assert errors_of(with_key(key, value)) == [f"{key}: {expected}"]


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("realtime.providers.openai.vadThreshold", 1.5, "must be between 0 and 1"),
        ("realtime.providers.openai.prefixPaddingMs", -1, "must be 0 or more"),
        ("realtime.providers.openai.idleTimeoutMs", 0, "must be"),
        ("realtime.providers.openai.noiseReduction", "loud", "must be 'near_field' or 'far_field'"),
        ("realtime.providers.openai.transcriptionModel", "", "must not be empty"),
        ("realtime.providers.google.temperature", 3, "must be between 0 and 2"),
        ("realtime.providers.google.startSensitivity", "medium", "must be high or low"),
        ("realtime.providers.google.endSensitivity", 1, "must be a string"),
        ("realtime.providers.google.sessionResumption", "off", "must be true or false"),
        ("realtime.providers.google.contextWindowCompression", 0, "must be true or false"),
        ("realtime.providers.google.language", "", "must not be empty"),
    ],
)
def test_realtime_provider_settings_are_checked_naming_the_key(key, value, expected):
    # The providers read these keys; a bad value is a config error here, not a surprise mid-call.
    [error] = errors_of(with_key(key, value))
    assert error.startswith(f"{key}: {expected}"), error


def test_realtime_provider_settings_in_range_are_accepted():
    config = valid(with_key("realtime.providers.google", {
        "temperature": 0.7, "startSensitivity": "LOW", "endSensitivity": "high", "sessionResumption": False,
        "contextWindowCompression": True, "silenceDurationMs": 400, "prefixPaddingMs": 0, "language": "de-DE"}))
    block = config.realtime.providers["google"].model_dump(by_alias=True, exclude_none=True)
    assert block["temperature"] == 0.7 and block["sessionResumption"] is False and block["startSensitivity"] == "LOW"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("streaming.providers.openai.vadThreshold", 0),
        ("streaming.providers.openai.vadThreshold", 1),
        ("streaming.providers.openai.vadThreshold", 0.5),
        ("tts.timeoutMs", 1000),
        ("tts.timeoutMs", 120000),
        ("tailscale.port", 1),
        ("tailscale.port", 65535),
        ("serve.port", 8080),
        ("serve.maxInFlightPerIp", 1),
        ("serve.maxInFlightPerIp", 100000),
    ],
)
def test_value_at_range_edge_is_accepted(key, value):
    assert attr(valid(with_key(key, value)), snake(key)) == value


POSITIVE_KEYS = [
    "maxDurationSeconds",
    "silenceTimeoutMs",
    "transcriptTimeoutMs",
    "ringTimeoutMs",
    "maxConcurrentCalls",
    "responseTimeoutMs",
    "streaming.preStartTimeoutMs",
    "streaming.maxPendingConnections",
    "streaming.maxPendingConnectionsPerIp",
    "streaming.maxConnections",
    "realtime.fastContext.timeoutMs",
    "realtime.fastContext.maxResults",
    "realtime.agentContext.maxChars",
]


@pytest.mark.parametrize("key", POSITIVE_KEYS)
@pytest.mark.parametrize("value", [0, -5])
def test_positive_integer_rejects_zero_and_negative(key, value):
    assert errors_of(with_key(key, value)) == [f"{key}: must be a positive integer"]


@pytest.mark.parametrize("key", POSITIVE_KEYS)
def test_positive_integer_accepts_one(key):
    assert attr(valid(with_key(key, 1)), snake(key)) == 1


@pytest.mark.parametrize("key", ["staleCallReaperSeconds", "outbound.notifyHangupDelaySec"])
def test_non_negative_integer_accepts_zero(key):
    assert attr(valid(with_key(key, 0)), snake(key)) == 0


@pytest.mark.parametrize("key", ["staleCallReaperSeconds", "outbound.notifyHangupDelaySec"])
def test_non_negative_integer_rejects_negative(key):
    assert errors_of(with_key(key, -1)) == [f"{key}: must be 0 or more"]


@pytest.mark.parametrize("key", ["serve.path", "serve.bind", "agentId"])
def test_empty_string_is_rejected(key):
    assert errors_of(with_key(key, "")) == [f"{key}: must not be empty"]


BAD_E164 = ["5550001234", "+05550001234", "+1", "+1234567890123456", "+1 555 000 1234", "+1-555-000-1234", ""]
GOOD_E164 = ["+15550001234", "+12", "+123456789012345", "+447700900123"]


@pytest.mark.parametrize("number", BAD_E164)
@pytest.mark.parametrize("key", ["fromNumber", "toNumber"])
def test_number_field_rejects_non_e164(key, number):
    assert errors_of({key: number}) == [f"{key}: {E164_ERROR}"]


@pytest.mark.parametrize("number", GOOD_E164)
@pytest.mark.parametrize("key", ["fromNumber", "toNumber"])
def test_number_field_accepts_e164(key, number):
    assert attr(valid({key: number}), snake(key)) == number


@pytest.mark.parametrize("key", ["fromNumber", "toNumber"])
def test_number_with_trailing_newline_is_rejected(key):
    assert errors_of({key: "+15550001234\n"}) == [f"{key}: {E164_ERROR}"]


def test_allow_from_reports_each_bad_entry_by_index():
    errors = errors_of({"allowFrom": ["+15550001234", "555", "+15550005678", "+0123"]})
    assert errors == [f"allowFrom[1]: {E164_ERROR}", f"allowFrom[3]: {E164_ERROR}"]


def test_numbers_key_must_be_e164():
    errors = errors_of({"numbers": {"15550001234": {"inboundGreeting": "Hi"}}})
    assert errors == [f"numbers.15550001234: {E164_ERROR}"]


def test_numbers_route_is_loaded():
    route = valid({"numbers": {"+15550001234": {"inboundGreeting": "Hi", "agentId": "sales"}}}).numbers["+15550001234"]
    assert (route.inbound_greeting, route.agent_id) == ("Hi", "sales")


@pytest.mark.parametrize("url", ["ftp://voice.example.com", "voice.example.com", "https://", "//voice.example.com"])
def test_public_url_must_be_http_url(url):
    errors = errors_of({"publicUrl": url})
    assert len(errors) == 1 and errors[0].startswith("publicUrl: must be an http(s) URL"), errors


@pytest.mark.parametrize("url", ["https://voice.example.com", "http://localhost:8080/base"])
def test_public_url_accepts_http_urls(url):
    assert valid({"publicUrl": url}).public_url == url


def test_valid_realtime_tool_is_loaded():
    tool = valid({"realtime": {"tools": [VALID_TOOL]}}).realtime.tools[0]
    assert (tool.type, tool.name, tool.parameters.required) == ("function", "lookup_order", ["id"])


@pytest.mark.parametrize(
    ("tool", "expected_start"),
    [
        ({**VALID_TOOL, "type": "webhook"}, "realtime.tools[0].type: must be 'function'"),
        ({k: v for k, v in VALID_TOOL.items() if k != "parameters"}, "realtime.tools[0].parameters: required"),
        ({k: v for k, v in VALID_TOOL.items() if k != "name"}, "realtime.tools[0].name: required"),
        ({**VALID_TOOL, "name": ""}, "realtime.tools[0].name: must not be empty"),
        ({**VALID_TOOL, "parameters": {"type": "array"}}, "realtime.tools[0].parameters.type: must be 'object'"),
        ({**VALID_TOOL, "parameters": {"type": "object", "required": "id"}}, "realtime.tools[0].parameters.required:"),
    ],
)
def test_realtime_tool_shape_is_checked(tool, expected_start):
    errors = errors_of({"realtime": {"tools": [tool]}})
    assert any(line.startswith(expected_start) for line in errors), errors


def test_fast_context_sources_must_not_be_empty():
    errors = errors_of({"realtime": {"fastContext": {"sources": []}}})
    assert len(errors) == 1 and errors[0].startswith("realtime.fastContext.sources: must have at least 1"), errors


def test_fast_context_sources_only_known_values():
    errors = errors_of({"realtime": {"fastContext": {"sources": ["memory", "web"]}}})
    assert errors == ["realtime.fastContext.sources[1]: must be 'memory' or 'sessions'"]


def test_fast_context_single_source_is_accepted():
    assert valid({"realtime": {"fastContext": {"sources": ["sessions"]}}}).realtime.fast_context.sources == ["sessions"]


def test_all_schema_errors_are_reported_at_once():
    errors = errors_of(
        {
            "bogus": True,
            "maxDurationSeconds": 0,
            "fromNumber": "555",
            "serve": {"port": "80"},
            "streaming": {"providers": {"openai": {"vadThreshold": 3}}},
            "allowFrom": ["x", "y"],
        }
    )
    assert sorted(errors) == sorted(
        [
            "bogus: unknown key",
            "maxDurationSeconds: must be a positive integer",
            f"fromNumber: {E164_ERROR}",
            "serve.port: must be an integer",
            "streaming.providers.openai.vadThreshold: must be between 0 and 1",
            f"allowFrom[0]: {E164_ERROR}",
            f"allowFrom[1]: {E164_ERROR}",
        ]
    )


def test_invalid_config_still_gives_a_servable_config_keeping_valid_serve():
    loaded = load({"maxDurationSeconds": 0, "serve": {"port": 4000, "path": "/hooks"}})
    assert loaded.ok is False
    assert (loaded.config.serve.port, loaded.config.serve.path) == (4000, "/hooks")
    assert loaded.config.max_duration_seconds == 300


@pytest.mark.parametrize(
    "data",
    [
        {"enabled": False, "maxDurationSeconds": 0},
        wrap({"maxDurationSeconds": 0}, enabled=False),
    ],
    ids=["bare", "wrapper"],
)
def test_disabled_config_with_schema_errors_stays_disabled(data):
    loaded = load(data)
    assert loaded.errors
    assert loaded.enabled is False


@pytest.mark.parametrize("data", [[], "x", None, 3])
def test_non_object_config_is_rejected(data):
    loaded = load(data)
    assert loaded.errors == ["config: must be a JSON object"]
    assert loaded.ok is False


@pytest.mark.parametrize("provider", [["twilio"], {"name": "twilio"}])
def test_non_string_provider_is_a_validation_error_not_a_crash(provider):
    errors = errors_of({"provider": provider})
    assert any(line.startswith("provider: ") for line in errors), errors


def test_load_does_not_mutate_the_input():
    data = {
        "provider": "log",
        "twilio": {"from": "+15550001234"},
        "streaming": {"sttModel": "m"},
        "tts": {"openai": {"voice": "alloy"}},
    }
    before = copy.deepcopy(data)
    load(data, {"NGROK_DOMAIN": "x.ngrok.app"})
    assert data == before


# --- the plugins wrapper ------------------------------------------------------------------


def test_wrapper_config_is_loaded():
    loaded = load(wrap(TWILIO_OK))
    assert loaded.errors == []
    assert (loaded.config.provider, loaded.config.from_number) == ("twilio", "+15550001234")


def test_wrapper_without_config_gives_defaults():
    loaded = load({"plugins": {"entries": {"voice-call": {"enabled": True}}}})
    assert loaded.errors == []
    assert loaded.config.provider == "mock"


def test_wrapper_schema_errors_are_prefixed():
    assert errors_of(wrap({"maxDurationSeconds": 0, "streaming": {"bogus": 1}})) == [
        PREFIX + "maxDurationSeconds: must be a positive integer",
        PREFIX + "streaming.bogus: unknown key",
    ]


def test_wrapper_cross_field_errors_are_prefixed():
    assert PREFIX + "fromNumber: required (or set TWILIO_FROM_NUMBER)" in errors_of(wrap({"provider": "twilio"}))


def test_wrapper_secret_errors_are_prefixed(monkeypatch):
    monkeypatch.delenv("VC_TEST_MISSING_TOKEN", raising=False)
    data = wrap({**TWILIO_OK, "twilio": {"accountSid": "AC1", "authToken": "${VC_TEST_MISSING_TOKEN}"}})
    assert errors_of(data) == [PREFIX + "twilio.authToken: environment variable VC_TEST_MISSING_TOKEN is not set"]


def test_wrapper_entry_disabled_disables_the_config():
    loaded = load(wrap({"enabled": True, "provider": "twilio"}, enabled=False))
    assert loaded.config.enabled is False
    assert loaded.errors == []
    assert loaded.ok is False


def test_wrapper_entry_disabled_skips_cross_rules_and_secrets(monkeypatch):
    monkeypatch.delenv("VC_TEST_MISSING_TOKEN", raising=False)
    data = wrap(
        {
            "provider": "telnyx",
            "realtime": {"enabled": True},
            "streaming": {"enabled": True},
            "tts": {"providers": {"openai": {"apiKey": "${VC_TEST_MISSING_TOKEN}"}}},
        },
        enabled=False,
    )
    assert errors_of(data) == []


def test_wrapper_entry_enabled_missing_means_enabled():
    assert load(wrap({})).config.enabled is True


def test_wrapper_entry_enabled_must_be_bool():
    assert errors_of(wrap({}, enabled="yes")) == ["plugins.entries.voice-call.enabled: must be true or false"]


def test_wrapper_unknown_entry_key_is_an_error():
    assert errors_of(wrap({}, hooks={})) == ["plugins.entries.voice-call: unknown key(s): hooks"]


@pytest.mark.parametrize(
    "data",
    [
        {"plugins": {}},
        {"plugins": {"entries": {}}},
        {"plugins": {"entries": {"other": {}}}},
        {"plugins": "voice-call"},
        {"plugins": {"entries": {"voice-call": []}}},
    ],
)
def test_wrapper_without_voice_call_entry_is_an_error(data):
    assert errors_of(data) == ["plugins.entries.voice-call: missing (expected an object)"]


def test_wrapper_config_must_be_an_object():
    assert errors_of(wrap(["provider", "mock"])) == ["plugins.entries.voice-call.config: must be an object"]


def test_wrapper_ignored_top_level_keys_are_warned_not_errors():
    data = {**wrap({}), "gateway": {"port": 1}, "agents": {}}
    loaded = load(data)
    assert loaded.errors == []
    assert len(loaded.warnings) == 1
    warning = loaded.warnings[0]
    assert "ignoring top-level keys" in warning and "agents" in warning and "gateway" in warning


def test_bare_config_has_no_unwrap_warning():
    assert load(TWILIO_OK).warnings == []


# Top-level `tts` (the core TTS config) under the wrapper.

def _core_tts_config(plugin_tts=None, core_tts=None, **entry):
    data = wrap({} if plugin_tts is None else {"tts": plugin_tts}, **entry)
    data["tts"] = core_tts
    return data


def test_top_level_tts_is_used_when_plugin_has_none():
    cfg = valid(_core_tts_config(core_tts={"provider": "openai", "timeoutMs": 5000}))
    assert (cfg.tts.provider, cfg.tts.timeout_ms) == ("openai", 5000)


def test_top_level_tts_is_not_reported_as_ignored():
    assert load(_core_tts_config(core_tts={"provider": "openai"})).warnings == []


def test_plugin_tts_wins_over_top_level_tts_and_merges_deeply():
    cfg = valid(
        _core_tts_config(
            plugin_tts={"provider": "openai", "providers": {"openai": {"voice": "nova"}}},
            core_tts={"provider": "elevenlabs", "timeoutMs": 5000, "providers": {"openai": {"model": "tts-1", "voice": "alloy"}}},
        )
    )
    assert cfg.tts.provider == "openai"
    assert cfg.tts.timeout_ms == 5000
    assert (cfg.tts.providers["openai"].voice, cfg.tts.providers["openai"].model) == ("nova", "tts-1")


def test_plugin_tts_arrays_replace_top_level_arrays():
    cfg = valid(
        _core_tts_config(
            plugin_tts={"providers": {"openai": {"stops": [9]}}},
            core_tts={"providers": {"openai": {"stops": [1, 2, 3]}}},
        )
    )
    assert cfg.tts.providers["openai"].model_extra["stops"] == [9]


def test_plugin_tts_null_values_do_not_erase_top_level_values():
    cfg = valid(
        _core_tts_config(plugin_tts={"provider": None, "timeoutMs": None}, core_tts={"provider": "openai", "timeoutMs": 5000})
    )
    assert (cfg.tts.provider, cfg.tts.timeout_ms) == ("openai", 5000)


def test_top_level_tts_errors_are_reported_under_tts():
    assert errors_of(_core_tts_config(core_tts={"timeoutMs": 10})) == ["tts.timeoutMs: must be between 1000 and 120000"]


def test_top_level_tts_legacy_block_is_migrated_with_warning():
    loaded = load(_core_tts_config(core_tts={"openai": {"voice": "alloy"}}))
    assert loaded.errors == []
    assert loaded.config.tts.providers["openai"].voice == "alloy"
    assert "tts.openai" in legacy_paths(loaded.warnings)


# --- cross-field rules (validation.py) -------------------------------------------------


@pytest.mark.parametrize("provider", ["twilio", "telnyx", "plivo", "mock"])
def test_fully_configured_carrier_has_no_errors(provider):
    assert load(CARRIERS_OK[provider]).errors == []


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"provider": "twilio"},
            {
                "fromNumber: required (or set TWILIO_FROM_NUMBER)",
                "twilio.accountSid: required (or set TWILIO_ACCOUNT_SID)",
                "twilio.authToken: required (or set TWILIO_AUTH_TOKEN)",
            },
        ),
        (
            {"provider": "telnyx"},
            {
                "fromNumber: required",
                "telnyx.apiKey: required (or set TELNYX_API_KEY)",
                "telnyx.connectionId: required (or set TELNYX_CONNECTION_ID)",
                "telnyx.publicKey: required (or set TELNYX_PUBLIC_KEY)",
            },
        ),
        (
            {"provider": "plivo"},
            {
                "fromNumber: required",
                "plivo.authId: required (or set PLIVO_AUTH_ID)",
                "plivo.authToken: required (or set PLIVO_AUTH_TOKEN)",
            },
        ),
        ({**TWILIO_OK, "twilio": {"authToken": "t"}}, {"twilio.accountSid: required (or set TWILIO_ACCOUNT_SID)"}),
        ({**TWILIO_OK, "fromNumber": None}, {"fromNumber: required (or set TWILIO_FROM_NUMBER)"}),
        (
            {**TELNYX_OK, "telnyx": {"apiKey": "k", "connectionId": "c"}},
            {"telnyx.publicKey: required (or set TELNYX_PUBLIC_KEY)"},
        ),
        ({**PLIVO_OK, "plivo": {"authId": "MA1"}}, {"plivo.authToken: required (or set PLIVO_AUTH_TOKEN)"}),
    ],
    ids=["twilio-empty", "telnyx-empty", "plivo-empty", "twilio-sid", "twilio-from", "telnyx-pubkey", "plivo-token"],
)
def test_carrier_requirements(data, expected):
    assert set(errors_of(data)) == expected


def test_mock_does_not_require_from_number():
    assert valid({"provider": "mock"}).from_number is None


def test_telnyx_public_key_not_required_with_skip_signature_verification():
    data = {**TELNYX_OK, "telnyx": {"apiKey": "k", "connectionId": "c"}, "skipSignatureVerification": True}
    assert errors_of(data) == []


def test_telnyx_skip_signature_verification_is_still_gated():
    data = {
        **TELNYX_OK,
        "telnyx": {"apiKey": "k", "connectionId": "c"},
        "skipSignatureVerification": True,
        "serve": {"bind": "0.0.0.0"},
    }
    assert errors_of(data) == [SKIP_GATE_ERROR]


REALTIME_OK = {"realtime": {"enabled": True}, "inboundPolicy": "allowlist"}


def test_realtime_requires_inbound_policy_other_than_disabled():
    assert errors_of({"realtime": {"enabled": True}}) == [
        'realtime.enabled: requires an inboundPolicy other than "disabled"'
    ]


@pytest.mark.parametrize("policy", ["allowlist", "pairing", "open"])
def test_realtime_with_inbound_policy_is_accepted(policy):
    assert valid({"realtime": {"enabled": True}, "inboundPolicy": policy}).realtime.enabled is True


def test_realtime_and_streaming_cannot_both_be_enabled():
    data = {**TWILIO_OK, **REALTIME_OK, "streaming": {"enabled": True}}
    assert errors_of(data) == ["realtime.enabled: cannot be used together with streaming.enabled"]


@pytest.mark.parametrize("provider", ["twilio", "telnyx", "plivo", "mock"])
def test_realtime_carriers_accepted(provider):
    assert load({**CARRIERS_OK[provider], **REALTIME_OK}).errors == []


@pytest.mark.parametrize("provider", ["twilio", "telnyx", "plivo"])
def test_streaming_carriers_accepted(provider):
    assert load({**CARRIERS_OK[provider], "streaming": {"enabled": True}}).errors == []


def test_streaming_refused_on_mock():
    assert errors_of({"streaming": {"enabled": True}}) == ["streaming.enabled: requires provider twilio, telnyx or plivo"]


@pytest.mark.parametrize("port", [443, 8443, 10000])
def test_tailscale_funnel_accepts_its_ports(port):
    assert valid({"tailscale": {"mode": "funnel", "port": port}}).tailscale.port == port


def test_tailscale_funnel_refuses_other_ports():
    assert errors_of({"tailscale": {"mode": "funnel", "port": 8080}}) == [
        "tailscale.port: funnel accepts only 443, 8443 or 10000"
    ]
    assert errors_of({"tunnel": {"provider": "tailscale-funnel"}, "tailscale": {"port": 8080}}) == [
        "tailscale.port: funnel accepts only 443, 8443 or 10000"
    ]
    assert errors_of({"tunnel": {"provider": "tailscale-serve"}, "tailscale": {"port": 8080}}) == []


def test_tailscale_port_rule_only_applies_to_funnel():
    assert valid({"tailscale": {"mode": "serve", "port": 8080}}).tailscale.port == 8080


@pytest.mark.parametrize("bind", ["127.0.0.1", "::1", "localhost"])
def test_skip_signature_verification_allowed_on_loopback(bind):
    assert valid({"skipSignatureVerification": True, "serve": {"bind": bind}}).skip_signature_verification is True


@pytest.mark.parametrize(
    "exposure",
    [
        {"publicUrl": "https://voice.example.com"},
        {"serve": {"bind": "0.0.0.0"}},
        {"serve": {"bind": "192.168.1.10"}},
        {"tunnel": {"provider": "ngrok"}},
        {"tailscale": {"mode": "serve"}},
        {"tailscale": {"mode": "funnel"}},
    ],
    ids=["publicUrl", "bind-any", "bind-lan", "ngrok", "tailscale-serve", "tailscale-funnel"],
)
def test_skip_signature_verification_refused_when_exposed(exposure):
    assert errors_of({"skipSignatureVerification": True, **exposure}) == [SKIP_GATE_ERROR]


@pytest.mark.parametrize("value", ["1", "true", "YES", "on"])
def test_unsafe_env_allows_skip_signature_verification_when_exposed(monkeypatch, value):
    monkeypatch.setenv(UNSAFE_SKIP_ENV, value)
    data = {"skipSignatureVerification": True, "publicUrl": "https://voice.example.com", "serve": {"bind": "0.0.0.0"}}
    assert errors_of(data) == []


@pytest.mark.parametrize("value", ["0", "false", ""])
def test_unsafe_env_with_false_value_keeps_the_gate(monkeypatch, value):
    monkeypatch.setenv(UNSAFE_SKIP_ENV, value)
    assert errors_of({"skipSignatureVerification": True, "serve": {"bind": "0.0.0.0"}}) == [SKIP_GATE_ERROR]


def test_skip_signature_verification_logs_security_warning():
    warnings = load({"skipSignatureVerification": True}).warnings
    assert len(warnings) == 1 and warnings[0].startswith("SECURITY WARNING: skipSignatureVerification is on")


def test_no_security_warning_without_skip():
    assert not any("SECURITY WARNING" in w for w in load(TWILIO_OK).warnings)


def test_all_cross_field_errors_are_reported_together():
    data = {
        "provider": "plivo",
        "realtime": {"enabled": True},
        "streaming": {"enabled": True},
        "tailscale": {"mode": "funnel", "port": 80},
        "skipSignatureVerification": True,
    }
    assert set(errors_of(data)) == {
        "fromNumber: required",
        "plivo.authId: required (or set PLIVO_AUTH_ID)",
        "plivo.authToken: required (or set PLIVO_AUTH_TOKEN)",
        'realtime.enabled: requires an inboundPolicy other than "disabled"',
        "realtime.enabled: cannot be used together with streaming.enabled",
        "tailscale.port: funnel accepts only 443, 8443 or 10000",
        SKIP_GATE_ERROR,
    }


def test_no_cross_field_rules_when_disabled():
    data = {
        "enabled": False,
        "provider": "telnyx",
        "realtime": {"enabled": True},
        "streaming": {"enabled": True},
        "tailscale": {"mode": "funnel", "port": 80},
        "skipSignatureVerification": True,
        "serve": {"bind": "0.0.0.0"},
    }
    assert errors_of(data) == []


# --- environment fallbacks ------------------------------------------------------------------

TWILIO_ENV = {"TWILIO_ACCOUNT_SID": "ACenv", "TWILIO_AUTH_TOKEN": "envtoken", "TWILIO_FROM_NUMBER": "+15550002222"}
TELNYX_ENV = {"TELNYX_API_KEY": "envkey", "TELNYX_CONNECTION_ID": "envconn", "TELNYX_PUBLIC_KEY": "O4g+eD8J03XRpecDWUUQ3gZJypXS0rnMSoDZZqjwidI="}
PLIVO_ENV = {"PLIVO_AUTH_ID": "MAenv", "PLIVO_AUTH_TOKEN": "envtoken"}


def test_twilio_credentials_from_env():
    cfg = valid({"provider": "twilio"}, TWILIO_ENV)
    assert (cfg.twilio.account_sid, cfg.twilio.auth_token.reveal(), cfg.from_number) == (
        "ACenv",
        "envtoken",
        "+15550002222",
    )


def test_telnyx_credentials_from_env():
    cfg = valid({"provider": "telnyx", "fromNumber": "+15550001234"}, TELNYX_ENV)
    assert (cfg.telnyx.api_key.reveal(), cfg.telnyx.connection_id, cfg.telnyx.public_key.reveal()) == (
        "envkey",
        "envconn",
        "O4g+eD8J03XRpecDWUUQ3gZJypXS0rnMSoDZZqjwidI=",
    )


def test_plivo_credentials_from_env():
    cfg = valid({"provider": "plivo", "fromNumber": "+15550001234"}, PLIVO_ENV)
    assert (cfg.plivo.auth_id, cfg.plivo.auth_token.reveal()) == ("MAenv", "envtoken")


def test_twilio_env_not_used_for_telnyx():
    loaded = load({"provider": "telnyx"}, {**TWILIO_ENV, **TELNYX_ENV})
    assert loaded.config.twilio is None
    assert loaded.errors == ["fromNumber: required"]


@pytest.mark.parametrize("provider", ["mock", None])
def test_carrier_env_not_used_for_mock(provider):
    data = {"provider": provider} if provider else {}
    cfg = valid(data, {**TWILIO_ENV, **TELNYX_ENV, **PLIVO_ENV})
    assert (cfg.twilio, cfg.telnyx, cfg.plivo, cfg.from_number) == (None, None, None, None)


def test_plivo_env_not_used_for_twilio():
    cfg = valid({"provider": "twilio"}, {**TWILIO_ENV, **PLIVO_ENV})
    assert cfg.plivo is None


def test_ngrok_settings_from_env():
    cfg = valid({"tunnel": {"provider": "ngrok"}}, {"NGROK_AUTHTOKEN": "ngtok", "NGROK_DOMAIN": "me.ngrok.app"})
    assert (cfg.tunnel.ngrok_auth_token.reveal(), cfg.tunnel.ngrok_domain) == ("ngtok", "me.ngrok.app")


def test_config_value_wins_over_env():
    data = {
        "provider": "twilio",
        "fromNumber": "+15550009999",
        "twilio": {"accountSid": "ACconfig", "authToken": "configtoken"},
        "tunnel": {"ngrokDomain": "config.ngrok.app"},
    }
    cfg = valid(data, {**TWILIO_ENV, "NGROK_DOMAIN": "env.ngrok.app"})
    assert (cfg.twilio.account_sid, cfg.twilio.auth_token.reveal(), cfg.from_number, cfg.tunnel.ngrok_domain) == (
        "ACconfig",
        "configtoken",
        "+15550009999",
        "config.ngrok.app",
    )


def test_empty_config_value_is_filled_from_env():
    cfg = valid({"provider": "twilio", "twilio": {"accountSid": ""}}, TWILIO_ENV)
    assert cfg.twilio.account_sid == "ACenv"


def test_blank_env_value_is_ignored():
    errors = errors_of({**TWILIO_OK, "twilio": {"authToken": "t"}}, {"TWILIO_ACCOUNT_SID": "   "})
    assert errors == ["twilio.accountSid: required (or set TWILIO_ACCOUNT_SID)"]


def test_invalid_env_value_names_the_variable():
    errors = errors_of({"provider": "twilio"}, {**TWILIO_ENV, "TWILIO_FROM_NUMBER": "5550002222"})
    assert errors == [f"fromNumber: {E164_ERROR} (from TWILIO_FROM_NUMBER)"]


def test_invalid_env_value_names_the_variable_under_wrapper():
    errors = errors_of(wrap({"provider": "twilio"}), {**TWILIO_ENV, "TWILIO_FROM_NUMBER": "nope"})
    assert errors == [f"{PREFIX}fromNumber: {E164_ERROR} (from TWILIO_FROM_NUMBER)"]


def test_invalid_config_value_does_not_blame_env():
    errors = errors_of({"provider": "twilio", "fromNumber": "555"}, TWILIO_ENV)
    assert errors == [f"fromNumber: {E164_ERROR}"]


def test_explicit_environ_is_used_instead_of_process_env(monkeypatch):
    for name, value in TWILIO_ENV.items():
        monkeypatch.setenv(name, value)
    assert "twilio.accountSid: required (or set TWILIO_ACCOUNT_SID)" in errors_of({"provider": "twilio"}, {})


# --- SecretRefs (§1.9) -------------------------------------------------------------------


def twilio_with_token(token):
    return {**TWILIO_OK, "twilio": {"accountSid": "AC123", "authToken": token}}


def token_of(data):
    return valid(data).twilio.auth_token


def test_plain_string_secret():
    secret = token_of(twilio_with_token("plain-token"))
    assert (secret.reveal(), secret.describe()) == ("plain-token", "inline")


def test_env_template_secret(monkeypatch):
    monkeypatch.setenv("VC_TEST_TOKEN", "from-env")
    secret = token_of(twilio_with_token("${VC_TEST_TOKEN}"))
    assert (secret.reveal(), secret.describe()) == ("from-env", "env:VC_TEST_TOKEN")


def test_env_template_missing_variable(monkeypatch):
    monkeypatch.delenv("VC_TEST_MISSING_TOKEN", raising=False)
    assert errors_of(twilio_with_token("${VC_TEST_MISSING_TOKEN}")) == [
        "twilio.authToken: environment variable VC_TEST_MISSING_TOKEN is not set"
    ]


def test_env_template_empty_variable_counts_as_missing(monkeypatch):
    monkeypatch.setenv("VC_TEST_TOKEN", "")
    assert errors_of(twilio_with_token("${VC_TEST_TOKEN}")) == [
        "twilio.authToken: environment variable VC_TEST_TOKEN is not set"
    ]


@pytest.mark.parametrize("ref", [{"source": "env", "id": "VC_TEST_TOKEN"}, {"source": "env", "provider": "default", "id": "VC_TEST_TOKEN"}])
def test_env_ref_secret(monkeypatch, ref):
    monkeypatch.setenv("VC_TEST_TOKEN", "from-ref")
    secret = token_of(twilio_with_token(ref))
    assert (secret.reveal(), secret.describe()) == ("from-ref", "env:VC_TEST_TOKEN")


def test_env_ref_missing_variable(monkeypatch):
    monkeypatch.delenv("VC_TEST_MISSING_TOKEN", raising=False)
    assert errors_of(twilio_with_token({"source": "env", "id": "VC_TEST_MISSING_TOKEN"})) == [
        "twilio.authToken: environment variable VC_TEST_MISSING_TOKEN is not set"
    ]


def test_file_ref_secret(tmp_path):
    file = tmp_path / "token.txt"
    file.write_text("from-file\n")
    secret = token_of(twilio_with_token({"source": "file", "id": str(file)}))
    assert (secret.reveal(), secret.describe()) == ("from-file", f"file:{file}")


def test_file_ref_with_json_pointer(tmp_path):
    file = tmp_path / "secrets.json"
    file.write_text(json.dumps({"twilio": {"token": "ptr-token"}, "a/b": {"c~d": "escaped"}}))
    assert token_of(twilio_with_token({"source": "file", "id": str(file), "pointer": "/twilio/token"})).reveal() == "ptr-token"
    assert token_of(twilio_with_token({"source": "file", "id": str(file), "pointer": "/a~1b/c~0d"})).reveal() == "escaped"


def test_file_ref_pointer_into_array(tmp_path):
    file = tmp_path / "secrets.json"
    file.write_text(json.dumps({"tokens": ["first", "second"]}))
    assert token_of(twilio_with_token({"source": "file", "id": str(file), "pointer": "/tokens/1"})).reveal() == "second"


@pytest.mark.parametrize(
    ("content", "pointer", "expected_end"),
    [
        ('{"twilio": {}}', "/twilio/token", "has nothing at /twilio/token"),
        ('{"twilio": {"token": 5}}', "/twilio/token", "value at /twilio/token is not a string"),
        ("not json", "/twilio/token", "is not JSON (needed for pointer /twilio/token)"),
    ],
)
def test_file_ref_pointer_problems(tmp_path, content, pointer, expected_end):
    file = tmp_path / "secrets.json"
    file.write_text(content)
    errors = errors_of(twilio_with_token({"source": "file", "id": str(file), "pointer": pointer}))
    assert errors == [f"twilio.authToken: secret file {file} {expected_end}"]


def test_file_ref_missing_file(tmp_path):
    file = tmp_path / "absent.txt"
    errors = errors_of(twilio_with_token({"source": "file", "id": str(file)}))
    assert len(errors) == 1 and errors[0].startswith(f"twilio.authToken: cannot read secret file {file}"), errors


def test_file_ref_empty_file(tmp_path):
    file = tmp_path / "empty.txt"
    file.write_text("  \n")
    assert errors_of(twilio_with_token({"source": "file", "id": str(file)})) == [
        f"twilio.authToken: secret file {file} is empty"
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"source": "file", "id": "secrets/token.txt"}, "SecretRef file id must be an absolute path"),
        ({"source": "exec", "id": "vault-read"}, 'SecretRef source "exec" is not supported; use "env" or "file"'),
        ({"source": "vault", "id": "X"}, 'SecretRef source must be "env" or "file"'),
        ({"source": "env", "id": "lower_case"}, "SecretRef env id must match ^[A-Z][A-Z0-9_]{0,127}$"),
        ({"source": "env", "id": ""}, "SecretRef id is required"),
        ({"source": "env"}, "SecretRef id is required"),
        ({"source": "env", "id": "X", "pointer": "/a"}, 'SecretRef pointer is only valid with source "file"'),
        ({"source": "file", "id": "/run/token", "pointer": "a/b"}, 'SecretRef pointer must be an absolute JSON pointer like "/twilio/token"'),
        ({"source": "env", "id": "X", "provider": "Bad Name"}, "SecretRef provider must match ^[a-z][a-z0-9_-]{0,63}$"),
        ({"source": "env", "id": "X", "key": "y"}, "SecretRef has unknown key(s): key"),
        ("${lower}", '"${lower}" is not a valid ${ENV_NAME} reference (A-Z, 0-9, _)'),
        ("", "must not be empty"),
        ("   ", "must not be empty"),
        (12345, 'must be a string, "${ENV_NAME}", or a SecretRef object {source, id}'),
    ],
)
def test_bad_secret_ref_is_rejected_with_path(value, expected):
    assert errors_of(twilio_with_token(value)) == [f"twilio.authToken: {expected}"]


def test_secret_repr_and_str_never_show_the_value(monkeypatch):
    monkeypatch.setenv("VC_TEST_TOKEN", "env-secret-value")
    literal = token_of(twilio_with_token("literal-secret-value"))
    from_env = token_of(twilio_with_token("${VC_TEST_TOKEN}"))
    from_env.reveal()
    for secret, value in [(literal, "literal-secret-value"), (from_env, "env-secret-value")]:
        assert value not in repr(secret)
        assert value not in str(secret)
        assert value not in f"{secret!r} {secret}"


def test_config_repr_never_shows_secret_values():
    loaded = load(twilio_with_token("literal-secret-value"))
    assert "literal-secret-value" not in repr(loaded)
    assert "literal-secret-value" not in str(loaded.config)


def test_json_dump_shows_only_secret_description(monkeypatch):
    monkeypatch.setenv("VC_TEST_TOKEN", "env-secret-value")
    data = {
        **twilio_with_token("literal-secret-value"),
        "tts": {"providers": {"openai": {"apiKey": "${VC_TEST_TOKEN}"}}},
    }
    cfg = valid(data)
    dumped = cfg.model_dump(mode="json")
    assert dumped["twilio"]["auth_token"] == "inline"
    assert dumped["tts"]["providers"]["openai"]["api_key"] == "env:VC_TEST_TOKEN"
    text = json.dumps(dumped) + cfg.model_dump_json()
    assert "literal-secret-value" not in text
    assert "env-secret-value" not in text


@pytest.mark.parametrize(
    "section",
    ["tts.providers.openai.apiKey", "streaming.providers.openai.apiKey", "realtime.providers.google.apiKey"],
)
def test_provider_api_key_secret_is_resolved(monkeypatch, section):
    monkeypatch.setenv("VC_TEST_KEY", "sk-test")
    assert attr(valid(with_key(section, "${VC_TEST_KEY}")), snake(section)).reveal() == "sk-test"


@pytest.mark.parametrize(
    "section",
    ["tts.providers.openai.apiKey", "streaming.providers.deepgram.apiKey", "realtime.providers.google.apiKey"],
)
def test_provider_api_key_missing_env_is_reported_with_path(monkeypatch, section):
    monkeypatch.delenv("VC_TEST_MISSING_KEY", raising=False)
    assert errors_of(with_key(section, {"source": "env", "id": "VC_TEST_MISSING_KEY"})) == [
        f"{section}: environment variable VC_TEST_MISSING_KEY is not set"
    ]


def test_all_secret_errors_are_reported_together(monkeypatch, tmp_path):
    monkeypatch.delenv("VC_TEST_MISSING_A", raising=False)
    monkeypatch.delenv("VC_TEST_MISSING_B", raising=False)
    data = {
        **twilio_with_token("${VC_TEST_MISSING_A}"),
        "streaming": {"providers": {"openai": {"apiKey": {"source": "env", "id": "VC_TEST_MISSING_B"}}}},
        "tts": {"providers": {"openai": {"apiKey": {"source": "file", "id": str(tmp_path / "none")}}}},
    }
    errors = errors_of(data)
    assert len(errors) == 3
    assert {e.split(":")[0] for e in errors} == {
        "twilio.authToken",
        "streaming.providers.openai.apiKey",
        "tts.providers.openai.apiKey",
    }


def test_secrets_not_resolved_when_disabled(monkeypatch):
    monkeypatch.delenv("VC_TEST_MISSING_TOKEN", raising=False)
    assert errors_of({**twilio_with_token("${VC_TEST_MISSING_TOKEN}"), "enabled": False}) == []


def test_env_fallback_credential_can_be_a_reference(monkeypatch):
    cfg = valid({"provider": "twilio"}, {**TWILIO_ENV, "TWILIO_AUTH_TOKEN": "${VC_TEST_TOKEN}", "VC_TEST_TOKEN": "indirect"})
    assert cfg.twilio.auth_token.reveal() == "indirect"


# --- legacy keys (§1.8) --------------------------------------------------------------------


def test_legacy_provider_log_becomes_mock():
    loaded = load({"provider": "log"})
    assert loaded.errors == []
    assert loaded.config.provider == "mock"
    assert legacy_paths(loaded.warnings) == ["provider"]


def test_legacy_warning_has_summary_line_pointing_to_doctor():
    warnings = load({"provider": "log"}).warnings
    assert "doctor --fix" in warnings[0]
    assert not warnings[0].startswith("  ")


def test_legacy_twilio_from_becomes_from_number():
    loaded = load({**TWILIO_OK, "fromNumber": None, "twilio": {"accountSid": "AC1", "authToken": "t", "from": "+15550003333"}})
    assert loaded.errors == []
    assert loaded.config.from_number == "+15550003333"
    assert legacy_paths(loaded.warnings) == ["twilio.from"]


def test_legacy_twilio_from_does_not_override_from_number():
    loaded = load({**TWILIO_OK, "twilio": {"accountSid": "AC1", "authToken": "t", "from": "+15550003333"}})
    assert loaded.errors == []
    assert loaded.config.from_number == "+15550001234"
    assert legacy_paths(loaded.warnings) == ["twilio.from"]


def test_legacy_twilio_from_wins_over_env_from_number():
    data = {"provider": "twilio", "twilio": {"from": "+15550003333"}}
    assert valid(data, TWILIO_ENV).from_number == "+15550003333"


def test_legacy_flat_streaming_keys_move_to_openai_provider():
    loaded = load(
        {
            **TWILIO_OK,
            "streaming": {
                "enabled": True,
                "sttProvider": "openai-realtime",
                "openaiApiKey": "sk-legacy",
                "sttModel": "gpt-4o-mini-transcribe",
                "silenceDurationMs": 600,
                "vadThreshold": 0.3,
            },
        }
    )
    assert loaded.errors == []
    streaming = loaded.config.streaming
    openai = streaming.providers["openai"]
    assert streaming.provider == "openai"
    assert (openai.api_key.reveal(), openai.model, openai.silence_duration_ms, openai.vad_threshold) == (
        "sk-legacy",
        "gpt-4o-mini-transcribe",
        600,
        0.3,
    )
    assert set(legacy_paths(loaded.warnings)) == {
        "streaming.sttProvider",
        "streaming.openaiApiKey",
        "streaming.sttModel",
        "streaming.silenceDurationMs",
        "streaming.vadThreshold",
    }


def test_legacy_streaming_key_keeps_current_canonical_value():
    cfg = valid({"streaming": {"vadThreshold": 0.9, "providers": {"openai": {"vadThreshold": 0.2}}}})
    assert cfg.streaming.providers["openai"].vad_threshold == 0.2


@pytest.mark.parametrize("value", ["0.5", True, None, float("inf"), float("nan")])
def test_legacy_streaming_non_finite_number_is_dropped(value):
    loaded = load({"streaming": {"vadThreshold": value}})
    assert loaded.errors == []
    assert "openai" not in loaded.config.streaming.providers
    assert legacy_paths(loaded.warnings) == ["streaming.vadThreshold"]


def test_legacy_stt_block_is_removed():
    loaded = load({"stt": {"provider": "openai", "model": "whisper-1"}})
    assert loaded.errors == []
    assert legacy_paths(loaded.warnings) == ["stt"]


def test_legacy_include_system_prompt_is_removed():
    loaded = load({"realtime": {"agentContext": {"enabled": True, "includeSystemPrompt": True}}})
    assert loaded.errors == []
    assert loaded.config.realtime.agent_context.enabled is True
    assert legacy_paths(loaded.warnings) == ["realtime.agentContext.includeSystemPrompt"]


@pytest.mark.parametrize(
    ("legacy", "provider_id"),
    [("openai", "openai"), ("elevenlabs", "elevenlabs"), ("edge", "microsoft")],
)
def test_legacy_tts_provider_block_moves_under_providers(legacy, provider_id):
    loaded = load({"tts": {legacy: {"voice": "v1"}}})
    assert loaded.errors == []
    assert loaded.config.tts.providers[provider_id].voice == "v1"
    assert legacy_paths(loaded.warnings) == [f"tts.{legacy}"]


def test_legacy_tts_provider_edge_becomes_microsoft():
    loaded = load({"tts": {"provider": "edge"}})
    assert loaded.config.tts.provider == "microsoft"
    assert legacy_paths(loaded.warnings) == ["tts.provider"]


def test_legacy_tts_block_keeps_current_provider_values():
    cfg = valid({"tts": {"openai": {"voice": "old", "model": "tts-1"}, "providers": {"openai": {"voice": "new"}}}})
    assert (cfg.tts.providers["openai"].voice, cfg.tts.providers["openai"].model) == ("new", "tts-1")


def test_legacy_tts_in_number_route_is_migrated():
    loaded = load({"numbers": {"+15550001234": {"tts": {"openai": {"voice": "echo"}}}}})
    assert loaded.errors == []
    assert loaded.config.numbers["+15550001234"].tts.providers["openai"].voice == "echo"
    assert legacy_paths(loaded.warnings) == ["numbers.+15550001234.tts.openai"]


def test_legacy_paths_are_prefixed_under_wrapper():
    loaded = load(wrap({"provider": "log"}))
    assert loaded.config.provider == "mock"
    assert legacy_paths(loaded.warnings) == [PREFIX + "provider"]


def test_canonical_config_has_no_legacy_warning():
    data = {**TWILIO_OK, "streaming": {"provider": "openai", "providers": {"openai": {"model": "m"}}}}
    assert load(data).warnings == []


# --- load_config_file ----------------------------------------------------------------------


@pytest.mark.parametrize("path", [None, ""])
def test_no_config_path_gives_defaults(path):
    loaded = load_config_file(path, environ={})
    assert (loaded.errors, loaded.warnings, loaded.path) == ([], [], None)
    assert loaded.config.provider == "mock"


def test_missing_config_file(tmp_path):
    file = tmp_path / "absent.json"
    loaded = load_config_file(file, environ={})
    assert loaded.errors == [f"VOICECALL_CONFIG: no config file at {file}"]
    assert loaded.path == str(file)
    assert loaded.ok is False
    assert loaded.config.serve.port == 3334


def test_config_path_that_is_a_directory(tmp_path):
    loaded = load_config_file(tmp_path, environ={})
    assert len(loaded.errors) == 1
    assert loaded.errors[0].startswith(f"VOICECALL_CONFIG: cannot read {tmp_path}")


def test_unparseable_config_file_names_the_file(tmp_path):
    file = tmp_path / "voicecall.json"
    file.write_text('{"provider": "twilio",,}')
    loaded = load_config_file(file, environ={})
    assert len(loaded.errors) == 1
    assert loaded.errors[0].startswith(f"VOICECALL_CONFIG: {file} is not valid JSON or JSON5")


def test_config_file_must_hold_an_object(tmp_path):
    file = tmp_path / "voicecall.json"
    file.write_text("[1, 2]")
    assert load_config_file(file, environ={}).errors == ["config: must be a JSON object"]


def test_json5_config_file_with_comments_and_trailing_commas(tmp_path):
    file = tmp_path / "voicecall.json5"
    file.write_text(
        """
        // voice-call config
        {
          provider: 'twilio',           // unquoted key, single quotes
          fromNumber: "+15550001234",
          twilio: {accountSid: "AC123", authToken: "tok",},
          /* block comment */
          maxDurationSeconds: 120,
        }
        """
    )
    loaded = load_config_file(file, environ={})
    assert loaded.errors == []
    assert (loaded.config.provider, loaded.config.max_duration_seconds) == ("twilio", 120)
    assert loaded.path == str(file)


def test_config_file_in_wrapper_form(tmp_path):
    file = tmp_path / "openclaw.json"
    file.write_text(json.dumps(wrap({"provider": "mock", "maxDurationSeconds": 0})))
    assert load_config_file(file, environ={}).errors == [PREFIX + "maxDurationSeconds: must be a positive integer"]


def test_config_file_uses_given_environ(tmp_path):
    file = tmp_path / "voicecall.json"
    file.write_text('{"provider": "twilio"}')
    assert load_config_file(file, environ=TWILIO_ENV).errors == []


def test_config_file_path_expands_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "vc.json").write_text('{"maxDurationSeconds": 42}')
    loaded = load_config_file("~/vc.json", environ={})
    assert loaded.config.max_duration_seconds == 42
    assert loaded.path == str(tmp_path / "vc.json")


# --- deep_merge -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "override", "expected"),
    [
        ({"a": 1, "b": 2}, {"b": 3, "c": 4}, {"a": 1, "b": 3, "c": 4}),
        ({"a": {"x": 1, "y": 2}}, {"a": {"y": 3}}, {"a": {"x": 1, "y": 3}}),
        ({"a": {"b": {"c": 1, "d": 2}}}, {"a": {"b": {"d": 5}}}, {"a": {"b": {"c": 1, "d": 5}}}),
        ({"a": 1, "b": {"x": 1}}, {"a": None, "b": None}, {"a": 1, "b": {"x": 1}}),
        ({"a": {"x": 1}}, {"a": {"x": None}}, {"a": {"x": 1}}),
        ({"a": [1, 2, 3]}, {"a": [9]}, {"a": [9]}),
        ({"a": [1, 2]}, {"a": []}, {"a": []}),
        ({"a": {"x": 1}}, {"a": "flat"}, {"a": "flat"}),
        ({"a": "flat"}, {"a": {"x": 1}}, {"a": {"x": 1}}),
        ({"a": 1}, {}, {"a": 1}),
        (None, {"a": 1}, {"a": 1}),
        ({"a": 1}, None, {"a": 1}),
    ],
)
def test_deep_merge(base, override, expected):
    assert deep_merge(base, override) == expected


@pytest.mark.parametrize("key", ["__proto__", "prototype", "constructor"])
def test_deep_merge_blocks_prototype_keys(key):
    merged = deep_merge({"a": {"x": 1}}, {key: {"polluted": True}, "a": {key: {"polluted": True}, "y": 2}})
    assert merged == {"a": {"x": 1, "y": 2}}


def test_deep_merge_does_not_mutate_inputs():
    base = {"a": {"x": 1, "list": [1, 2]}, "b": 1}
    override = {"a": {"x": 2, "new": {"deep": True}}, "c": [3]}
    base_before, override_before = copy.deepcopy(base), copy.deepcopy(override)
    merged = deep_merge(base, override)
    assert merged == {"a": {"x": 2, "list": [1, 2], "new": {"deep": True}}, "b": 1, "c": [3]}
    assert (base, override) == (base_before, override_before)
    assert merged is not base and merged["a"] is not base["a"]


@pytest.mark.parametrize("seconds, error", [
    (86400, None),
    (86401, "maxDurationSeconds: must be at most 86400"),
    (10**30, "maxDurationSeconds: must be at most 86400"),  # would overflow a deadline computed from it
    (0, "maxDurationSeconds: must be a positive integer"),
])
def test_max_duration_is_at_most_a_day(seconds, error):
    loaded = load_config_data({"provider": "mock", "maxDurationSeconds": seconds}, environ={})
    assert loaded.errors == ([error] if error else [])
