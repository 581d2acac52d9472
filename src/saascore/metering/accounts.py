"""The organisation's `usage_limits` row: its usage and credit account, shared by services."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.kit.errors import NotFound
from saascore.kit.ids import new_id
from saascore.kit.sql import insert
from saascore.models import Organization, UsageLimits

__all__ = ["usage_account"]


async def usage_account(
    session: AsyncSession, org_id: uuid.UUID, *, lock: bool = True
) -> UsageLimits:
    """The organisation's `usage_limits` row, made if missing, and (with `lock`) locked until
    the transaction ends: what serializes changes to one organisation's credits and limits.

    Raises `NotFound` for an organisation that does not exist.
    """
    query = sa.select(UsageLimits).where(UsageLimits.organization_id == org_id)
    if lock:
        query = query.with_for_update()
    query = query.execution_options(populate_existing=True)
    account = (await session.scalars(query)).one_or_none()
    if account is not None:
        return account
    # An organisation made without OrganizationService has no row yet: make it, then read it.
    exists = await session.scalar(sa.select(Organization.id).where(Organization.id == org_id))
    if exists is None:
        raise NotFound(f"no organisation {org_id}", organization=str(org_id))
    await session.execute(
        insert(session, UsageLimits)
        .values(id=new_id(), organization_id=org_id)
        .on_conflict_do_nothing(index_elements=[UsageLimits.organization_id])
    )
    return (await session.scalars(query)).one()
