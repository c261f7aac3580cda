"""In a browser: the operator opens the setup page from the admin index and finds each failing check with its fix;
a view-only user has no Setup row and gets 403 from the page."""
from __future__ import annotations

import json

import pytest
from playwright.sync_api import expect

from core.config.loader import load_config_file

from tests.console.conftest import screenshot

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.xdist_group("browser")]


@pytest.fixture
def half_done_twilio(configure, tmp_path):
    """Twilio with its token named but not in the environment, no public URL yet, and a setting that does nothing."""
    key = tmp_path / "openai_key"
    key.write_text("oa-file-key-88213\n")
    path = tmp_path / "voicecall.json5"
    path.write_text(json.dumps({
        "provider": "twilio", "fromNumber": "+15550001234",
        "twilio": {"accountSid": "AC" + "0123456789abcdef" * 2, "authToken": "${TWILIO_AUTH_TOKEN}"},
        "streaming": {"enabled": True, "provider": "openai"},
        "tts": {"provider": "openai", "providers": {"openai": {"apiKey": {"source": "file", "id": str(key)}}}},
        "silenceTimeoutMs": 1200,
    }))
    return configure(load_config_file(path, environ={}))


def test_operator_opens_setup_from_the_index_and_sees_the_fixes(console_page, operator, half_done_twilio):
    page = console_page(operator)
    page.locator("#console-pages").get_by_role("link", name="Setup", exact=True).click()
    page.wait_for_url("**/admin/console/setup/")
    expect(page.locator("#setup-summary")).to_contain_text("Setup needs attention: 2 of 5 checks fail.")
    expect(page.locator("#config-path")).to_have_text(half_done_twilio.path)
    config = page.locator('tr[data-check="provider-config"]')
    expect(config).to_contain_text("FAIL")
    expect(config).to_contain_text("twilio.authToken: environment variable TWILIO_AUTH_TOKEN is not set")
    expect(config.locator("td.fix")).to_contain_text(
        "Set the environment variable TWILIO_AUTH_TOKEN (it holds twilio.authToken) for every gateway and worker process")
    expect(page.locator('tr[data-check="webhook-exposure"] td.fix')).to_contain_text("Set publicUrl in")
    expect(page.locator('tr[data-check="mode"]')).to_contain_text("OK")
    expect(page.locator("tr.check-warn")).to_contain_text("silenceTimeoutMs is accepted but has no effect yet")
    expect(page.locator('#config-errors code.key-path')).to_have_text(["twilio.authToken"])
    expect(page.locator('tr[data-secret="tts.providers.openai.apiKey"] td.source')).to_contain_text("file ")
    expect(page.locator('tr[data-secret="twilio.authToken"] td.source')).to_have_text("env TWILIO_AUTH_TOKEN")
    assert "oa-file-key" not in page.content()
    screenshot(page, "setup")


def test_viewer_has_no_setup_row_and_gets_403(console_page, viewer):
    page = console_page(viewer)
    expect(page.locator("#console-pages")).to_be_attached()
    expect(page.locator("#console-pages").get_by_role("link", name="Setup", exact=True)).to_have_count(0)
    response = page.goto("/admin/console/setup/")
    assert response.status == 403
