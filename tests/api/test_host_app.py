"""saascore's router factories mounted on their own in a host app (seed 004's pluggable
routers): the host picks the routers, saascore's lifespan and `install` do the rest."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from saascore import Saascore
from saascore.api import create_health_router, install, saascore_lifespan
from saascore.api.deps import PrincipalDep
from saascore.identity.endpoints import create_api_keys_router, create_auth_router
from saascore.kit.db import Database
from saascore.metering.endpoints import create_usage_router
from saascore.testing import register_tenant

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_a_host_app_mounts_only_the_routers_it_wants(scratch: Database) -> None:
    # New customers start on Pro, a plan with API access (the default catalog's free plan has
    # none): the database's settings name the plan that organisations are created on.
    settings = scratch.settings.model_copy(
        update={"auth_requests_per_minute": None, "default_plan": "pro"}
    )
    database = Database(settings)
    core = Saascore(settings, database=database)
    app = FastAPI(lifespan=saascore_lifespan(core, owned=False))
    install(app, settings)
    app.include_router(create_health_router("host-service"))
    app.include_router(create_auth_router())
    app.include_router(create_api_keys_router())
    app.include_router(create_usage_router())

    @app.get("/whoami")
    async def whoami(principal: PrincipalDep) -> dict[str, str]:
        return {"organization": str(principal.tenant)}

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://host") as client,
    ):
        health = await client.get("/health")
        assert health.json()["service"] == "host-service"
        customer = await register_tenant(
            client,
            email="host@example.com",
            password="a long enough password",
            organization_name="Host Customer",
            scopes=["usage:write", "usage:read"],
        )
        organization = str(customer.organization_id)
        api_key = customer.key_headers
        event = {"id": "host-1", "metric": "api_calls", "quantity": 1}
        recorded = await client.post("/v1/usage/events", json=event, headers=api_key)
        assert recorded.status_code == 201, recorded.text
        assert recorded.headers["X-Request-ID"]
        whoami_answer = await client.get("/whoami", headers=api_key)
        assert whoami_answer.json() == {"organization": organization}
        refused = await client.get("/whoami")
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "unauthenticated"
        assert (await client.get("/v1/credits", headers=api_key)).status_code == 404
    await core.rate_limiter.close()
    await database.dispose()
