"""Helpers for the tests of the operator routes (`/v1/admin`), which every domain has: the real
app with an operator key (the `admin` fixture, in conftest), an organisation to act on (the
`customer` fixture), its audit entries by action, and what is stored of it.

    async def test_suspend(admin: Admin, customer: TestTenant) -> None:
        await admin.client.post(f".../{customer.organization_id}/suspend", headers=admin.operator)
        [entry] = await entries(admin, customer.organization_id, "organization.suspended")
        assert by_operator(admin, entry)
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import sqlalchemy as sa
from fastapi import FastAPI

from saascore import Saascore
from saascore.kit.db import Database
from saascore.models import AuditLog, Organization, PlanLimit, SubscriptionPlan, UsageLimits
from saascore.testing import TestTenant
from tests.factories import create_plan
from tests.http import api_app, serving, tenant

#: Every scope a tenant's API key can have.
EVERY_SCOPE = ("usage:read", "usage:write", "billing:read", "billing:write", "admin")


@dataclass
class Admin:
    app: FastAPI
    client: httpx.AsyncClient
    core: Saascore
    operator_id: uuid.UUID
    #: The operator key's headers.
    operator: dict[str, str]
    #: A plan without rate limits, for tenants that make many requests.
    plan: str

    @property
    def database(self) -> Database:
        return self.core.database


@asynccontextmanager
async def administered(database: Database) -> AsyncIterator[Admin]:
    """The real app on `database` (login and registration not limited), an operator key, and
    a plan without rate limits."""
    application, core = api_app(database, auth_requests_per_minute=None)
    async with serving(application, core) as client:
        key, raw = await core.api_keys.create_operator_key(name="ops")
        async with database.transaction() as s:
            plan = (await create_plan(s)).code
        yield Admin(application, client, core, key.id, {"X-API-Key": raw}, plan)


async def customer_of(admin: Admin) -> TestTenant:
    """An organisation registered over HTTP, on `admin.plan`: its owner's token and an API key
    with every scope."""
    return await tenant(admin.client, admin.database, plan=admin.plan, scopes=EVERY_SCOPE)


async def entries(admin: Admin, org_id: uuid.UUID, action: str) -> list[AuditLog]:
    return list(await admin.core.audit.list(org_id, action=action))


def by_operator(admin: Admin, entry: AuditLog) -> bool:
    return (entry.actor_type, entry.actor_id) == ("operator", str(admin.operator_id))


async def stored(database: Database, org_id: uuid.UUID) -> dict[str, Any]:
    """The organisation's row, limits and audit entries, and the plan catalog, as stored."""
    async with database.session(readonly=True) as s:
        org = (
            await s.execute(sa.select(Organization.__table__).where(Organization.id == org_id))
        ).one()
        limits = (
            await s.execute(
                sa.select(UsageLimits.__table__).where(UsageLimits.organization_id == org_id)
            )
        ).all()
        audit = (
            await s.execute(sa.select(AuditLog.__table__).where(AuditLog.organization_id == org_id))
        ).all()
        plans = (
            await s.execute(
                sa.select(SubscriptionPlan.__table__).order_by(SubscriptionPlan.__table__.c.code)
            )
        ).all()
        plan_limits = (
            await s.execute(sa.select(PlanLimit.__table__).order_by(PlanLimit.__table__.c.id))
        ).all()
    return {
        "organization": tuple(org),
        "limits": [tuple(row) for row in limits],
        "audit": [tuple(row) for row in audit],
        "plans": [tuple(row) for row in plans],
        "plan_limits": [tuple(row) for row in plan_limits],
    }
