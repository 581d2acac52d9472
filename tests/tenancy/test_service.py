"""Organisations: creating them (with their usage_limits row and a unique slug), finding them."""

from __future__ import annotations

import re
import uuid

import pytest
import pytest_asyncio
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.kit import migrate
from saascore.kit.db import Database
from saascore.kit.errors import AlreadyExists, InvalidInput
from saascore.models import Organization, OrganizationStatus, UsageLimits
from saascore.plans import PlanNotFound, PlanService, read_catalog
from saascore.tenancy import OrganizationExists, OrganizationNotFound, OrganizationService
from saascore.tenancy.service import slugify


@pytest_asyncio.fixture(loop_scope="session")
async def orgs(database: Database, session: AsyncSession) -> OrganizationService:
    """The service, with the default catalog loaded in the test's session."""
    plans = PlanService(database)
    await plans.load_catalog(read_catalog(), session=session)
    return OrganizationService(database, plans)


async def count(session: AsyncSession, model: type, *conditions: sa.ColumnElement[bool]) -> int:
    query = sa.select(sa.func.count()).select_from(model).where(*conditions)
    return int(await session.scalar(query) or 0)


class TestSlugify:
    @pytest.mark.parametrize(
        ("name", "slug"),
        [
            ("Acme", "acme"),
            ("Acme Corp.", "acme-corp"),
            ("  Crème Brûlée & Co  ", "creme-brulee-co"),
            ("Ünïcödé--Name__2", "unicode-name-2"),
            ("!!!", "org"),
            ("日本", "org"),
        ],
    )
    def test_slugify(self, name: str, slug: str) -> None:
        assert slugify(name) == slug

    def test_long_names_are_cut(self) -> None:
        assert len(slugify("x" * 500)) == 60


class TestCreate:
    async def test_creates_the_organization_and_its_usage_limits(
        self, orgs: OrganizationService, session: AsyncSession
    ) -> None:
        org = await orgs.create(
            name="  Acme Corp. ",
            external_id="ext-1",
            domain="acme.example",
            billing_email="billing@acme.example",
            session=session,
        )
        assert (org.name, org.slug, org.external_id, org.domain, org.billing_email) == (
            "Acme Corp.",
            "acme-corp",
            "ext-1",
            "acme.example",
            "billing@acme.example",
        )
        assert org.status is OrganizationStatus.ACTIVE
        assert org.plan.code == "free"  # the default plan, loaded with it
        stored = await session.scalar(sa.select(Organization.name).where(Organization.id == org.id))
        assert stored == "Acme Corp."
        limits = (
            await session.execute(
                sa.select(UsageLimits.storage_used_bytes, UsageLimits.credit_balance).where(
                    UsageLimits.organization_id == org.id
                )
            )
        ).all()
        assert [tuple(row) for row in limits] == [(0, 0)]

    async def test_on_a_named_plan(self, orgs: OrganizationService, session: AsyncSession) -> None:
        org = await orgs.create(name="Pro Co", plan="pro", session=session)
        pro = await orgs.plans.get_by_code("pro", session=session)
        assert org.plan_id == pro.id
        assert org.plan.code == "pro"

    async def test_the_default_plan_comes_from_settings(
        self, database: Database, session: AsyncSession
    ) -> None:
        settings = database.settings.model_copy(update={"default_plan": "starter"})
        plans = PlanService(Database(settings))
        await plans.load_catalog(read_catalog(), session=session)
        org = await OrganizationService(plans.database, plans).create(name="S", session=session)
        assert org.plan.code == "starter"

    async def test_a_taken_slug_gets_a_suffix(
        self, orgs: OrganizationService, session: AsyncSession
    ) -> None:
        first = await orgs.create(name="Acme", session=session)
        second = await orgs.create(name="Acme", session=session)
        third = await orgs.create(name="ACME!", session=session)
        assert first.slug == "acme"
        assert re.fullmatch(r"acme-[0-9a-f]{6}", second.slug)
        assert re.fullmatch(r"acme-[0-9a-f]{6}", third.slug)
        assert len({first.slug, second.slug, third.slug}) == 3
        assert await count(session, Organization, Organization.name.in_(["Acme", "ACME!"])) == 3
        assert (
            await count(
                session,
                UsageLimits,
                UsageLimits.organization_id.in_([first.id, second.id, third.id]),
            )
            == 3
        )

    async def test_duplicate_external_id(
        self, orgs: OrganizationService, session: AsyncSession
    ) -> None:
        await orgs.create(name="First", external_id="platform-42", session=session)
        with pytest.raises(OrganizationExists) as info:
            await orgs.create(name="Second", external_id="platform-42", session=session)
        assert isinstance(info.value, AlreadyExists)
        assert info.value.code == "organization_exists"
        assert info.value.details == {"external_id": "platform-42"}
        assert await count(session, Organization, Organization.name == "Second") == 0
        # The session is still usable afterwards: the failure was contained in a savepoint.
        assert (await orgs.create(name="Third", session=session)).slug == "third"

    async def test_duplicate_external_id_and_name(
        self, orgs: OrganizationService, session: AsyncSession
    ) -> None:
        await orgs.create(name="Same", external_id="dup", session=session)
        with pytest.raises(OrganizationExists):
            await orgs.create(name="Same", external_id="dup", session=session)
        assert await count(session, Organization, Organization.name == "Same") == 1

    async def test_unknown_plan(self, orgs: OrganizationService, session: AsyncSession) -> None:
        with pytest.raises(PlanNotFound) as info:
            await orgs.create(name="Nowhere", plan="platinum", session=session)
        assert info.value.code == "plan_not_found"
        assert await count(session, Organization, Organization.name == "Nowhere") == 0

    @pytest.mark.parametrize("name", ["", "   "])
    async def test_a_name_is_required(
        self, orgs: OrganizationService, session: AsyncSession, name: str
    ) -> None:
        with pytest.raises(InvalidInput) as info:
            await orgs.create(name=name, session=session)
        assert info.value.details == {"field": "name"}


class TestFind:
    async def test_get(self, orgs: OrganizationService, session: AsyncSession) -> None:
        created = await orgs.create(name="Findable", plan="business", session=session)
        session.expunge_all()  # read it back from the database
        found = await orgs.get(created.id, session=session)
        assert (found.id, found.name, found.slug) == (created.id, "Findable", "findable")
        assert found.plan.code == "business"  # eagerly loaded

    async def test_get_unknown(self, orgs: OrganizationService, session: AsyncSession) -> None:
        missing = uuid.uuid4()
        with pytest.raises(OrganizationNotFound) as info:
            await orgs.get(missing, session=session)
        assert info.value.code == "organization_not_found"
        assert info.value.details == {"organization": str(missing)}

    async def test_get_by_external_id(
        self, orgs: OrganizationService, session: AsyncSession
    ) -> None:
        created = await orgs.create(name="Ext", external_id="store-9", session=session)
        await orgs.create(name="Other", external_id="store-10", session=session)
        session.expunge_all()
        found = await orgs.get_by_external_id("store-9", session=session)
        assert found.id == created.id
        assert found.plan.code == "free"
        with pytest.raises(OrganizationNotFound):
            await orgs.get_by_external_id("store-11", session=session)

    async def test_list_in_creation_order(
        self, orgs: OrganizationService, session: AsyncSession
    ) -> None:
        created = [await orgs.create(name=f"Org {i}", session=session) for i in range(5)]
        ids = [org.id for org in created]
        session.expunge_all()
        listed = await orgs.list(session=session)
        assert [org.id for org in listed if org.id in ids] == ids
        assert all(org.plan.code == "free" for org in listed if org.id in ids)

        everything = [org.id for org in listed]
        start = everything.index(ids[0])
        page = await orgs.list(limit=2, offset=start + 1, session=session)
        assert [org.id for org in page] == ids[1:3]


class TestWithoutASession:
    """Called without a session, the service commits its own transaction."""

    @pytest_asyncio.fixture(loop_scope="session")
    async def scratch(self, empty_database: Database) -> Database:
        await migrate.upgrade(empty_database)
        return empty_database

    async def test_create_commits(self, scratch: Database) -> None:
        plans = PlanService(scratch)
        await plans.load_catalog(read_catalog())
        orgs = OrganizationService(scratch, plans)
        org = await orgs.create(name="Committed", external_id="c-1")
        assert org.plan.code == "free"
        found = await orgs.get_by_external_id("c-1")
        assert found.id == org.id
        assert [o.id for o in await orgs.list()] == [org.id]
        with pytest.raises(OrganizationExists):
            await orgs.create(name="Again", external_id="c-1")
        assert [o.id for o in await orgs.list()] == [org.id]
