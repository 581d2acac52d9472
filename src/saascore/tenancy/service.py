"""Creating, finding and listing organisations."""

from __future__ import annotations

import re
import secrets
import unicodedata
import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload
from sqlalchemy.orm.attributes import set_committed_value

from saascore.kit.db import Database
from saascore.kit.errors import AlreadyExists, InvalidInput, NotFound
from saascore.kit.sql import violates
from saascore.models import Organization, UsageLimits
from saascore.plans.service import PlanService

__all__ = ["OrganizationExists", "OrganizationNotFound", "OrganizationService", "slugify"]


class OrganizationNotFound(NotFound):
    code = "organization_not_found"


class OrganizationExists(AlreadyExists):
    code = "organization_exists"


def slugify(name: str) -> str:
    """`"Acme Corp."` -> `"acme-corp"`: ASCII letters and digits joined by single hyphens."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")
    return slug[:60] or "org"


class OrganizationService:
    def __init__(self, database: Database, plans: PlanService) -> None:
        self.database = database
        self.plans = plans

    async def create(
        self,
        *,
        name: str,
        plan: str | None = None,
        external_id: str | None = None,
        domain: str | None = None,
        billing_email: str | None = None,
        session: AsyncSession | None = None,
    ) -> Organization:
        """Create an organisation on a plan (by code; the default plan if None).

        Its `usage_limits` row is created in the same transaction. The slug comes from the
        name, with a random suffix when the plain slug is taken.
        """
        name = name.strip()
        if not name or len(name) > 255:
            raise InvalidInput("an organisation needs a name of 1 to 255 characters", field="name")
        for field, value in (("external_id", external_id), ("domain", domain)):
            if value is not None and not 0 < len(value) <= 255:
                raise InvalidInput(f"{field} must be 1 to 255 characters", field=field)
        if billing_email is not None and not 0 < len(billing_email) <= 320:
            raise InvalidInput("billing_email must be 1 to 320 characters", field="billing_email")
        async with self.database.scope(session) as s:
            plan_row = await self.plans.get_by_code(
                plan or self.database.settings.default_plan, session=s
            )
            base = slugify(name)
            for attempt in range(5):
                slug = base if attempt == 0 else f"{base}-{secrets.token_hex(3)}"
                organization = Organization(
                    name=name,
                    slug=slug,
                    plan_id=plan_row.id,
                    external_id=external_id,
                    domain=domain,
                    billing_email=billing_email,
                )
                try:
                    async with s.begin_nested():
                        s.add(organization)
                        await s.flush()
                except IntegrityError as error:
                    if external_id is not None and violates(error, "external_id"):
                        raise OrganizationExists(
                            f"an organisation with external id {external_id!r} exists",
                            external_id=external_id,
                        ) from None
                    if violates(error, "slug"):
                        continue
                    raise
                break
            else:  # pragma: no cover - five random suffixes colliding
                raise OrganizationExists(f"no free slug for {name!r}", name=name)
            s.add(UsageLimits(organization_id=organization.id))
            await s.flush()
            set_committed_value(organization, "plan", plan_row)
        return organization

    async def get(
        self, organization_id: uuid.UUID, *, session: AsyncSession | None = None
    ) -> Organization:
        return await self._one(Organization.id == organization_id, session, str(organization_id))

    async def get_by_external_id(
        self, external_id: str, *, session: AsyncSession | None = None
    ) -> Organization:
        return await self._one(Organization.external_id == external_id, session, external_id)

    async def resolve(self, reference: str, *, session: AsyncSession | None = None) -> Organization:
        """An organisation by its id or, failing that, its external id (for people typing)."""
        try:
            organization_id = uuid.UUID(reference)
        except ValueError:
            return await self.get_by_external_id(reference, session=session)
        return await self.get(organization_id, session=session)

    async def list(
        self, *, limit: int = 100, offset: int = 0, session: AsyncSession | None = None
    ) -> Sequence[Organization]:
        query = (
            sa.select(Organization)
            .options(joinedload(Organization.plan))
            .order_by(Organization.created_at, Organization.id)
            .limit(limit)
            .offset(offset)
        )
        async with self.database.scope(session) as s:
            return (await s.scalars(query)).all()

    async def _one(
        self, condition: sa.ColumnElement[bool], session: AsyncSession | None, key: str
    ) -> Organization:
        query = sa.select(Organization).where(condition).options(joinedload(Organization.plan))
        async with self.database.scope(session) as s:
            organization = (await s.scalars(query)).one_or_none()
        if organization is None:
            raise OrganizationNotFound(f"no organisation {key}", organization=key)
        return organization
