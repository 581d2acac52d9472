"""The API docs render in a real browser that cannot reach anything but the test server.

Chromium is Debian's (`make setup` installs it), driven by Playwright with its executable path
set, so no browser is downloaded. Every request to another host is aborted and recorded: the test
fails if the page asks for anything outside the app, however it would have rendered.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from saascore.kit.db import Database
from tests.cli.runner import SAASCORE, Cli, Server, clean_environment, free_port
from tests.helpers import settings_env

CHROMIUM = Path("/usr/bin/chromium")
#: Milliseconds a page has to render (Swagger UI and ReDoc parse the whole document).
RENDER_TIMEOUT = 60_000
OPERATION = "/v1/usage/events"


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing: `make setup` installs Debian's chromium"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return CHROMIUM


@pytest.fixture
def server(database: Database, tmp_path: Path) -> Iterator[Server]:
    """`saascore serve` on the test's migrated SQLite database, on a free port."""
    port = free_port()
    cli = Cli(tmp_path, clean_environment()).with_env(settings_env(database.settings))
    assert SAASCORE.exists(), SAASCORE
    with cli.server("serve", "--port", str(port), port=port) as running:
        running.wait_until_healthy()
        yield running


@dataclass
class Visit:
    """What a page asked for: the requests aborted (to other hosts) and the answers >= 400."""

    aborted: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    text: str = ""


def visit(chromium: Path, url: str, ready: str) -> Visit:
    """Open `url` offline, wait until `ready` (a CSS selector) is on the page, and return what
    happened, with the text of the rendered page."""
    from playwright.sync_api import Request, Response, Route, sync_playwright

    seen = Visit()
    server_host = urlsplit(url).hostname

    def only_the_server(route: Route, request: Request) -> None:
        if urlsplit(request.url).hostname == server_host:
            route.continue_()
        else:
            seen.aborted.append(request.url)
            route.abort("internetdisconnected")

    def record(response: Response) -> None:
        if response.status >= 400:
            seen.errors.append(f"{response.status} {response.url}")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium))
        try:
            page = browser.new_page()
            page.route("**/*", only_the_server)
            page.on("response", record)
            page.goto(url, wait_until="load", timeout=RENDER_TIMEOUT)
            page.wait_for_selector(ready, timeout=RENDER_TIMEOUT)
            seen.text = page.inner_text("body")
        finally:
            browser.close()
    return seen


@pytest.mark.parametrize("backend", ["sqlite"])
def test_swagger_ui_lists_the_operations_offline(chromium: Path, server: Server) -> None:
    seen = visit(chromium, server.url("/docs"), f".opblock-summary-path[data-path='{OPERATION}']")
    assert seen.aborted == []
    assert seen.errors == []
    assert OPERATION in seen.text
    assert "/v1/auth/register" in seen.text


@pytest.mark.parametrize("backend", ["sqlite"])
def test_redoc_renders_the_operation_summaries_offline(chromium: Path, server: Server) -> None:
    schema = httpx.get(server.url("/openapi.json")).json()
    summary = schema["paths"][OPERATION]["post"]["summary"]
    seen = visit(chromium, server.url("/redoc"), "[id^='operation/']")
    assert seen.aborted == []
    assert seen.errors == []
    assert summary in seen.text
    assert OPERATION in seen.text
