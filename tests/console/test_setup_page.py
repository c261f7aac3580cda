"""The setup page: permission, the setup checks with their fixes, config errors by key path, and every
secret shown only as where it comes from (its value nowhere in the page)."""
from __future__ import annotations

import json
import re
from html import unescape

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from core.config.loader import load_config_file
from voicecall_project.rpc_tokens import parse_rpc_tokens

pytestmark = pytest.mark.django_db

URL = "/admin/console/setup/"


@pytest.fixture
def operator(client, django_user_model):
    user = django_user_model.objects.create_superuser("operator", "operator@example.com", "pw-setup-4410")
    client.force_login(user)
    return client


def staff_with(django_user_model, *codenames: str):
    user = django_user_model.objects.create_user("staff", "staff@example.com", "pw-setup-4410", is_staff=True)
    for codename in codenames:
        user.user_permissions.add(Permission.objects.get(codename=codename, content_type__app_label="calls"))
    return user


def rows(html: str, selector_class: str) -> list[str]:
    """The text of each <tr class="… selector_class …">, tags stripped, spaces squeezed."""
    found = re.findall(rf'<tr class="[^"]*\b{selector_class}\b[^"]*"[^>]*>(.*?)</tr>', html, re.S)
    return [" ".join(unescape(re.sub(r"<[^>]+>", " ", row)).split()) for row in found]


def test_url_name_and_login_redirect(client):
    assert reverse("console:setup") == URL
    response = client.get(URL)
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_staff_without_view_setup_gets_403_and_no_row_on_the_index(client, django_user_model):
    client.force_login(staff_with(django_user_model, "view_call"))
    assert client.get(URL).status_code == 403
    index = client.get("/admin/").content.decode()
    assert 'id="console-pages"' in index and URL not in index


def test_view_setup_is_enough(client, django_user_model):
    client.force_login(staff_with(django_user_model, "view_setup"))
    assert client.get(URL).status_code == 200
    assert f'href="{URL}"' in client.get("/admin/").content.decode()


def test_default_config_passes_every_check(operator):
    html = operator.get(URL).content.decode()
    assert "Setup complete: every check passes." in html
    assert rows(html, "check-ok") == [
        "OK plugin-enabled Voice calls enabled —",
        "OK provider Provider: mock —",
        "OK provider-config Provider config valid —",
        "OK webhook-exposure Mock provider does not need a public webhook —",
        "OK mode Notify/conversation calls use normal TTS/STT flow —",
    ]
    assert "none: defaults with the mock carrier" in html
    assert '<td id="run-mode">embedded' in html or '<td id="run-mode">distributed' in html
    assert re.search(r'<td id="ready">yes \(200\)', html)


def test_twilio_without_credentials_shows_failing_checks_with_their_fix(operator, configure):
    configure({"provider": "twilio"})
    html = operator.get(URL).content.decode()
    assert "Setup needs attention: 2 of 5 checks fail." in html
    failing = rows(html, "check-fail")
    assert [row.split()[1] for row in failing] == ["provider-config", "webhook-exposure"]
    assert "Set twilio.authToken in a config file" in failing[0]
    assert "or the environment variable TWILIO_AUTH_TOKEN of every gateway and worker process." in failing[0]
    assert "Set publicUrl in a config file" in failing[1]
    # The errors by key path, each with its fix.
    assert rows(html, "config-error") == [
        "fromNumber required (or set TWILIO_FROM_NUMBER) Set fromNumber in a config file (none is loaded: write one and "
        "set VOICECALL_CONFIG to its path), or the environment variable TWILIO_FROM_NUMBER of every gateway and worker process.",
        "twilio.accountSid required (or set TWILIO_ACCOUNT_SID) Set twilio.accountSid in a config file (none is loaded: "
        "write one and set VOICECALL_CONFIG to its path), or the environment variable TWILIO_ACCOUNT_SID of every gateway "
        "and worker process.",
        "twilio.authToken required (or set TWILIO_AUTH_TOKEN) Set twilio.authToken in a config file (none is loaded: "
        "write one and set VOICECALL_CONFIG to its path), or the environment variable TWILIO_AUTH_TOKEN of every gateway "
        "and worker process.",
    ]
    # The carrier's missing credential is listed as not set.
    assert "twilio.authToken not set no set twilio.authToken in the config file or TWILIO_AUTH_TOKEN" in rows(html, "secret")
    assert re.search(r'<td id="ready"><strong>no</strong> \(503\)', html)


def test_invalid_config_file_lists_errors_by_key_path(operator, configure, tmp_path):
    path = tmp_path / "voicecall.json5"
    path.write_text(json.dumps({"plugins": {"entries": {"voice-call": {"config": {
        "numbers": {"+15551234567": {"tts": {"provider": "nope"}}},
        "maxConcurrentCalls": "two",
        "strayKey": 1,
    }}}}}))
    configure(load_config_file(path, environ={}))
    html = operator.get(URL).content.decode()
    assert f"<code>{path}</code>" in html
    wrapper = "plugins.entries.voice-call.config"
    assert rows(html, "config-error") == [
        f"{wrapper}.numbers[\"+15551234567\"].tts.provider must be 'openai', 'elevenlabs', 'microsoft' or 'local' "
        f"Change {wrapper}.numbers[\"+15551234567\"].tts.provider in the config file {path}: must be 'openai', "
        "'elevenlabs', 'microsoft' or 'local'.",
        f"{wrapper}.maxConcurrentCalls must be an integer Change {wrapper}.maxConcurrentCalls in the config file {path}: "
        "must be an integer.",
        f"{wrapper}.strayKey unknown key Remove {wrapper}.strayKey from the config file {path}, or correct its spelling "
        "(docs/configuration.md lists every key).",
    ]
    assert "The config did not validate: its credentials are listed once it does." in html


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ('{provider: "twilio", publicUrl: "https://voice.example.com"', "is not valid JSON or JSON5"),
        ('{provider: "twilio", fromNumber: "555", publicUrl: "https://voice.example.com"}', "fromNumber: Expected E.164"),
        (None, "no config file at"),
    ],
    ids=["syntax", "validation", "missing"],
)
def test_invalid_config_file_skips_the_other_checks(operator, configure, tmp_path, content, error):
    path = tmp_path / "voicecall.json5"
    if content is not None:
        path.write_text(content)
    configure(load_config_file(path, environ={}))
    html = operator.get(URL).content.decode()
    assert "Setup needs attention: the config file is invalid." in html
    [failing] = rows(html, "check-fail")
    assert failing.startswith("FAIL provider-config ") and error in failing and str(path) in failing
    # Nothing is judged from the defaults standing in for the file: no OK against them.
    assert rows(html, "check-ok") == []
    assert rows(html, "check-skip") == [
        f"SKIP {check} not checked until the config file is valid —"
        for check in ("plugin-enabled", "provider", "webhook-exposure", "mode")
    ]
    assert html.index('data-check="provider-config"') < html.index('data-check="plugin-enabled"')


def test_malformed_carrier_identifiers_are_warnings_on_the_page(operator, configure):
    token = "tok-setup-page-5521"
    configure({"provider": "twilio", "fromNumber": "+15550001234", "publicUrl": "https://voice.example.com",
               "twilio": {"accountSid": "AC123", "authToken": token}})
    html = operator.get(URL).content.decode()
    assert "Setup complete: every check passes." in html  # warnings do not fail setup
    warnings = rows(html, "check-warn")
    assert warnings[0].startswith('WARN config twilio.accountSid: "AC123" does not look like a Twilio Account SID '
                                  "(AC followed by 32 hex digits) Copy twilio.accountSid again from your carrier's console")
    assert warnings[1].startswith("WARN config twilio.authToken: the value (19 characters, not shown) does not look "
                                  "like a Twilio auth token (32 hex digits)")
    assert token not in html


def test_missing_config_file_is_an_error_about_the_file(operator, configure, tmp_path):
    configure(load_config_file(tmp_path / "absent.json", environ={}))
    errors = rows(operator.get(URL).content.decode(), "config-error")
    assert errors == [
        f"(the file) VOICECALL_CONFIG: no config file at {tmp_path / 'absent.json'} Create that file, or point "
        "VOICECALL_CONFIG at your config file (unset, the gateway runs on defaults with the mock carrier).",
    ]


def test_warnings_show_with_what_to_do(operator, configure):
    configure({"silenceTimeoutMs": 1500, "streaming": {"sttModel": "x"}})
    warnings = rows(operator.get(URL).content.decode(), "check-warn")
    assert any("silenceTimeoutMs is accepted but has no effect yet" in row and "Remove these keys" in row for row in warnings)
    legacy = next(row for row in warnings if "legacy config keys" in row)
    assert "streaming.sttModel" in legacy and legacy.endswith("Run: python manage.py voicecall doctor --fix")


# Token-like values, each with a prefix found nowhere else.
ENV_TOKEN = "qv71EnvTwilioTok93"
FILE_KEY = "fz38FileOpenAiKey52"
POINTER_KEY = "pk44PointerDeepgram17"
INLINE_KEY = "in95InlineModelKey06"
REF_SECRET = "rf29RefHookSecret88"
OPENAI_ENV = "oa63EnvOpenAiKey40"
RPC_WRITE = "wr57RpcWriteToken2231"
RPC_READ = "rd18RpcReadToken7764"


def test_secrets_show_where_they_come_from_never_their_value(operator, configure, tmp_path, monkeypatch, settings):
    key_file = tmp_path / "openai_key"
    key_file.write_text(FILE_KEY + "\n")
    bundle = tmp_path / "bundle.json"
    bundle.write_text(json.dumps({"deepgram": {"key": POINTER_KEY}}))
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", ENV_TOKEN)
    monkeypatch.setenv("HOOK_SECRET_7731", REF_SECRET)
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_ENV)
    monkeypatch.delenv("DEEPGRAM_API_KEY", raising=False)
    settings.VOICECALL_RPC_TOKENS = parse_rpc_tokens(f"write:{RPC_WRITE},read:{RPC_READ}")
    import os

    configure({
        "provider": "twilio", "fromNumber": "+15550001234", "publicUrl": "https://voice.example.com",
        "twilio": {"accountSid": "AC0123"},
        "tts": {"provider": "openai", "providers": {"openai": {"apiKey": {"source": "file", "id": str(key_file)}}}},
        "streaming": {"providers": {"deepgram": {"apiKey": {"source": "file", "id": str(bundle), "pointer": "/deepgram/key"}}}},
        "models": {"providers": {"openai": {"apiKey": INLINE_KEY}}},
        "agents": {"main": {"responder": {"type": "webhook", "url": "https://agent.example.com/turn",
                                          "secret": "${HOOK_SECRET_7731}"}}},
    }, env=dict(os.environ))
    html = operator.get(URL).content.decode()
    secrets = rows(html, "secret")
    assert "twilio.authToken env TWILIO_AUTH_TOKEN yes not in the file: its environment fallback" in secrets
    assert "tts.providers.openai.apiKey file " + str(key_file) + " yes" in secrets
    assert f"streaming.providers.deepgram.apiKey file {bundle} at /deepgram/key yes" in secrets
    assert any(row.startswith("models.providers.openai.apiKey inline in the config file yes") for row in secrets)
    assert "agents.main.responder.secret env HOOK_SECRET_7731 yes" in secrets
    assert any(row.startswith("OPENAI_API_KEY env OPENAI_API_KEY") for row in secrets)
    assert any(row.startswith("DEEPGRAM_API_KEY not set") for row in secrets)
    assert "VOICECALL_RPC_TOKENS env VOICECALL_RPC_TOKENS tokens: 1 write, 1 read" in secrets
    assert any(row.startswith("SECRET_KEY ") for row in secrets)
    assert rows(html, "check-fail") == []
    # No value, nor the start of one, anywhere in the page.
    from calls.rpc_tokens import local_token

    values = [ENV_TOKEN, FILE_KEY, POINTER_KEY, INLINE_KEY, REF_SECRET, OPENAI_ENV, RPC_WRITE, RPC_READ]
    for value in values:
        assert value[:8] not in html
    # Keys this test did not choose may start like any word ("voicecall-…"): their last 16 characters instead.
    for value in (settings.SECRET_KEY, local_token(settings.DATA_DIR).token):
        assert value[-16:] not in html


def test_a_missing_secret_file_is_found_no_and_an_error(operator, configure, tmp_path):
    absent = tmp_path / "nope"
    configure({"provider": "twilio", "fromNumber": "+15550001234", "twilio": {
        "accountSid": "AC0123", "authToken": {"source": "file", "id": str(absent)}}}, env={})
    html = operator.get(URL).content.decode()
    assert f"twilio.authToken file {absent} no" in rows(html, "secret")
    (error,) = rows(html, "config-error")
    assert error.startswith(f"twilio.authToken cannot read secret file {absent}")
    assert "Put the credential in the file twilio.authToken names" in error


def test_service_urls_lose_their_credentials():
    from calls.console.secret_sources import without_credentials

    assert without_credentials("redis://:rp61RedisPass03@10.0.0.5:6380/2") == "redis://10.0.0.5:6380/2 (credentials not shown)"
    assert without_credentials("rediss://user:rp61RedisPass03@cache.example.com/0?ssl_cert_reqs=none") == (
        "rediss://cache.example.com/0 (credentials not shown)")
    assert without_credentials("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert without_credentials("redis://[::1]:6379/1") == "redis://[::1]:6379/1"


def test_deployment_rows_distributed_with_a_database_password(tmp_path):
    from types import SimpleNamespace

    from calls.console.secret_sources import deployment_secrets

    settings = SimpleNamespace(
        DATA_DIR=tmp_path, VOICECALL_MODE="distributed", VOICECALL_RPC_TOKENS=parse_rpc_tokens(f"write:{RPC_WRITE}"),
        REDIS_URL="redis://:rp61RedisPass03@127.0.0.1:6379/0",
        DATABASES={"default": {"ENGINE": "django.db.backends.postgresql", "HOST": "db.internal", "PORT": 5432,
                               "NAME": "voicecall", "USER": "vc", "PASSWORD": "dp47DbPassword19"}},
    )
    environ = {"SECRET_KEY": "sk90DeploySecretKey55", "DATABASE_URL": "postgresql://vc:dp47DbPassword19@db.internal/voicecall",
               "REDIS_URL": settings.REDIS_URL}
    rows = {row.name: row for row in deployment_secrets(settings, environ)}
    assert (rows["SECRET_KEY"].source, rows["local RPC token"].source) == ("env SECRET_KEY", "derived from SECRET_KEY")
    assert rows["VOICECALL_RPC_TOKENS"].note == "tokens: 1 write, 0 read"
    assert rows["VOICECALL_RPC_TOKEN"].source == "not set"
    assert rows["DATABASE_URL"].source == "env DATABASE_URL"
    assert rows["DATABASE_URL"].note == "postgresql at db.internal:5432, database voicecall (its user and password not shown)"
    assert rows["REDIS_URL"].note == "redis://127.0.0.1:6379/0 (credentials not shown)"
    text = repr(list(rows.values()))
    for value in ("dp47DbPa", "rp61Redi", "sk90Depl", RPC_WRITE[:8]):
        assert value not in text
