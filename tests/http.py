"""Helpers for tests through the real app over HTTP (the `api` fixture is in conftest).

`tenant(client, database, ...)` is the one way tests make an organisation over HTTP: it
registers one with `saascore.testing.register_tenant` and moves it to a plan of the test's own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
import sqlalchemy as sa
from fastapi import FastAPI

from saascore import Saascore
from saascore.api import create_app
from saascore.kit.db import Database
from saascore.models import Organization, PlanLimit, SubscriptionPlan
from saascore.testing import TestTenant, add_api_key, register_tenant
from tests.factories import create_plan


def api_app(database: Database, **overrides: Any) -> tuple[FastAPI, Saascore]:
    """The real app on `database`, with settings overridden (e.g. rate limits)."""
    settings = database.settings.model_copy(update=overrides)
    core = Saascore(settings, database=database)
    return create_app(settings, core=core), core


@asynccontextmanager
async def serving(application: FastAPI, core: Saascore) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the app, its lifespan running; the rate limiter closed after."""
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
                yield c
        finally:
            await core.rate_limiter.close()


async def tenant(
    client: httpx.AsyncClient,
    database: Database,
    *,
    plan: str | None = None,
    limits: dict[str, tuple[int | None, bool]] | None = None,
    scopes: Sequence[str] | None = None,
    email: str | None = None,
    password: str | None = None,
    name: str | None = "Test User",
    **columns: Any,
) -> TestTenant:
    """`saascore.testing.register_tenant`, then the organisation moved, behind the app's back
    (no audit entry, no event), off the free plan's 5 requests a minute: to the existing plan
    `plan` (a code), or else to a new plan of its own with `columns` (`SubscriptionPlan`'s;
    API access unless `api_access=False`), `limits` rows (metric: (limit, hard)) and no rate
    limits; then an API key with `scopes` if given, made on that plan."""
    registered = await register_tenant(client, email=email, password=password, name=name)
    async with database.transaction() as session:
        if plan is not None:
            assert not columns, "an existing plan takes no columns"
            assert not limits, "an existing plan takes no limits"
            plan_id = (
                await session.scalars(
                    sa.select(SubscriptionPlan.id).where(SubscriptionPlan.code == plan)
                )
            ).one()
        else:
            new_plan = await create_plan(session, **columns)
            for metric, (value, hard) in (limits or {}).items():
                session.add(
                    PlanLimit(plan_id=new_plan.id, metric=metric, limit_value=value, is_hard=hard)
                )
            plan_id = new_plan.id
        await session.execute(
            sa.update(Organization)
            .where(Organization.id == registered.organization_id)
            .values(plan_id=plan_id)
        )
    if scopes is not None:
        registered = await add_api_key(client, registered, scopes)
    return registered
