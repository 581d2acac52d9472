"""`/docs`, `/redoc` and `/` name only URLs of the app itself, and every one of them answers,
also when the app is mounted under a path of a host app."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from html.parser import HTMLParser

import httpx
import pytest
from fastapi import FastAPI

from saascore import Saascore
from saascore.api import create_app
from saascore.kit.db import Database

# The pages do not depend on the database: one backend is enough.
pytestmark = pytest.mark.parametrize("backend", ["sqlite"])

EXTERNAL = re.compile(r"(https?:)?//[a-z0-9.-]+", re.IGNORECASE)


class Links(HTMLParser):
    """The URLs an HTML page loads or links: src, href, and the JS string literals of the
    pages' inline scripts that are paths (`url: '/openapi.json'`, `spec-url="..."`)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in {"src", "href", "spec-url"} and value:
                self.urls.append(value)


def links(html: str) -> list[str]:
    parser = Links()
    parser.feed(html)
    return parser.urls


def script_paths(html: str) -> list[str]:
    """The quoted absolute paths in a page's inline script (Swagger UI's configuration)."""
    return re.findall(r"""['"](/[^'"\s]*)['"]""", html)


@asynccontextmanager
async def served(
    database: Database, *, prefix: str = "", **options: str | None
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the real app, mounted under `prefix` of a host app when one is given."""
    core = Saascore(database.settings, database=database)
    app = create_app(database.settings, core=core, **options)
    outer: FastAPI = app
    if prefix:
        outer = FastAPI()
        outer.mount(prefix, app)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=outer, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


async def assert_offline_page(client: httpx.AsyncClient, path: str) -> list[str]:
    """GET `path`: an HTML page that names no other host and whose every URL answers 200."""
    response = await client.get(path)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert EXTERNAL.search(html) is None, EXTERNAL.search(html)
    urls = list(dict.fromkeys(links(html) + script_paths(html)))
    assert urls
    for url in urls:
        assert url.startswith("/"), url
        answer = await client.get(url)
        assert answer.status_code == 200, (path, url, answer.status_code)
        assert answer.content
    return urls


async def test_swagger_ui_loads_its_assets_from_the_app(database: Database) -> None:
    async with served(database) as client:
        urls = await assert_offline_page(client, "/docs")
        assert set(urls) >= {
            "/docs/static/swagger-ui-bundle.js",
            "/docs/static/swagger-ui.css",
            "/docs/static/favicon.png",
            "/openapi.json",
            "/docs/oauth2-redirect",
        }
        script = await client.get("/docs/static/swagger-ui-bundle.js")
        assert "javascript" in script.headers["content-type"]
        assert "SwaggerUIBundle" in script.text
        # The public validator would be a request to the internet.
        assert '"validatorUrl": null' in (await client.get("/docs")).text


async def test_redoc_loads_its_assets_from_the_app(database: Database) -> None:
    async with served(database) as client:
        urls = await assert_offline_page(client, "/redoc")
        assert set(urls) >= {
            "/docs/static/redoc.standalone.js",
            "/docs/static/favicon.png",
            "/openapi.json",
        }
        assert "fonts.googleapis" not in (await client.get("/redoc")).text
        script = await client.get("/docs/static/redoc.standalone.js")
        assert "javascript" in script.headers["content-type"]
        assert "Redoc" in script.text
        # Its sidebar logo would come from Redocly's CDN.
        assert "cdn.redoc.ly" not in script.text


async def test_the_oauth2_redirect_page_is_served(database: Database) -> None:
    async with served(database) as client:
        response = await client.get("/docs/oauth2-redirect")
    assert response.status_code == 200
    assert "oauth2" in response.text
    assert EXTERNAL.search(response.text) is None


async def test_home_links_the_docs_health_and_schema(database: Database) -> None:
    async with served(database) as client:
        urls = await assert_offline_page(client, "/")
        schema = (await client.get("/openapi.json")).json()
        head = await client.head("/")
    assert urls == ["/docs", "/redoc", "/openapi.json", "/health", "/healthz"]
    assert "/" not in schema["paths"]
    assert not any(path.startswith(("/docs", "/redoc")) for path in schema["paths"])
    assert head.status_code == 200


async def test_docs_pages_can_be_left_out(database: Database) -> None:
    async with served(database, docs_url=None) as client:
        assert (await client.get("/docs")).status_code == 404
        assert (await client.get("/docs/oauth2-redirect")).status_code == 404
        await assert_offline_page(client, "/redoc")
        assert links((await client.get("/")).text) == [
            "/redoc",
            "/openapi.json",
            "/health",
            "/healthz",
        ]
    async with served(database, docs_url=None, redoc_url=None) as client:
        assert (await client.get("/redoc")).status_code == 404
        assert (await client.get("/docs/static/swagger-ui.css")).status_code == 404
        assert links((await client.get("/")).text) == ["/openapi.json", "/health", "/healthz"]


async def test_docs_work_under_a_path_prefix(database: Database) -> None:
    async with served(database, prefix="/saas") as client:
        docs = await assert_offline_page(client, "/saas/docs")
        redoc = await assert_offline_page(client, "/saas/redoc")
        home = await assert_offline_page(client, "/saas/")
        schema = (await client.get("/saas/openapi.json")).json()
    assert all(url.startswith("/saas/") for url in docs + redoc + home)
    assert "/saas/docs/static/swagger-ui-bundle.js" in docs
    assert "/saas/openapi.json" in redoc
    assert home == [
        "/saas/docs",
        "/saas/redoc",
        "/saas/openapi.json",
        "/saas/health",
        "/saas/healthz",
    ]
    assert schema["servers"] == [{"url": "/saas"}]
