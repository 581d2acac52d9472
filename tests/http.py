"""Helpers for tests through the real app over HTTP (the `api` fixture is in conftest)."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, NamedTuple

import httpx
import sqlalchemy as sa
from fastapi import FastAPI

from saascore import Saascore
from saascore.api import create_app
from saascore.kit.db import Database
from saascore.models import Organization, PlanLimit
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


class Tenant(NamedTuple):
    """An organisation registered through the API: its id and its owner's headers."""

    id: uuid.UUID
    headers: dict[str, str]


async def tenant(
    api: httpx.AsyncClient,
    scratch: Database,
    *,
    limits: dict[str, tuple[int | None, bool]] | None = None,
    **plan: Any,
) -> Tenant:
    """Register an organisation and move it to a new plan with `plan`'s columns, `limits`
    rows (metric: (limit, hard)) and no rate limits."""
    tag = secrets.token_hex(4)
    response = await api.post(
        "/v1/auth/register",
        json={
            "email": f"owner-{tag}@example.com",
            "password": secrets.token_urlsafe(16),
            "organization_name": f"Tenant {tag}",
        },
    )
    assert response.status_code == 201, response.text
    body = response.json()
    organization_id = uuid.UUID(body["organization_id"])
    async with scratch.transaction() as session:
        new_plan = await create_plan(session, **plan)
        for metric, (value, hard) in (limits or {}).items():
            session.add(
                PlanLimit(plan_id=new_plan.id, metric=metric, limit_value=value, is_hard=hard)
            )
        await session.execute(
            sa.update(Organization)
            .where(Organization.id == organization_id)
            .values(plan_id=new_plan.id)
        )
    return Tenant(organization_id, {"Authorization": f"Bearer {body['access_token']}"})
