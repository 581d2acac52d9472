"""Typed async factories for test data. Each one adds and flushes, never commits.

    plan = await create_plan(session, code="pro")
    org = await create_organization(session, plan=plan)
    user = await create_user(session, org, role=UserRole.ADMIN)

Keyword overrides go straight to the model's constructor. Codes, slugs, e-mails and keys are
random, so factories can be called any number of times in one database.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.kit.ids import new_id
from saascore.kit.time import utcnow
from saascore.models import (
    ApiKey,
    CreditGrant,
    CreditSource,
    Document,
    Folder,
    MemoryEntry,
    Organization,
    SubscriptionPlan,
    UsageEvent,
    UsageLimits,
    User,
    UserRole,
)

__all__ = [
    "create_api_key",
    "create_credit_grant",
    "create_document",
    "create_folder",
    "create_memory_entry",
    "create_organization",
    "create_plan",
    "create_usage_event",
    "create_user",
    "random_code",
]


T = TypeVar("T")


def random_code(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(5)}"


async def _save(session: AsyncSession, row: T) -> T:
    session.add(row)
    await session.flush()
    return row


async def create_plan(
    session: AsyncSession, *, code: str | None = None, **overrides: Any
) -> SubscriptionPlan:
    """A plan with API access (so its organisations can make keys) unless `api_access=False`."""
    code = code or random_code("plan")
    values: dict[str, Any] = {
        "name": code.replace("_", " ").title(),
        "api_access": True,
        **overrides,
    }
    return await _save(session, SubscriptionPlan(code=code, **values))


async def create_organization(
    session: AsyncSession,
    *,
    plan: SubscriptionPlan | None = None,
    name: str | None = None,
    **overrides: Any,
) -> Organization:
    """An organisation (on a new plan unless one is given) with its `usage_limits` row."""
    if plan is None:
        plan = await create_plan(session)
    slug = random_code("org").replace("_", "-")
    values: dict[str, Any] = {"slug": slug, "name": name or slug, **overrides}
    organization = await _save(session, Organization(plan_id=plan.id, **values))
    await _save(session, UsageLimits(organization_id=organization.id))
    return organization


async def create_organization_row(
    session: AsyncSession, *, plan: SubscriptionPlan | None = None
) -> tuple[uuid.UUID, uuid.UUID]:
    """An organisation written with only the columns it had at revision 0001, for tests that
    migrate up from an earlier revision: (its id, its plan's id)."""
    if plan is None:
        plan = await create_plan(session)
    slug = random_code("org").replace("_", "-")
    org_id = new_id()
    await session.execute(
        sa.insert(Organization).values(id=org_id, name=slug, slug=slug, plan_id=plan.id)
    )
    return org_id, plan.id


async def create_user(
    session: AsyncSession,
    organization: Organization,
    *,
    email: str | None = None,
    role: UserRole = UserRole.MEMBER,
    **overrides: Any,
) -> User:
    email = email or f"{random_code('user')}@example.com"
    return await _save(
        session, User(organization_id=organization.id, email=email, role=role, **overrides)
    )


async def create_folder(
    session: AsyncSession,
    organization: Organization,
    *,
    name: str | None = None,
    parent: Folder | None = None,
    **overrides: Any,
) -> Folder:
    return await _save(
        session,
        Folder(
            organization_id=organization.id,
            name=name or random_code("folder"),
            parent_id=parent.id if parent is not None else None,
            **overrides,
        ),
    )


async def create_document(
    session: AsyncSession,
    organization: Organization,
    *,
    folder: Folder | None = None,
    filename: str | None = None,
    **overrides: Any,
) -> Document:
    return await _save(
        session,
        Document(
            organization_id=organization.id,
            folder_id=folder.id if folder is not None else None,
            filename=filename or f"{random_code('doc')}.pdf",
            **overrides,
        ),
    )


async def create_api_key(
    session: AsyncSession,
    organization: Organization,
    *,
    user: User | None = None,
    **overrides: Any,
) -> ApiKey:
    raw = secrets.token_hex(16)
    values: dict[str, Any] = {
        "name": random_code("key"),
        "key_prefix": f"sk_test_{raw[:8]}",
        "key_hash": hashlib.sha256(raw.encode()).hexdigest(),
        **overrides,
    }
    return await _save(
        session,
        ApiKey(
            organization_id=organization.id,
            user_id=user.id if user is not None else None,
            **values,
        ),
    )


async def create_credit_grant(
    session: AsyncSession,
    organization: Organization,
    *,
    amount: int = 100,
    source: CreditSource = CreditSource.MANUAL,
    **overrides: Any,
) -> CreditGrant:
    values: dict[str, Any] = {"remaining": amount, **overrides}
    return await _save(
        session,
        CreditGrant(organization_id=organization.id, amount=amount, source=source, **values),
    )


async def create_usage_event(
    session: AsyncSession,
    organization: Organization,
    *,
    idempotency_key: str | None = None,
    metric: str = "api_calls",
    quantity: int = 1,
    **overrides: Any,
) -> UsageEvent:
    key = idempotency_key or random_code("event")
    values: dict[str, Any] = {
        "payload_hash": hashlib.sha256(f"{metric}:{quantity}:{key}".encode()).hexdigest(),
        "occurred_at": utcnow(),
        **overrides,
    }
    return await _save(
        session,
        UsageEvent(
            organization_id=organization.id,
            idempotency_key=key,
            metric=metric,
            quantity=quantity,
            **values,
        ),
    )


async def create_memory_entry(
    session: AsyncSession,
    organization: Organization,
    *,
    namespace: str = "default",
    key: str | None = None,
    value: dict[str, Any] | None = None,
    **overrides: Any,
) -> MemoryEntry:
    return await _save(
        session,
        MemoryEntry(
            organization_id=organization.id,
            namespace=namespace,
            key=key or random_code("key"),
            value=value if value is not None else {},
            **overrides,
        ),
    )
