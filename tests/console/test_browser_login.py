"""The browser fixtures themselves: a real login through the admin's form, and a refused one."""
from __future__ import annotations

import pytest

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.xdist_group("browser")]


def test_operator_logs_in_through_the_form(console_page, operator):
    page = console_page(operator)
    assert page.locator("#user-tools").inner_text().upper().startswith("WELCOME")
    assert "Voice-call gateway" in page.title()


def test_wrong_password_stays_on_the_login_page(browser_page, operator):
    page = browser_page()
    page.goto("/admin/login/?next=/admin/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", "not-the-password")
    page.click("input[type=submit]")
    assert page.locator(".errornote").is_visible()
    assert "/admin/login/" in page.url
