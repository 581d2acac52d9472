"""`GET /v1/usage` and seed 004's pluggable usage router: `create_usage_router(get_usage=...)`
answers what the host app's own usage function counts; by default, saascore's meters."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from saascore import Saascore
from saascore.api import install, saascore_lifespan
from saascore.api.deps import ReadSessionDep
from saascore.identity.endpoints import create_api_keys_router, create_auth_router
from saascore.kit.db import Database
from saascore.metering.endpoints import UsageReader, create_usage_router
from saascore.metering.schemas import UsageMetric, UsageResponse
from saascore.models import User
from saascore.testing import TestTenant, register_tenant

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def count_seats(principal: UsageReader, session: ReadSessionDep) -> UsageResponse:
    """A host app's own usage function: it counts the organisation's users, in its database."""
    seats = await session.scalar(
        sa.select(sa.func.count()).where(User.organization_id == principal.tenant)
    )
    return UsageResponse(metrics=[UsageMetric(metric="seats", used=int(seats or 0), limit=5)])


@asynccontextmanager
async def host_app(
    scratch: Database, router_options: dict[str, object]
) -> AsyncIterator[tuple[httpx.AsyncClient, TestTenant]]:
    """A host app mounting the auth, API-key and usage routers, and a customer with usage scopes."""
    settings = scratch.settings.model_copy(
        update={"auth_requests_per_minute": None, "default_plan": "pro"}
    )
    database = Database(settings)
    core = Saascore(settings, database=database)
    app = FastAPI(lifespan=saascore_lifespan(core, owned=False))
    install(app, settings)
    app.include_router(create_auth_router())
    app.include_router(create_api_keys_router())
    app.include_router(create_usage_router(**router_options))  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://host") as client,
        ):
            customer = await register_tenant(
                client, password="a long enough password", scopes=["usage:write", "usage:read"]
            )
            yield client, customer
    finally:
        await core.rate_limiter.close()
        await database.dispose()


async def test_the_host_apps_usage_function_answers(scratch: Database) -> None:
    async with host_app(scratch, {"get_usage": count_seats}) as (client, customer):
        response = await client.get("/v1/usage", headers=customer.key_headers)
        assert response.status_code == 200, response.text
        assert response.json()["metrics"] == [
            {
                "metric": "seats",
                "used": 1,  # the owner who registered
                "limit": 5,
                "reserved": 0,
                "period_start": None,
                "period_end": None,
            }
        ]
        # saascore's own routes stay as they are
        limits = await client.get("/v1/usage/limits", headers=customer.key_headers)
        assert {row["metric"] for row in limits.json()["limits"]} >= {"tokens", "api_calls"}
        # the caller is authenticated before the host's function runs
        anonymous = await client.get("/v1/usage")
        assert anonymous.status_code == 401
        assert anonymous.json()["error"]["code"] == "unauthenticated"


async def test_by_default_it_answers_saascores_meters(scratch: Database) -> None:
    async with host_app(scratch, {}) as (client, customer):
        event = {"id": "u-1", "metric": "api_calls", "quantity": 3}
        recorded = await client.post("/v1/usage/events", json=event, headers=customer.key_headers)
        assert recorded.status_code == 201, recorded.text
        response = await client.get("/v1/usage", headers=customer.key_headers)
        assert response.status_code == 200, response.text
        metrics = {m["metric"]: m for m in response.json()["metrics"]}
        assert metrics["api_calls"]["used"] == 3
        assert metrics["api_calls"]["period_start"] is not None
        assert {"tokens", "storage_bytes"} <= set(metrics)
