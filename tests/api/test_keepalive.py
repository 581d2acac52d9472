"""A refused request leaves its keep-alive connection usable: one tenant's 4xx or 503 never
resets the next request on a connection a proxy shares. Through a real uvicorn server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import uvicorn
from fastapi import FastAPI

from saascore.kit.db import Database
from tests.api.conftest import SilentServer
from tests.cli.runner import free_port
from tests.helpers import make_settings
from tests.http import api_app


@asynccontextmanager
async def uvicorn_serving(application: FastAPI) -> AsyncIterator[str]:
    """`application` behind a real uvicorn server on a free port, in this event loop."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(application, host="127.0.0.1", port=port, log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(30):
            while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
                await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


def local_address(response: httpx.Response) -> object:
    """The client side of the connection that carried `response`."""
    return response.extensions["network_stream"].get_extra_info("client_addr")


async def one_connection(base_url: str, requests: list[tuple[str, str, int]]) -> None:
    """Send `requests` (method, path, expected status) in turn on one kept-alive connection."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=20) as client:
        addresses = set()
        for method, path, status in requests:
            response = await client.request(method, path, json={"quantity": True})
            assert response.status_code == status, (path, response.text)
            assert response.headers.get("connection") != "close"
            addresses.add(local_address(response))
        assert len(addresses) == 1  # the same connection carried every request


async def test_refusals_leave_the_connection_usable(scratch: Database) -> None:
    application, core = api_app(scratch)
    async with uvicorn_serving(application) as url:
        await one_connection(
            url,
            [
                ("GET", "/v1/me", 401),  # unauthenticated
                ("POST", "/v1/usage/events", 401),
                ("GET", "/v1/nowhere", 404),
                ("DELETE", "/v1/plans", 405),
                ("POST", "/v1/auth/login", 422),  # the body is not a login
                ("GET", "/health", 200),
            ],
        )
    await core.rate_limiter.close()


async def test_a_503_leaves_the_connection_usable(silent: SilentServer) -> None:
    settings = make_settings(
        database_url=f"postgresql://postgres@127.0.0.1:{silent.port}/test",
        auto_migrate=False,
        db_connect_timeout=0.5,
        db_pool_timeout=0.5,
    )
    application, core = api_app(Database(settings))
    async with uvicorn_serving(application) as url:
        await one_connection(url, [("GET", "/v1/plans", 503), ("GET", "/health", 200)])
    await core.rate_limiter.close()
