"""Browser fixtures for the admin console: Debian's chromium driven by Playwright against the live gateway.

One browser per test process (session-scoped); each test gets fresh, logged-in pages in a context of
its own. Without chromium the browser tests skip, except under CI, where .ci/run installs it and a
missing browser is a failure. Screenshots go to docs/screenshots/, which the README links.

Playwright's sync API marks its event loop as running in the test's thread between calls, so Django
refuses database access there (SynchronousOnlyOperation). Tests run their ORM work through
`outside_loop(fn)`, on another thread, rather than switching that safety check off for the process.
Between tests the mark is lifted (other tests in this process, and the test database's teardown, see
no running loop) and put back before the next test drives the browser.
"""
from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.paths import ROOT

SCREENSHOTS = ROOT / "docs" / "screenshots"
PASSWORD = "console-pw-7301"
# Chromium as root in a sandboxless container, and no calls home: this machine's network is closed.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]


def outside_loop(fn: Callable, *args, **kwargs):
    """fn(*args, **kwargs) on a thread of its own (database access while a browser is open), its result returned."""
    from django.db import connection

    def run():
        try:
            return fn(*args, **kwargs)
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(run).result()


def chromium_path() -> str | None:
    return os.environ.get("VOICECALL_TEST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def browser():
    executable = chromium_path()
    if executable is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs Debian's chromium package)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        browser.playwright_loop = asyncio.get_running_loop()
        asyncio._set_running_loop(None)
        yield browser
        asyncio._set_running_loop(browser.playwright_loop)
        browser.close()
    asyncio._set_running_loop(None)


@pytest.fixture
def operator(django_user_model):
    """A superuser: sees every page and every action button."""
    return outside_loop(django_user_model.objects.create_superuser, "operator", "operator@example.com", PASSWORD)


@pytest.fixture
def viewer(django_user_model):
    """Staff who may only look at calls (view_call): no action buttons, 403 from the action endpoints."""
    from django.contrib.auth.models import Permission

    def create():
        user = django_user_model.objects.create_user("viewer", "viewer@example.com", PASSWORD, is_staff=True)
        user.user_permissions.add(Permission.objects.get(codename="view_call", content_type__app_label="calls"))
        return user

    return outside_loop(create)


@pytest.fixture
def browser_page(live_gateway, browser) -> Iterator[Callable]:
    """browser_page() -> a new Playwright page, not logged in, in a context of its own, on the live gateway."""
    contexts = []
    asyncio._set_running_loop(browser.playwright_loop)  # Playwright's calls need it marked (see above)

    def open_page(*, width: int = 1280, height: int = 800):
        context = browser.new_context(viewport={"width": width, "height": height}, base_url=live_gateway)
        context.set_default_timeout(10_000)
        contexts.append(context)
        return context.new_page()

    yield open_page
    for context in contexts:
        context.close()
    asyncio._set_running_loop(None)  # the test database's teardown runs in this thread next


@pytest.fixture
def console_page(browser_page) -> Callable:
    """console_page(user) -> a Playwright page logged in to the admin as `user` (through the login form)."""

    def open_page(user, **size):
        page = browser_page(**size)
        page.goto("/admin/login/?next=/admin/")
        page.fill("#id_username", user.get_username())
        page.fill("#id_password", PASSWORD)
        page.click("input[type=submit]")
        page.wait_for_url("**/admin/")
        return page

    return open_page


def screenshot(page, name: str) -> Path:
    """Write the page as docs/screenshots/<name>.png (the README's console section shows these)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    return path
