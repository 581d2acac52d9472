"""Helpers for the HTTP tests of identity and audit: the real app with its facade at hand,
accounts made through the API (`saascore.testing.TestTenant`s, by `tests.http.tenant`), and a
count of every table to prove that nothing was written.

    async with served(scratch) as app:
        owner = await register(app)
        viewer = await add_user(app, owner, UserRole.VIEWER)
        before = await table_counts(app.database)
        ...
        assert await written_since(app.database, before) == {}
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import sqlalchemy as sa

from saascore import Saascore
from saascore.kit.db import Database
from saascore.models import AuditLog, Base, UserRole
from saascore.testing import TestTenant, register_tenant
from tests.http import api_app, serving, tenant

__all__ = [
    "Served",
    "add_user",
    "audit_actions",
    "login",
    "register",
    "served",
    "table_counts",
    "written_since",
]

#: A plan of the default catalog whose rate limits leave room for a test's requests.
ROOMY_PLAN = "enterprise"


@dataclass(frozen=True)
class Served:
    client: httpx.AsyncClient
    core: Saascore

    @property
    def database(self) -> Database:
        return self.core.database


@asynccontextmanager
async def served(database: Database, **overrides: Any) -> AsyncIterator[Served]:
    """The real app on `database` (login and registration not limited per address)."""
    overrides.setdefault("auth_requests_per_minute", None)
    application, core = api_app(database, **overrides)
    async with serving(application, core) as client:
        yield Served(client, core)


async def register(
    app: Served,
    *,
    email: str | None = None,
    password: str | None = None,
    plan: str | None = ROOMY_PLAN,
) -> TestTenant:
    """A new organisation and its owner, through `POST /v1/auth/register`, moved to `plan`
    (the default free plan allows 5 requests a minute; None leaves it there)."""
    if plan is None:
        return await register_tenant(app.client, email=email, password=password, name="Owner")
    return await tenant(
        app.client, app.database, plan=plan, email=email, password=password, name="Owner"
    )


async def login(
    app: Served, email: str, password: str, organization: str | None = None
) -> httpx.Response:
    body: dict[str, Any] = {"email": email, "password": password}
    if organization is not None:
        body["organization"] = organization
    return await app.client.post("/v1/auth/login", json=body)


async def add_user(app: Served, owner: TestTenant, role: UserRole) -> TestTenant:
    """A user of `owner`'s organisation with `role`, logged in through the API (a `TestTenant`
    of that user's: the organisation, the user, their credentials and tokens)."""
    email = f"{role.value}-{secrets.token_hex(4)}@example.com"
    password = secrets.token_urlsafe(12)
    await app.core.users.create(owner.organization_id, email=email, role=role, password=password)
    response = await login(app, email, password)
    assert response.status_code == 200, response.text
    body = response.json()
    return TestTenant(
        organization_id=uuid.UUID(body["organization_id"]),
        user_id=uuid.UUID(body["user_id"]),
        email=email,
        password=password,
        access_token=body["access_token"],
        refresh_token=body["refresh_token"],
    )


async def table_counts(database: Database) -> dict[str, int]:
    """How many rows each of saascore's tables holds."""
    async with database.session(readonly=True) as s:
        counts = {}
        for table in Base.metadata.sorted_tables:
            counts[table.name] = int(
                await s.scalar(sa.select(sa.func.count()).select_from(table)) or 0
            )
        return counts


async def written_since(database: Database, before: dict[str, int]) -> dict[str, int]:
    """The tables whose row count changed since `before`, with the change."""
    after = await table_counts(database)
    return {name: after[name] - before[name] for name in after if after[name] != before[name]}


async def audit_actions(database: Database, org_id: uuid.UUID) -> list[str]:
    """The organisation's audit actions, oldest first."""
    async with database.session(readonly=True) as s:
        return list(
            await s.scalars(
                sa.select(AuditLog.action)
                .where(AuditLog.organization_id == org_id)
                .order_by(AuditLog.seq)
            )
        )
