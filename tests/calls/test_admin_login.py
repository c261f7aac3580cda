"""Admin login throttling through the real admin login page on the live gateway (Daphne), with its CSRF token."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import timedelta

import httpx
import pytest
from django.core.exceptions import ImproperlyConfigured

from calls.admin_login import failure_record, locked_for, locked_message
from calls.models import AdminLoginFailure
from tests.fake_clock import fake_clock
from tests.paths import ROOT
from voicecall_project.env_numbers import positive_int

pytestmark = pytest.mark.django_db(transaction=True)

WRONG = "Please enter the correct username and password"
LOCKED = re.compile(r"Too many failed login attempts; try again in (\d+) minutes?\.")


class AdminBrowser:
    """A browser of the admin login page from one client address: cookies, CSRF token, form posts."""

    def __init__(self, base_url: str, address: str = "127.0.0.1") -> None:
        self.client = httpx.Client(base_url=base_url, transport=httpx.HTTPTransport(local_address=address), timeout=10)

    def login(self, username: str, password: str) -> httpx.Response:
        page = self.client.get("/admin/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        return self.client.post("/admin/login/?next=/admin/", data={
            "csrfmiddlewaretoken": token, "username": username, "password": password, "next": "/admin/",
        })

    def close(self) -> None:
        self.client.close()


def logged_in(response: httpx.Response) -> bool:
    return response.status_code == 302 and response.headers["location"] == "/admin/"


def locked_minutes(response: httpx.Response) -> int | None:
    match = LOCKED.search(response.text)
    return int(match.group(1)) if match else None


@pytest.fixture
def admins(django_user_model):
    django_user_model.objects.create_superuser("ops", "ops@example.com", "right-password")
    django_user_model.objects.create_superuser("other", "other@example.com", "other-password")


@pytest.fixture
def browsers(live_gateway):
    made = []

    def browser(address: str = "127.0.0.1") -> AdminBrowser:
        made.append(AdminBrowser(live_gateway, address))
        return made[-1]

    yield browser
    for each in made:
        each.close()


def test_repeated_failures_lock_the_username_for_that_address(admins, browsers):
    attacker = browsers("127.0.0.1")
    with fake_clock() as clock:
        answers = [attacker.login("ops", f"guess-{n}") for n in range(100)]
        assert all(r.status_code == 200 for r in answers)
        assert [WRONG in r.text for r in answers[:5]] == [True] * 5
        assert all(locked_minutes(r) == 15 for r in answers[5:]), answers[5].text[:2000]
        # Refused attempts are not checked, not counted, and do not extend the lock.
        assert AdminLoginFailure.objects.count() == 5

        right = attacker.login("ops", "right-password")
        assert not logged_in(right) and locked_minutes(right) == 15
        assert "sessionid" not in attacker.client.cookies

        # Another address for the same username, and another username from this address: unaffected.
        assert logged_in(browsers("127.0.0.2").login("ops", "right-password"))
        assert logged_in(browsers("127.0.0.1").login("other", "other-password"))

        clock.advance(14 * 60)
        assert locked_minutes(attacker.login("ops", "right-password")) == 1
        clock.advance(60)
        assert logged_in(attacker.login("ops", "right-password"))
    # A successful login clears that username's failures from that address.
    assert not AdminLoginFailure.objects.filter(username="ops", ip_address="127.0.0.1").exists()


def test_failures_spread_beyond_the_window_do_not_lock(admins, browsers):
    browser = browsers()
    with fake_clock() as clock:
        for _ in range(4):
            assert WRONG in browser.login("ops", "wrong").text
        clock.advance(15 * 60 + 1)  # the first four fall out of the window
        for _ in range(4):
            assert WRONG in browser.login("ops", "wrong").text
        assert logged_in(browser.login("ops", "right-password"))


def test_a_success_resets_the_count(admins, browsers):
    browser = browsers()
    with fake_clock():
        for _ in range(4):
            browser.login("ops", "wrong")
        assert logged_in(browser.login("ops", "right-password"))
        fresh = browsers()
        for _ in range(4):
            assert WRONG in fresh.login("ops", "wrong").text
        assert logged_in(fresh.login("ops", "right-password"))


def test_the_limits_come_from_the_settings(admins, browsers, settings):
    settings.VOICECALL_ADMIN_LOGIN_MAX_FAILURES = 2
    settings.VOICECALL_ADMIN_LOGIN_LOCKOUT_SECONDS = 30
    browser = browsers()
    with fake_clock() as clock:
        browser.login("ops", "wrong")
        browser.login("ops", "wrong")
        assert locked_minutes(browser.login("ops", "right-password")) == 1
        clock.advance(30)
        assert logged_in(browser.login("ops", "right-password"))


def test_old_failures_are_pruned():
    with fake_clock() as clock:
        start = clock()
        failure_record("ops", "10.0.0.1", at=start)
        failure_record("someone", "10.0.0.2", at=start)
        clock.advance(30 * 60 + 1)  # past window + lockout: these can no longer lock anything
        failure_record("ops", "10.0.0.1", at=clock())
    assert list(AdminLoginFailure.objects.values_list("username", "failed_at")) == [("ops", clock())]


def test_a_lock_lasts_from_the_last_failure():
    with fake_clock() as clock:
        for _ in range(5):
            failure_record("ops", "10.0.0.1", at=clock())
            clock.advance(60)
        # The fifth failure was 1 minute ago: 14 minutes left.
        assert locked_for("ops", "10.0.0.1", at=clock()) == timedelta(minutes=14)
        assert locked_for("ops", "10.0.0.9", at=clock()) is None


@pytest.mark.parametrize("seconds, text", [(1, "1 minute."), (60, "1 minute."), (61, "2 minutes."), (900, "15 minutes.")])
def test_the_message_rounds_minutes_up(seconds, text):
    assert locked_message(timedelta(seconds=seconds)) == f"Too many failed login attempts; try again in {text}"


@pytest.mark.parametrize("raw", ["abc", "0", "-3", "1.5", ""])
def test_bad_setting_values_are_refused_naming_the_variable(raw):
    with pytest.raises(ImproperlyConfigured, match="^VOICECALL_ADMIN_LOGIN_MAX_FAILURES: expected a whole number of at least 1"):
        positive_int("VOICECALL_ADMIN_LOGIN_MAX_FAILURES", raw)


def test_a_bad_setting_stops_the_process_with_its_name():
    env = {**os.environ, "VOICECALL_ADMIN_LOGIN_LOCKOUT_SECONDS": "15m", "DJANGO_SETTINGS_MODULE": "voicecall_project.settings"}
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "VOICECALL_ADMIN_LOGIN_LOCKOUT_SECONDS: expected a whole number of at least 1, got '15m'" in result.stderr
