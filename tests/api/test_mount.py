"""The whole service mounted under a path of a host app: `host.mount("/saas", create_app())`.

Starlette runs the lifespan of the app it serves, never those of the apps mounted in it, so
the host runs saascore's with `mounted_lifespan`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI

from saascore import Saascore
from saascore.api import create_app, mounted_lifespan
from saascore.kit.db import Database
from saascore.testing import register_tenant

pytestmark = pytest.mark.asyncio(loop_scope="session")


def mounted(scratch: Database) -> tuple[FastAPI, FastAPI, Saascore]:
    settings = scratch.settings.model_copy(
        update={"auth_requests_per_minute": None, "default_plan": "pro"}
    )
    core = Saascore(settings, database=Database(settings))
    saas = create_app(settings, core=core)
    host = FastAPI(lifespan=mounted_lifespan(saas))

    @host.get("/hello")
    async def hello() -> dict[str, str]:
        return {"from": "host"}

    host.mount("/saas", saas)
    return host, saas, core


@asynccontextmanager
async def client_of(host: FastAPI, core: Saascore) -> AsyncIterator[httpx.AsyncClient]:
    """A client whose relative paths go under /saas (`http://host/...` reaches the host)."""
    transport = httpx.ASGITransport(app=host, raise_app_exceptions=False)
    try:
        async with (
            host.router.lifespan_context(host),
            httpx.AsyncClient(transport=transport, base_url="http://host/saas") as client,
        ):
            yield client
    finally:
        await core.rate_limiter.close()
        await core.database.dispose()


async def test_the_service_mounted_under_a_path_answers_through_it(scratch: Database) -> None:
    host, _, core = mounted(scratch)
    async with client_of(host, core) as client:
        assert (await client.get("http://host/hello")).json() == {"from": "host"}
        health = await client.get("/healthz")
        assert health.status_code == 200, health.text
        assert health.json()["database"]["status"] == "healthy"

        customer = await register_tenant(
            client,
            email="mounted@example.com",
            password="a long enough password",
            organization_name="Mounted Customer",
            scopes=["usage:write", "usage:read"],
        )
        event = {"id": "mounted-1", "metric": "tokens", "quantity": 7}
        recorded = await client.post("/v1/usage/events", json=event, headers=customer.key_headers)
        assert recorded.status_code == 201, recorded.text
        assert recorded.json()["used"] == 7
        unknown = await client.get("/v1/no-such-route")
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == "not_found"

        document = await client.get("/openapi.json")
        assert document.status_code == 200, document.text
        assert "/v1/usage/events" in document.json()["paths"]
        assert {"url": "/saas"} in document.json()["servers"]  # so clients call through it
        docs = await client.get("/docs")
        assert docs.status_code == 200
        assert "/saas/openapi.json" in docs.text


async def test_without_the_lifespan_a_request_says_what_is_missing(scratch: Database) -> None:
    """Mounted without `mounted_lifespan`, saascore never started: the request fails, and
    the error names the fix instead of an AttributeError deep in a dependency."""
    settings = scratch.settings
    saas = create_app(settings, core=Saascore(settings, database=scratch))
    host = FastAPI()
    host.mount("/saas", saas)
    transport = httpx.ASGITransport(app=host, raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://host") as client:
        with pytest.raises(RuntimeError, match="mounted_lifespan"):
            await client.get("/saas/v1/plans")
